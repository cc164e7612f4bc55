"""Faults and bad input: a killed pretraining run resumes exactly; bad files and failing writers give one clear
error naming the file and lose nothing already written; untrusted checkpoints are never unpickled."""
from __future__ import annotations

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError, OCTInputError

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"

# tiny pretraining (same override keys as tests/bundles/test_pretrain_bundle.py): 5 training volumes of the
# synthetic cohort, batch 2 with drop_last -> 2 iterations per epoch
TINY_PRETRAIN = {
    "d_target": 8, "d_full": 10, "image_size": "[32,32]", "patch_size": 8, "embed_dim": 32, "depth": 2,
    "num_heads": 2, "predictor_embed_dim": 32, "predictor_depth": 1, "predictor_num_heads": 2, "batch_size": 2,
    "num_workers": 0, "progress_bar": False, "log_interval": 1, "learning_rate": 0.002, "warmup_epochs": 1,
    "val_interval": 0, "save_interval": 1, "n_saved": 2,
}
EPOCHS = 4
ITERS_PER_EPOCH = 2


# ------------------------------------------------------------------------------------------------ helpers
def _write_nifti(path: Path, data: np.ndarray, spacing=(0.12, 0.004, 0.012)) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def _volume(d=8, h=32, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((d, h, w)).astype(np.float32)


class _Evil:
    """Unpickling this runs ``os.makedirs(marker)``: a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _bundle_cmd(cohort: Path, root: Path, log_dir: Path, **extra) -> list[str]:
    args = {**TINY_PRETRAIN, "num_epochs": EPOCHS, **extra}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", str(PRETRAIN / "train.json"), "--meta_file", str(PRETRAIN / "metadata.json"),
           "--logging_file", str(PRETRAIN / "logging.conf"),
           "--dataset_dir", str(cohort), "--bundle_root", str(root), "--log_dir", str(log_dir)]
    for k, v in args.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _losses(log_dir: Path) -> dict[int, float]:
    """``train/loss`` by iteration from every TensorBoard event file under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for f in sorted(glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags().get("scalars", []):
            out.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return out


# ------------------------------------------------------------------------------------------------ kill / resume
@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """An uninterrupted pretraining run, and the same run SIGKILLed inside epoch 3 then resumed with
    ``--resume latest``; all through the bundle CLI (``python -m monai.bundle run training ...``)."""
    from oct_foundation.data.synthetic import generate_cohort

    tmp = tmp_path_factory.mktemp("kill")
    cohort = tmp / "cohort"
    generate_cohort(str(cohort), cases=8, seed=0, size="tiny", progress=False)

    ref_root = tmp / "reference"
    ref = subprocess.run(_bundle_cmd(cohort, ref_root, ref_root / "tb"), cwd=str(ROOT), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    # SIGKILL about half an epoch after the epoch-2 checkpoint appeared, i.e. inside epoch 3
    root = tmp / "killed"
    ckpt_dir = root / "runs" / "checkpoints"
    proc = subprocess.Popen(_bundle_cmd(cohort, root, root / "tb_first"), cwd=str(ROOT), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen: dict[int, float] = {}
        deadline = time.time() + 240
        while 2 not in seen and time.time() < deadline and proc.poll() is None:
            for n in (1, 2):
                if n not in seen and (ckpt_dir / f"checkpoint_{n}.pt").exists():
                    seen[n] = time.time()
            time.sleep(0.01)
        assert 2 in seen and proc.poll() is None, "the run ended or stalled before it could be killed"
        time.sleep(0.5 * (seen[2] - seen.get(1, seen[2])))
        alive_at_kill = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ckpts_after_kill = sorted(ckpt_dir.glob("checkpoint_*.pt"))
    loadable = {c.name: set(torch.load(c, weights_only=True)) for c in ckpts_after_kill}

    res = subprocess.run(_bundle_cmd(cohort, root, root / "tb_resumed", resume="latest"), cwd=str(ROOT),
                         env=_env(), capture_output=True, text=True, timeout=300)
    return {
        "alive_at_kill": alive_at_kill, "returncode": proc.returncode, "ckpts_after_kill": ckpts_after_kill,
        "loadable": loadable, "resume": res, "root": root, "ckpt_dir": ckpt_dir,
        "ref_losses": _losses(ref_root / "tb"), "first_losses": _losses(root / "tb_first"),
        "resumed_losses": _losses(root / "tb_resumed"),
    }


def test_sigkill_mid_epoch_leaves_loadable_checkpoints_and_resume_completes(killed_and_resumed):
    r = killed_and_resumed
    assert r["alive_at_kill"] and r["returncode"] == -signal.SIGKILL
    # no checkpoint is corrupt: every checkpoint file loads with weights_only and holds the full training state
    assert r["ckpts_after_kill"], "no checkpoint survived"
    for name, keys in r["loadable"].items():
        assert {"network", "optimizer", "trainer", "lr_scheduler"} <= keys, name
    last_epoch = max(int(c.stem.split("_")[1]) for c in r["ckpts_after_kill"])
    assert 2 <= last_epoch < EPOCHS
    # the killed run matched the uninterrupted one up to the kill
    ref = r["ref_losses"]
    assert sorted(ref) == list(range(1, EPOCHS * ITERS_PER_EPOCH + 1))
    assert r["first_losses"] and all(v == pytest.approx(ref[k], rel=1e-5) for k, v in r["first_losses"].items())
    # the resumed run starts after the last saved epoch and finishes the schedule
    assert r["resume"].returncode == 0, r["resume"].stderr[-3000:]
    steps = sorted(r["resumed_losses"])
    assert steps == list(range(last_epoch * ITERS_PER_EPOCH + 1, EPOCHS * ITERS_PER_EPOCH + 1))
    final = torch.load(r["ckpt_dir"] / f"checkpoint_{EPOCHS}.pt", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * ITERS_PER_EPOCH
    assert torch.load(r["root"] / "models" / "model.pt", weights_only=True)
    assert not [p for p in r["ckpt_dir"].iterdir() if not p.name.startswith("checkpoint_")
                and not p.name.startswith("tmp")]  # at most an abandoned temporary of the killed write


def test_resumed_losses_equal_uninterrupted_run(killed_and_resumed):
    r = killed_and_resumed
    ref, resumed = r["ref_losses"], r["resumed_losses"]
    assert resumed
    for step, v in resumed.items():
        assert v == pytest.approx(ref[step], rel=1e-4, abs=1e-6), (step, v, ref[step])


# ------------------------------------------------------------------------------------------------ bad input files
def _load(path):
    from oct_foundation.data import load_oct

    return load_oct(str(path))


def _assert_names(err: pytest.ExceptionInfo, path) -> None:
    """One line that starts with the file and says what is wrong."""
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert "\n" not in msg and len(msg) > len(str(path)) + 10, msg


def test_truncated_nifti_gz_and_nii(tmp_path):
    good = _write_nifti(tmp_path / "good.nii.gz", _volume())
    raw = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OCTInputError, match="truncated|corrupt") as e:
        _load(cut)
    _assert_names(e, cut)

    plain = _write_nifti(tmp_path / "plain.nii", _volume())
    cut2 = tmp_path / "cut.nii"
    cut2.write_bytes(plain.read_bytes()[:600])  # header intact, data missing
    with pytest.raises(OCTInputError, match="truncated|corrupt") as e:
        _load(cut2)
    _assert_names(e, cut2)
    assert _load(good).shape == (1, 8, 32, 32)  # the untouched file still reads


def test_empty_and_non_image_dicom(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(OCTInputError) as e:
        _load(empty)
    _assert_names(e, empty)

    # a valid DICOM file without pixel data (a basic text structured report)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientID = "anon"
    report = tmp_path / "report.dcm"
    ds.save_as(str(report), enforce_file_format=True)
    with pytest.raises(OCTInputError, match="no pixel data") as e:
        _load(report)
    _assert_names(e, report)


def test_wrong_ndim_and_empty_volume(tmp_path):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.diag([0.004, 0.012, 1.0, 1.0])), str(flat))
    with pytest.raises(OCTInputError, match="expected a 3D volume") as e:
        _load(flat)
    _assert_names(e, flat)
    five = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 4, 4, 2, 2), np.float32), np.eye(4)), str(five))
    with pytest.raises(OCTInputError, match="5D") as e:
        _load(five)
    _assert_names(e, five)
    arr = tmp_path / "empty.npy"
    np.save(arr, np.zeros((0, 8, 8), np.float32))
    with pytest.raises(OCTInputError, match="empty volume") as e:
        _load(arr)
    _assert_names(e, arr)


