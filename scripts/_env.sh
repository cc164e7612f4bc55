# Shared by demo.sh and test.sh: create or reuse .venv and install the package (re-installs only when
# setup.py changed since the last install, so repeated runs start at once).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
EXTRA="${1:-}"
STAMP=".venv/.oct_foundation_installed${EXTRA:+_$EXTRA}"
HASH="$(sha256sum setup.py | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing oct-foundation${EXTRA:+[$EXTRA]} into .venv (first run takes about a minute)"
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VPY" -m pip install -q --disable-pip-version-check -e ".${EXTRA:+[$EXTRA]}"
  echo "$HASH" > "$STAMP"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
