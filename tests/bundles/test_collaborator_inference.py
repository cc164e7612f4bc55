"""A collaborator's first run: the real ``python -m monai.bundle run`` CLI on one folder of mixed inputs.

One folder holds good volumes (NIfTI, DICOM Ophthalmic Tomography with patient tags, HEYEX .vol) and bad
files (a truncated NIfTI, a text file named .dcm), all named after a fake patient. For the segmentation,
classification, embedding (pretrain) and MAISI encode bundles: per-file errors are listed and the batch goes
on; a rerun redoes only a deleted output and never rewrites finished ones (``--overwrite false`` given as the
CLI's string); ``overwrite`` redoes them; no output (names, CSVs, JSON sidecars, NIfTI headers, tensors) and
no log line carries the patient's name or ID, the input file names or the input folder. Networks are tiny;
the four bundles run as parallel subprocesses (one first run and one rerun each).
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PATIENT = "Doe^Jane"
PATIENT_ID = "PID-4711-XY"
STEM = "Doe_Jane"  # every input file name starts with it

ENCODER = {"image_size": [32, 32], "d_target": 4, "patch_size": 16, "tubelet_size": 2, "embed_dim": 32,
           "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
BUNDLES = {
    "oct_layer_segmentation": {
        "overrides": {**ENCODER, "decoder_channels": [8, 8, 8, 8]},
        "summary": "summary.csv", "outputs": ("_seg.nii.gz",), "weights": "model_path"},
    "oct_disease_classification": {
        "overrides": dict(ENCODER), "summary": "predictions.csv", "outputs": ("_probs.json",),
        "weights": "model_path"},
    "oct_vjepa_pretrain": {
        "overrides": {**ENCODER, "predictor_embed_dim": 32, "predictor_depth": 1, "predictor_num_heads": 2},
        "summary": "manifest.csv", "outputs": ("_embedding.pt",), "weights": "model_path"},
    "oct_maisi_vae_encode": {
        "overrides": {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 8,
                      "allow_random_init": "true"},
        "summary": "manifest.csv", "outputs": ("_latent.pt", "_latent.json"), "weights": "weights_path"},
}
GOOD = (f"{STEM}_OD_2024.nii.gz", f"{STEM}_scan.dcm", f"{STEM}_heyex.vol")
BAD = (f"{STEM}_truncated.nii.gz", f"{STEM}_notes.dcm")


def _write_inputs(folder: Path) -> None:
    from oct_foundation.data import write_dicom_oct
    from oct_foundation.data.readers import write_heyex_vol

    folder.mkdir()
    rng = np.random.default_rng(0)
    vol = (rng.random((6, 32, 32)) * 200).astype(np.uint8)
    img = nib.Nifti1Image(vol.astype(np.float32) / 200, np.diag([0.12, 0.004, 0.012, 1.0]))
    img.header["descrip"] = PATIENT.encode()
    nib.save(img, str(folder / GOOD[0]))
    write_dicom_oct(str(folder / GOOD[1]), vol[:4], spacing=(0.1, 0.004, 0.01), patient_id=PATIENT_ID,
                    PatientName=PATIENT)
    write_heyex_vol(str(folder / GOOD[2]), vol[:, :24], spacing=(0.1, 0.004, 0.01))
    raw = (folder / GOOD[0]).read_bytes()
    (folder / BAD[0]).write_bytes(raw[: len(raw) // 2])
    (folder / BAD[1]).write_text(f"patient {PATIENT}, not an image\n")


def _cli(name: str, inputs: Path, out: Path, weights: Path, **extra) -> list[str]:
    spec = BUNDLES[name]
    bundle = ROOT / "bundles" / name
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
           "--input_dir", str(inputs), "--output_dir", str(out), f"--{spec['weights']}", str(weights),
           "--device", "cpu"]
    for k, v in {**spec["overrides"], **extra}.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return cmd


def _run_all(cmds: dict[str, list[str]], cwd: Path) -> dict[str, str]:
    """Start every command at once (their imports dominate), wait for all, return each one's stdout+stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    procs = {n: subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, c in cmds.items()}
    logs = {n: p.communicate(timeout=240)[0] for n, p in procs.items()}
    for n, p in procs.items():
        assert p.returncode == 0, f"{n} failed:\n{logs[n][-3000:]}"
    return logs


def _weights(name: str, folder: Path) -> Path:
    """A random-init ``model.pt`` (plain state_dict of the bundle's ``network_def``); MAISI: no file at all
    (``allow_random_init``)."""
    path = folder / f"{name}_model.pt"
    if name == "oct_maisi_vae_encode":
        return path
    from monai.bundle import ConfigParser

    bundle = ROOT / "bundles" / name
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), **BUNDLES[name]["overrides"]})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("collab")
    inputs = base / "scans"
    _write_inputs(inputs)
    work = base / "work"
    work.mkdir()
    weights = {n: _weights(n, work) for n in BUNDLES}
    outs = {n: base / f"out_{n}" for n in BUNDLES}
    logs1 = _run_all({n: _cli(n, inputs, outs[n], weights[n]) for n in BUNDLES}, work)
    first = {n: _rows(outs[n] / BUNDLES[n]["summary"]) for n in BUNDLES}
    # delete one finished output per bundle, note the others' mtimes, rerun with overwrite given as "false"
    deleted, mtimes = {}, {}
    for n in BUNDLES:
        done = sorted(r["id"] for r in first[n] if r["status"] == "done")
        deleted[n] = done[0]
        os.remove(outs[n] / f"{done[0]}{BUNDLES[n]['outputs'][0]}")
        mtimes[n] = {p: p.stat().st_mtime_ns for p in outs[n].iterdir()
                     if any(p.name.startswith(i) for i in done[1:])}
    logs2 = _run_all({n: _cli(n, inputs, outs[n], weights[n], overwrite="false") for n in BUNDLES}, work)
    second = {n: _rows(outs[n] / BUNDLES[n]["summary"]) for n in BUNDLES}
    return {"inputs": inputs, "outs": outs, "weights": weights, "first": first, "second": second,
            "deleted": deleted, "mtimes": mtimes, "logs": {n: logs1[n] + logs2[n] for n in BUNDLES}}