def test_depth_smaller_than_required_tubelet_or_stack(tmp_path):
    from monai.transforms import Compose

    from oct_foundation.data import build_preprocessing
    from oct_foundation.engines import EmbeddingProcessor
    from oct_foundation.networks import VisionTransformer3D
    from oct_foundation.networks.maisi import StackedVideoVAE

    short = _write_nifti(tmp_path / "short.nii.gz", _volume(d=1))
    # a pipeline that needs a minimum depth refuses the file by name
    chain = Compose(build_preprocessing(keys=("image",), min_depth=4, d_target=4, train=False))
    with pytest.raises(Exception) as e:
        chain({"image": str(short)})
    root = e.value
    while root.__cause__ is not None or not isinstance(root, OCTInputError):  # MONAI wraps transform errors
        root = root.__cause__ or root.__context__
        assert root is not None, str(e.value)
    assert str(root).startswith(str(short)) and "fewer than the 4" in str(root)

    # embedding inference pads D=1 up to the tubelet (edge replication) instead of failing
    enc = VisionTransformer3D(img_size=(2, 32, 32), patch_size=16, tubelet_size=2, embed_dim=32, depth=1,
                              num_heads=2)
    proc = EmbeddingProcessor(enc)
    row = proc({"image": str(short)}, str(tmp_path / "out" / "short"))
    assert row["grid"] == "1x2x2" and row["depth"] == 2
    # a network given a too-short tensor directly says why
    with pytest.raises(ValueError, match="multiples of the patch"):
        enc(torch.rand(1, 1, 1, 32, 32))
    # the MAISI wrapper completes a short video to one stack by repeating its last frame
    vae = StackedVideoVAE(autoencoder={"num_channels": (4, 4, 4)}, stack_size=4).eval()
    with torch.no_grad():
        z = vae.encode(torch.rand(1, 1, 1, 16, 16))
    assert tuple(z.shape) == (1, 4, 1, 4, 4) and torch.isfinite(z).all()


