#!/usr/bin/env bash
# Run the test suite: creates or reuses .venv, installs .[test], runs pytest. Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VPY" -m pytest -q -p no:cacheprovider tests "$@"
