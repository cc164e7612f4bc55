import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engines_package_is_lazy():
    code = (
        "import sys, oct_foundation.engines as e\n"
        "assert 'oct_foundation.engines.jepa_trainer' not in sys.modules and 'monai' not in sys.modules\n"
        "assert e.BatchInference.__module__ == 'oct_foundation.engines.batch_inference'\n"
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules\n"
        "try:\n    e.not_a_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