def test_nan_voxels_refused_or_sanitised(tmp_path):
    vol = _volume()
    vol[2, 3, 4] = np.nan
    vol[5, 0, 0] = np.inf
    bad = _write_nifti(tmp_path / "nan.nii.gz", vol)
    with pytest.raises(OCTInputError, match="2 non-finite") as e:
        _load(bad)
    _assert_names(e, bad)
    from oct_foundation.data import OCTVolumeReader, load_oct

    x = load_oct(str(bad), OCTVolumeReader(sanitize_nan=True))
    assert torch.isfinite(x).all() and float(x[0, 2, 3, 4]) == 0.0


def test_unreachable_urls_and_bad_datalist(tmp_path, memfs):
    from oct_foundation.data import load_datalist

    for url in ("memory://bucket/missing/vol.nii.gz", f"file://{tmp_path}/nowhere.nii.gz"):
        with pytest.raises(OCTInputError, match="not found") as e:
            _load(url)
        _assert_names(e, url)
    with pytest.raises(OCTInputError, match="not found"):
        load_datalist("memory://bucket/missing/datalist.json")
    broken = tmp_path / "datalist.json"
    broken.write_text('{"training": [')
    with pytest.raises(OCTInputError, match="not valid JSON") as e:
        load_datalist(str(broken))
    _assert_names(e, broken)


# ------------------------------------------------------------------------------------------------ checkpoints
def _tiny_vjepa():
    from oct_foundation.networks import VJEPA3D

    return VJEPA3D(img_size=(4, 32, 32), patch_size=16, tubelet_size=2, embed_dim=32, depth=1, num_heads=2,
                   predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)