@pytest.mark.parametrize("name", list(BUNDLES))
def test_errors_listed_batch_goes_on(runs, name):
    rows = runs["first"][name]
    assert len(rows) == len(GOOD) + len(BAD)
    assert sorted(r["status"] for r in rows) == ["done"] * len(GOOD) + ["error"] * len(BAD)
    errors = [r["reason"] for r in rows if r["status"] == "error"]
    assert all(errors), rows  # each failure says why
    for r in rows:
        for suffix in BUNDLES[name]["outputs"]:
            assert (runs["outs"][name] / f"{r['id']}{suffix}").exists() == (r["status"] == "done")
    if name == "oct_layer_segmentation":  # label maps in each input's own geometry
        shapes = sorted(r["shape"] for r in rows if r["status"] == "done")
        assert shapes == ["4x32x32", "6x24x32", "6x32x32"]
    if name == "oct_vjepa_pretrain":
        emb = [torch.load(runs["outs"][name] / f"{r['id']}_embedding.pt", weights_only=True)
               for r in rows if r["status"] == "done"]
        assert all(e.shape == (32,) and torch.isfinite(e).all() for e in emb)


@pytest.mark.parametrize("name", list(BUNDLES))
def test_rerun_redoes_only_the_missing_output(runs, name):
    rows = {r["id"]: r for r in runs["second"][name]}
    assert rows[runs["deleted"][name]]["status"] == "done"
    others = [r["status"] for i, r in rows.items() if i != runs["deleted"][name]]
    assert sorted(others) == ["error"] * len(BAD) + ["skipped"] * (len(GOOD) - 1)
    for path, mtime in runs["mtimes"][name].items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was rewritten"
    for suffix in BUNDLES[name]["outputs"]:
        assert (runs["outs"][name] / f"{runs['deleted'][name]}{suffix}").exists()


def _identifiers(runs) -> list[str]:
    inputs = runs["inputs"]
    return ["Doe", "Jane", PATIENT_ID, STEM, str(inputs), inputs.name + os.sep] + [f for f in GOOD + BAD]


def _file_text(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw


@pytest.mark.parametrize("name", list(BUNDLES))
def test_outputs_and_logs_carry_no_identifier(runs, name):
    out = runs["outs"][name]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files
    for ident in _identifiers(runs):
        for p in files:
            assert ident not in str(p.relative_to(out)), f"{ident!r} in the output name {p.name}"
            assert ident.encode() not in _file_text(p), f"{ident!r} inside {p.name}"
    for ident in ("Doe", "Jane", PATIENT_ID, STEM):
        assert ident not in runs["logs"][name], f"{ident!r} printed by {name}"
    if name == "oct_layer_segmentation":
        for p in out.glob("*_seg.nii.gz"):
            hdr = nib.load(str(p)).header
            for field in ("descrip", "aux_file", "intent_name", "db_name"):
                assert bytes(hdr[field]).strip(b"\x00") == b"", (field, hdr[field])
    if name == "oct_maisi_vae_encode":
        side = json.loads(next(out.glob("*_latent.json")).read_text())
        assert set(side) <= {"input_shape", "latent_shape", "spacing", "format", "strategy", "window", "stride",
                             "compression", "latent_channels", "scale_factor", "latents", "autoencoder", "padding",
                             "scale_factor_source", "input_format", "fps"}


def test_overwrite_true_redoes_finished_outputs(runs):
    """``--overwrite true`` (the CLI's string), in process: every finished output is written again."""
    from monai.bundle import run

    name = "oct_disease_classification"
    bundle = ROOT / "bundles" / name
    out = runs["outs"][name]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_probs.json")}
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), input_dir=str(runs["inputs"]), output_dir=str(out),
        model_path=str(runs["weights"][name]), device="cpu", overwrite="true", **BUNDLES[name]["overrides"])
    rows = _rows(out / "predictions.csv")
    assert sorted(r["status"] for r in rows) == ["done"] * len(GOOD) + ["error"] * len(BAD)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*_probs.json")}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)


def test_index_file_and_id_map(tmp_path, runs):
    """``index_file`` holds the ID -> input table where asked; ``id_map`` names outputs by the user's IDs."""
    from monai.bundle import run

    name = "oct_disease_classification"
    bundle = ROOT / "bundles" / name
    id_map = tmp_path / "ids.csv"
    id_map.write_text("input,id\n" + "".join(f"{f},case{i}\n" for i, f in enumerate(GOOD + BAD)))
    index = tmp_path / "index.csv"
    out = tmp_path / "out"
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), input_dir=str(runs["inputs"]), output_dir=str(out), id_map=str(id_map),
        index_file=str(index), model_path=str(runs["weights"][name]), device="cpu", **BUNDLES[name]["overrides"])
    rows = _rows(out / "predictions.csv")
    assert sorted(r["id"] for r in rows) == [f"case{i}" for i in range(5)]
    assert sorted(p.name for p in out.glob("*_probs.json")) == [f"case{i}_probs.json" for i in range(3)]
    table = {r["id"]: r["input"] for r in _rows(index)}
    assert {os.path.basename(v) for v in table.values()} == set(GOOD + BAD)
    assert STEM not in "".join(p.read_text() for p in out.iterdir() if p.suffix in (".csv", ".json"))
