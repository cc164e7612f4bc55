#!/usr/bin/env bash
# The GPU checks in one go (about 10 minutes on one GPU):
#   1. the CUDA tests (tests/gpu: bf16 / fp16 + GradScaler JEPA steps, SDPA flash and memory-efficient kernels
#      against math, MAISI norm_float16 under CUDA autocast, an nccl DDP step); they skip without CUDA
#   2. the benchmark on the device: JEPA step (ours vs Hugging Face VJEPA2Model, tokens/s, peak memory), MAISI
#      encode, the public-size encoder (ViT-L/16 on a 64x256x256 volume, bf16, peak memory) and the MAISI
#      encode bundle's network at zoo size on a 128x512x512 stack video (peak memory)
# and writes both into one report (default docs/performance_gpu.md), with the machine and the command.
# Knobs: DEVICE (cuda), SIZE (benchmark size preset: default), SECTIONS (jepa,maisi,large,large_maisi), VJEPA2_SRC (a local
# checkout of facebookresearch/vjepa2: adds the section comparing the encoder with the official one), OUT, PYTHON (an
# interpreter whose torch has CUDA; default: the project's .venv). `DEVICE=cpu SIZE=tiny` runs every step on the
# CPU in a minute (the test suite does, so the script stays runnable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE:-default}"
SECTIONS="${SECTIONS:-jepa,maisi,large,large_maisi}"
OUT="$(realpath -m "${OUT:-$ROOT/docs/performance_gpu.md}")"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"; export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"; cd "$ROOT"
else
  source "$ROOT/scripts/_env.sh" test; PY="$VPY"
fi
if [ "$DEVICE" != "cpu" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: DEVICE=$DEVICE but this torch sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)'))" >&2
  exit 2
fi
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
echo "=== 1/2 CUDA tests (tests/gpu)"
set +e
"$PY" -m pytest -q -p no:cacheprovider -m "slow or not slow" -rs tests/gpu 2>&1 | tee "$TMP/tests.txt"
TESTS_RC=${PIPESTATUS[0]}
set -e
echo "=== 2/2 benchmark on $DEVICE ($SIZE: $SECTIONS)"
OFFICIAL=()
if [ -n "${VJEPA2_SRC:-}" ]; then SECTIONS="$SECTIONS,official"; OFFICIAL=(--vjepa2-src "$VJEPA2_SRC"); fi
"$PY" scripts/benchmark.py --device "$DEVICE" --size "$SIZE" --sections "$SECTIONS" "${OFFICIAL[@]}" --out "$TMP/bench.md"
{
  cat "$TMP/bench.md"
  echo
  echo "## CUDA tests"
  echo
  echo "\`bash scripts/gpu_check.sh\` (DEVICE=$DEVICE), \`pytest tests/gpu\` exit status $TESTS_RC:"
  echo
  echo '```'
  grep -E "passed|failed|skipped|error|SKIPPED|FAILED" "$TMP/tests.txt" | tail -20
  echo '```'
} > "$TMP/report.md"
mkdir -p "$(dirname "$OUT")"
mv "$TMP/report.md" "$OUT"
echo "gpu_check: wrote $OUT"
exit "$TESTS_RC"