def test_wrong_and_mismatched_checkpoints(tmp_path):
    from oct_foundation.networks.weights import load_weights
    from oct_foundation.networks.maisi import StackedVideoVAE
    from oct_foundation.networks.pretrained import load_pretrained

    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="refused|not a readable") as e:
        oio.torch_load(junk)
    _assert_names(e, junk)

    half = tmp_path / "half.pt"
    torch.save(_tiny_vjepa().state_dict(), half)
    half.write_bytes(half.read_bytes()[:4000])  # truncated zip archive
    with pytest.raises(CheckpointError) as e:
        oio.torch_load(half)
    _assert_names(e, half)

    net = _tiny_vjepa()
    other = tmp_path / "wider.pt"
    from oct_foundation.networks import VJEPA3D

    wider = VJEPA3D(img_size=(4, 32, 32), patch_size=16, tubelet_size=2, embed_dim=64, depth=1, num_heads=2,
                    predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)
    torch.save(wider.state_dict(), other)
    with pytest.raises(CheckpointError, match="does not match") as e:
        load_weights(net, str(other))
    _assert_names(e, other)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatch.*nothing was loaded") as e:
        load_pretrained(net.encoder, str(other))
    assert str(e.value).startswith(str(other))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-loaded

    vae = StackedVideoVAE(autoencoder={"num_channels": (4, 4, 4)}, stack_size=4)
    bigger = StackedVideoVAE(autoencoder={"num_channels": (8, 8, 8)}, stack_size=4)
    mpath = tmp_path / "maisi.pt"
    torch.save(bigger.autoencoder.state_dict(), mpath)
    with pytest.raises(CheckpointError, match="does not match the MAISI autoencoder") as e:
        load_weights(vae, str(mpath), source="maisi", print_report=False)
    _assert_names(e, mpath)
    with pytest.raises(CheckpointError, match="not found") as e:
        load_weights(vae, str(tmp_path / "absent.pt"), source="maisi", print_report=False)


