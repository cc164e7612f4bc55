"""Cloud paths fail fast: a remote fsspec path whose endpoint accepts the connection and never answers fails
within the configured timeout (``OCT_FOUNDATION_REMOTE_TIMEOUT``, default 30 s) with the URL named, never hangs.
The endpoint is a local 127.0.0.1 socket that accepts and stays silent, read through fsspec's HTTP filesystem."""
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from oct_foundation import io as oio
from oct_foundation.errors import OCTInputError

pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"


@pytest.fixture
def silent_server():
    """``http://127.0.0.1:<port>``: accepts every connection, reads nothing back, never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held, stop = [], threading.Event()

    def serve():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except (socket.timeout, OSError):
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    sock.close()


def test_default_timeout_is_at_most_30_s(monkeypatch):
    monkeypatch.delenv(oio.REMOTE_TIMEOUT_ENV, raising=False)
    assert 0 < oio.remote_timeout() <= 30
    monkeypatch.setenv(oio.REMOTE_TIMEOUT_ENV, "2.5")
    assert oio.remote_timeout() == 2.5
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv(oio.REMOTE_TIMEOUT_ENV, bad)
        with pytest.raises(OCTInputError, match=oio.REMOTE_TIMEOUT_ENV):
            oio.remote_timeout()


def test_silent_endpoint_fails_with_the_url_named(silent_server, monkeypatch):
    monkeypatch.setenv(oio.REMOTE_TIMEOUT_ENV, "1.5")
    from oct_foundation.data.preflight import probe_volume

    calls = {
        "exists": lambda u: oio.exists(u),
        "open": lambda u: oio.open_file(u, "rb"),
        "json": lambda u: oio.load_json(u),
        "weights": lambda u: oio.torch_load(u),
        "header": lambda u: probe_volume(u),
        "list": lambda u: oio.list_files(u),
    }
    for name, call in calls.items():
        url = f"{silent_server}/bucket/{name}/vol.nii.gz"
        with pytest.raises(OCTInputError) as excinfo:
            call(url)
        assert str(excinfo.value).startswith(f"{url}: no answer within 1.5 s"), (name, str(excinfo.value))
        assert oio.REMOTE_TIMEOUT_ENV in str(excinfo.value)


def test_cli_resume_from_a_silent_endpoint_fails_naming_the_url(silent_server, tmp_path):
    url = f"{silent_server}/bucket/run/checkpoint_3.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(PRETRAIN / "train.json"),
           "--meta_file", str(PRETRAIN / "metadata.json"), "--logging_file", str(PRETRAIN / "logging.conf"),
           "--bundle_root", str(tmp_path / "root"), "--dataset_dir", str(tmp_path / "x"), "--resume", url]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OCT_FOUNDATION_REMOTE_TIMEOUT="2")
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"{url}: no answer within 2 s" in proc.stderr, proc.stderr[-2000:]
