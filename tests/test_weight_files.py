"""Safe loading everywhere, with a message: the one weight reader (oct_foundation.io.torch_load, used by every
loader of checkpoints and weights) refuses files that would run code, text, HTML error pages, Git LFS pointers,
empty, truncated or junk files, naming the file and the problem; ``--resume`` of such a file fails before any
work, through the real command line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"


class _Evil:
    """Unpickling this would run ``os.makedirs(marker)``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _bad_files(tmp: Path) -> dict:
    good = tmp / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    raw = good.read_bytes()
    files = {
        "code": (lambda p: torch.save({"w": torch.ones(2), "x": _Evil(str(tmp / "marker"))}, p),
                 "refused: the file would run code"),
        "text": (lambda p: p.write_text("model weights will be uploaded soon\n"), "a text file, not a PyTorch"),
        "html": (lambda p: p.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>"),
                 "an HTML/XML page, not a PyTorch checkpoint"),
        "lfs": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n"),
                "a Git LFS pointer"),
        "empty": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        "truncated": (lambda p: p.write_bytes(raw[: len(raw) // 2]), "truncated or corrupt"),
        "junk": (lambda p: p.write_bytes(bytes(range(256)) * 8), "not a readable PyTorch checkpoint"),
    }
    out = {}
    for name, (write, message) in files.items():
        path = tmp / f"{name}.pt"
        write(path)
        out[name] = (path, message)
    return out


def test_weight_reader_names_file_and_problem(tmp_path):
    for name, (path, message) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as excinfo:
            oio.torch_load(str(path))
        text = str(excinfo.value)
        assert text.startswith(f"{path}: ") and message in text, (name, text)
        assert "Traceback" not in text and "weights_only=False" not in text, (name, text)
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            oio.torch_load(str(path), mmap=True)  # the memory-mapped path checks the same
    assert not (tmp_path / "marker").exists(), "the pickled code ran"
    assert torch.equal(oio.torch_load(str(tmp_path / "good.pt"))["w"], torch.arange(1000.0))
    with pytest.raises(Exception, match="a folder, not a file"):
        oio.torch_load(str(tmp_path))


def test_weight_reader_refuses_the_same_over_fsspec(tmp_path, memfs):
    for name, (path, message) in _bad_files(tmp_path).items():
        url = f"memory://weights/{path.name}"
        memfs.pipe(f"/weights/{path.name}", path.read_bytes())
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as excinfo:
            oio.torch_load(url)
        assert str(excinfo.value).startswith(f"{url}: ")


@pytest.mark.parametrize("kind", ["code", "html"])
def test_cli_resume_of_an_unsafe_or_html_file_is_refused_before_any_work(kind, tmp_path):
    path, message = _bad_files(tmp_path)[kind]
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(PRETRAIN / "train.json"),
           "--meta_file", str(PRETRAIN / "metadata.json"), "--logging_file", str(PRETRAIN / "logging.conf"),
           "--bundle_root", str(tmp_path / "root"), "--output_dir", str(out), "--dataset_dir", str(tmp_path / "x"),
           "--resume", str(path)]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"CheckpointError: {path}: {message}" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() and not (tmp_path / "marker").exists()
