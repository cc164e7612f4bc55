"""scripts/gpu_check.sh stays runnable: on the CPU (DEVICE=cpu SIZE=tiny) it runs the CUDA tests (they skip) and the
benchmark, and writes one report with both."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_writes_the_report(tmp_path):
    out = tmp_path / "perf_gpu.md"
    env = {**os.environ, "DEVICE": "cpu", "SIZE": "tiny", "OUT": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = out.read_text()
    assert "## Machine" in text and "JEPA training step" in text and "Public-size encoder" in text
    assert "## CUDA tests" in text and "skipped" in text and "needs CUDA" in text
    env["DEVICE"] = "cuda"
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    import torch

    if not torch.cuda.is_available():
        assert p.returncode == 2 and "sees no CUDA device" in p.stderr
