import os

import pytest
import torch

from oct_foundation import io
from oct_foundation.errors import CheckpointError, OCTInputError


def test_join_and_dirname():
    assert io.join("memory://a/b", "c.nii.gz") == "memory://a/b/c.nii.gz"
    assert io.join("/x/y", "/abs") == "/abs"
    assert io.join("/x/y", "gs://b/f") == "gs://b/f"
    assert io.dirname("memory://a/b/c.json") == "memory://a/b"


def test_memory_roundtrip_json_and_torch(memfs):
    io.save_json({"a": 1}, "memory://d/x.json")
    assert io.load_json("memory://d/x.json") == {"a": 1}
    io.torch_save({"w": torch.ones(2)}, "memory://d/w.pt")
    assert torch.equal(io.torch_load("memory://d/w.pt")["w"], torch.ones(2))
    with io.local_path("memory://d/w.pt") as p:
        assert os.path.exists(p)
    assert io.list_files("memory://d", [".pt"]) == ["memory://d/w.pt"]


def test_missing_file_names_it(tmp_path):
    with pytest.raises(OCTInputError, match="nope.json: file not found"):
        io.load_json(tmp_path / "nope.json")


def test_atomic_output_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("finished")
    with pytest.raises(RuntimeError):
        with io.atomic_output(target) as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "finished"
    assert os.listdir(tmp_path) == ["out.txt"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_callable_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        io.torch_load(p)


def test_corrupt_checkpoint_is_not_called_unsafe(tmp_path):
    p = tmp_path / "noise.pt"
    p.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="noise.pt: not a readable PyTorch checkpoint") as e:
        io.torch_load(p)
    assert "weights_only" not in str(e.value)
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match=r"refused: the file would run code \(posix.system\)"):
        io.torch_load(evil)


def test_any_junk_bytes_give_a_checkpoint_error(tmp_path):
    import random

    rng = random.Random(0)
    for i in range(200):  # junk fails at many different places in the unpickler; all must read as one error
        p = tmp_path / f"junk{i}.pt"
        p.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        with pytest.raises(CheckpointError, match=f"junk{i}.pt: (not a readable|refused)"):
            io.torch_load(p)


def test_torch_save_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    """A write that hits the file-size limit (as a full disk would) raises OSError naming the target, for
    checkpoints (PyTorch's writer) and buffered small objects alike, and leaves no partial or temporary file."""
    import subprocess
    import sys

    code = (
        "import resource, sys, torch\n"
        "from oct_foundation import io\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "for name, buffered in (('ckpt.pt', False), ('latent.pt', True)):\n"
        "    try:\n"
        "        io.torch_save({'w': torch.zeros(100000)}, sys.argv[1] + '/' + name, buffered=buffered)\n"
        "    except OSError as e:\n"
        "        print('ERR', name, e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ERR")]
    assert len(lines) == 2, p.stdout + p.stderr
    assert f"could not write {tmp_path}/ckpt.pt" in lines[0] and f"could not write {tmp_path}/latent.pt" in lines[1]
    assert list(tmp_path.iterdir()) == []