def test_mismatched_plain_weights_leave_network_unchanged_and_name_a_key(tmp_path):
    from oct_foundation.networks.weights import load_weights
    from oct_foundation.networks import VJEPA3D

    net = _tiny_vjepa()
    other = VJEPA3D(img_size=(4, 32, 32), patch_size=16, tubelet_size=2, embed_dim=64, depth=1, num_heads=2,
                    predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)
    path = tmp_path / "wider.pt"
    torch.save(other.state_dict(), path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_weights(net, str(path))
    changed = [k for k, v in net.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == [], f"half-loaded: {changed}"
    assert "weight" in str(e.value).split("(", 1)[1], str(e.value)


def test_untrusted_checkpoint_is_never_unpickled(tmp_path):
    from oct_foundation.networks.weights import load_weights
    from oct_foundation.networks.maisi import StackedVideoVAE
    from oct_foundation.networks.pretrained import load_pretrained

    marker = tmp_path / "code_ran"
    net = _tiny_vjepa()
    evil = tmp_path / "evil.pt"
    torch.save({"encoder": net.encoder.state_dict(), "hook": _Evil(str(marker))}, evil)
    # the file really carries code: an unrestricted load runs it
    probe = tmp_path / "probe_marker"
    torch.save(_Evil(str(probe)), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()

    loaders = [
        lambda: oio.torch_load(evil),
        lambda: load_pretrained(net.encoder, str(evil)),
        lambda: load_weights(StackedVideoVAE(autoencoder={"num_channels": (4, 4, 4)}), str(evil), source="maisi",
                             print_report=False),
        lambda: load_weights(net, str(evil)),
    ]
    for load in loaders:
        with pytest.raises(CheckpointError, match="refused") as e:
            load()
        _assert_names(e, evil)
        assert not marker.exists()


# ------------------------------------------------------------------------------------------------ outputs
def test_unwritable_output_folder(tmp_path):
    from oct_foundation.engines import BatchInference, EmbeddingProcessor
    from oct_foundation.networks import VisionTransformer3D

    _write_nifti(tmp_path / "in" / "a.nii.gz", _volume()) if (tmp_path / "in").mkdir() is None else None
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "embeddings"
    enc = VisionTransformer3D(img_size=(8, 32, 32), patch_size=16, tubelet_size=2, embed_dim=32, depth=1,
                              num_heads=2)
    with pytest.raises(OCTInputError, match="not writable") as e:
        BatchInference(str(tmp_path / "in"), str(out), EmbeddingProcessor(enc), progress=False).run()
    _assert_names(e, out)
    assert blocker.read_text().startswith("a file")  # untouched
    with pytest.raises(OSError):
        oio.atomic_write(str(out / "x.json"), "{}")


def _enospc_after(limit: int):
    """An ``open`` whose write-mode files raise ``OSError(ENOSPC)`` once ``limit`` bytes were written."""
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            if self.n + len(data) > limit:
                self.f.write(data[: max(0, limit - self.n)])
                self.f.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)
            self.n += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if any(c in mode for c in "wax") else f

    return fake_open


def test_full_disk_mid_write_keeps_what_was_written(tmp_path, monkeypatch, memfs):
    import builtins

    target = tmp_path / "results.json"
    oio.save_json({"finished": True, "values": list(range(100))}, str(target))
    ckpt = tmp_path / "model.pt"
    oio.torch_save({"w": torch.arange(1000.0)}, str(ckpt))
    url = "memory://bucket/out/results.json"
    oio.save_json({"finished": True}, url)

    monkeypatch.setattr(builtins, "open", _enospc_after(64))
    with pytest.raises(OSError) as e:
        oio.save_json({"finished": False, "values": list(range(10_000))}, str(target))
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        oio.save_json({"finished": False, "values": list(range(10_000))}, url)
    monkeypatch.undo()

    # torch.save writes through its own file writer: fail it half-way by writing a partial file, then raising
    real_save = torch.save

    def full_disk_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(OSError, match="No space"):
        oio.torch_save({"w": torch.zeros(10)}, str(ckpt))
    monkeypatch.undo()

    # nothing already written is lost, and no partial file is left next to it
    assert json.loads(target.read_text())["finished"] is True
    assert oio.load_json(url) == {"finished": True}
    torch.testing.assert_close(oio.torch_load(str(ckpt))["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "results.json"]
    assert memfs.ls("/bucket/out", detail=False) == ["/bucket/out/results.json"]


def test_batch_with_bad_files_and_a_full_disk_keeps_good_outputs(tmp_path, monkeypatch):
    """A batch over good and bad files: each bad one is reported with its reason, the rest are written; a disk
    that fills up while writing one output loses none of the earlier outputs, and a rerun completes the batch."""
    import csv

    from oct_foundation.engines import BatchInference, EmbeddingProcessor
    from oct_foundation.networks import VisionTransformer3D

    src = tmp_path / "in"
    src.mkdir()
    paths = [_write_nifti(src / f"good{i}.nii.gz", _volume(seed=i)) for i in range(3)]
    (src / "truncated.nii.gz").write_bytes(paths[0].read_bytes()[:200])
    vol = _volume()
    vol[0, 0, 0] = np.nan
    _write_nifti(src / "nan.nii.gz", vol)
    (src / "empty.dcm").write_bytes(b"")
    enc = VisionTransformer3D(img_size=(8, 32, 32), patch_size=16, tubelet_size=2, embed_dim=32, depth=1,
                              num_heads=2)
    out = tmp_path / "out"
    proc = EmbeddingProcessor(enc)

    # the disk fills up during the second successful write
    calls = {"n": 0}
    real_save = proc._save

    def save_then_fill(tensor, path):
        calls["n"] += 1
        if calls["n"] == 2:
            with oio.atomic_output(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
        real_save(tensor, path)

    monkeypatch.setattr(proc, "_save", save_then_fill)
    rows = BatchInference(str(src), str(out), proc, progress=False).run()
    status = {r["id"]: (r["status"], r["reason"]) for r in rows}
    assert sum(s == "done" for s, _ in status.values()) == 2
    reasons = [r for s, r in status.values() if s == "error"]
    assert len(reasons) == 4
    assert any("No space" in r for r in reasons)
    assert any("non-finite" in r for r in reasons) and any("truncated" in r or "corrupt" in r for r in reasons)
    written = sorted(out.glob("*_embedding.pt"))
    assert len(written) == 2 and all(torch.load(p, weights_only=True).shape == (32,) for p in written)
    assert not [p for p in out.iterdir() if ".part" in p.name]
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 6

    monkeypatch.undo()
    rows = BatchInference(str(src), str(out), proc, progress=False).run()
    assert sorted(r["status"] for r in rows) == ["done", "error", "error", "error", "skipped", "skipped"]
    assert all(torch.load(p, weights_only=True).shape == (32,) for p in out.glob("*_embedding.pt"))
