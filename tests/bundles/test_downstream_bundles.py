"""oct_layer_segmentation and oct_disease_classification: the real configs through ``monai.bundle.run`` (what
``python -m monai.bundle run`` calls) on a tiny synthetic cohort, with a tiny encoder."""
import csv
import json
import math
import os
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT / "bundles" / "oct_layer_segmentation"
CLS = ROOT / "bundles" / "oct_disease_classification"
TINY = dict(image_size=[32, 32], d_target=4, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from oct_foundation.data.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), cases=12, seed=0, size="tiny", progress=False)
    return out


@pytest.fixture(scope="module")
def pretrain_model(tmp_path_factory):
    """A pretrain bundle's ``models/model.pt``: the plain state dict of a tiny VJEPA3D."""
    from oct_foundation.networks.vjepa3d import VJEPA3D

    torch.manual_seed(1)
    vj = VJEPA3D(img_size=(4, 32, 32), embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=16,
                 predictor_depth=1, predictor_num_heads=2)
    with torch.no_grad():
        for p in vj.target_encoder.parameters():
            p.mul_(1.5)  # the target (EMA) encoder differs from the context encoder
    path = tmp_path_factory.mktemp("pretrain") / "model.pt"
    torch.save(vj.state_dict(), path)
    return path, {k: v.clone() for k, v in vj.target_encoder.state_dict().items()}


def _run(bundle: Path, run_id: str, configs, **overrides):
    from monai.bundle import run

    cwd = os.getcwd()
    os.chdir(bundle)  # as a user runs it, bundle_root "."
    try:
        files = [str(bundle / "configs" / c) for c in configs]
        run(run_id, config_file=files if len(files) > 1 else files[0],
            logging_file=str(bundle / "configs" / "logging.conf"), **overrides)
    finally:
        os.chdir(cwd)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_segmentation_train_evaluate_infer(cohort, pretrain_model, tmp_path):
    pt, target_state = pretrain_model
    out, models = tmp_path / "runs", tmp_path / "models"
    common = dict(dataset_dir=str(cohort), output_dir=str(out), models_dir=str(models), num_workers=0,
                  decoder_channels=[8], **TINY)
    # a short run: 4 training volumes (2 steps), 1 validation volume
    _run(SEG, "training", ["train.json"], encoder_source="model_pt", encoder_path=str(pt), freeze="all",
         num_epochs=1, progress_bar=False, **common,
         **{"train#datalist": "$oct_foundation.data.load_datalist(@datalist, 'training')[:4]",
            "validate#datalist": "$oct_foundation.data.load_datalist(@datalist, 'validation')[:1]"})
    assert (out / "checkpoints" / "checkpoint_1.pt").exists()
    state = torch.load(models / "model.pt", weights_only=True)  # best-by-validation export, plain state dict
    assert any(k.startswith("proj.") for k in state)
    best = json.loads((models / "model.pt.json").read_text())
    assert best["metric"] == "val_mean_dice" and best["epoch"] == 1 and 0.0 <= best["value"] <= 1.0
    # weights, their description (model.json) and the best-metric sidecar; no partial files
    assert sorted(p.name for p in models.iterdir()) == ["model.json", "model.pt", "model.pt.json"]
    # frozen encoder: the exported encoder is exactly the pretrain bundle's target encoder
    for k, v in target_state.items():
        assert torch.equal(state[f"encoder.{k}"], v), k

    _run(SEG, "evaluating", ["train.json", "evaluate.json"], **common)
    test_items = json.loads((cohort / "datalist.json").read_text())["test"]
    res = json.loads((out / "eval" / "segmentation_metrics.json").read_text())
    assert res["n_cases"] == len(test_items) >= 2 and len(res["layers"]) == 9
    vals = [v for v in res["dice_per_layer"].values() if v is not None]
    assert vals and all(0.0 <= v <= 1.0 for v in vals)
    assert res["dice_mean"] == pytest.approx(np.mean(vals))
    # scored at full depth (8 or 12 slices) although training saw 4
    depths = {it["case_id"]: nib.load(str(cohort / it["image"])).shape[0] for it in test_items}
    assert {c["case"]: int(c["shape"].split("x")[0]) for c in res["cases"]} == depths
    rows = _rows(out / "eval" / "segmentation_metrics.csv")
    assert rows[-1]["layer"] == "mean" and len(rows) == 10

    inf = tmp_path / "inference"
    _run(SEG, "inference", ["inference.json"], datalist=str(cohort / "datalist.json"), output_dir=str(inf),
         models_dir=str(models), decoder_channels=[8], **TINY)
    summary = _rows(inf / "summary.csv")
    assert len(summary) == len(test_items) and all(r["status"] == "done" for r in summary)
    shapes = sorted(nib.load(str(cohort / it["image"])).shape for it in test_items)
    outs = [nib.load(str(inf / r["label_map"])) for r in summary]
    assert sorted(o.shape for o in outs) == shapes  # the input geometry
    for o in outs:
        data = np.asarray(o.dataobj)
        assert data.dtype == np.uint8 and data.max() < 10
    src = nib.load(str(cohort / test_items[0]["image"]))
    match = [o for o in outs if o.shape == src.shape]
    assert any(np.allclose(o.affine, src.affine) for o in match)
    assert "volume_mm3_RPE" in summary[0]


def test_classification_train_evaluate_infer(cohort, pretrain_model, tmp_path):
    pt, _ = pretrain_model
    out, models = tmp_path / "runs", tmp_path / "models"
    common = dict(dataset_dir=str(cohort), output_dir=str(out), models_dir=str(models), num_workers=0,
                  probe="attentive", **TINY)
    _run(CLS, "training", ["train.json"], encoder_source="model_pt", encoder_path=str(pt), freeze=False,
         num_epochs=1, progress_bar=False, **common)
    state = torch.load(models / "model.pt", weights_only=True)
    assert "head.weight" in state and "pooler.query" in state
    assert json.loads((models / "model.pt.json").read_text())["metric"] == "val_accuracy"

    _run(CLS, "evaluating", ["train.json", "evaluate.json"], **common)
    test_items = json.loads((cohort / "datalist.json").read_text())["test"]
    rep = json.loads((out / "eval" / "classification_metrics.json").read_text())
    assert rep["pooled"]["n"] == len(test_items)
    assert set(rep["per_group"]) == {it["device"] for it in test_items} == {"A", "B"}
    assert sum(g["n"] for g in rep["per_group"].values()) == len(test_items)
    assert 0.0 <= rep["pooled"]["accuracy"] <= 1.0
    rows = _rows(out / "eval" / "classification_metrics.csv")
    assert [r["group"] for r in rows] == ["pooled", "A", "B"]

    inf = tmp_path / "inference"
    _run(CLS, "inference", ["inference.json"], datalist=str(cohort / "datalist.json"), output_dir=str(inf),
         models_dir=str(models), probe="attentive", **TINY)
    preds = _rows(inf / "predictions.csv")
    assert len(preds) == len(test_items) and all(r["status"] == "done" for r in preds)
    for r in preds:
        probs = [float(r[f"prob_{c}"]) for c in ("normal", "fluid", "drusen")]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-4) and r["prediction"] in ("normal", "fluid", "drusen")
        assert json.loads((inf / r["probabilities"]).read_text())["prediction"] == r["prediction"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_gpu_config_runs_distributed_on_cpu(cohort, tmp_path, monkeypatch):
    """multi_gpu_train.json with the environment torchrun sets, one gloo rank on CPU: DDP wrapper, distributed
    samplers, rank-0 handlers, process group (and Ignite's distributed state) set up and torn down."""
    import ignite.distributed as idist

    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(k, v)
    out, models = tmp_path / "runs", tmp_path / "models"
    _run(CLS, "training", ["train.json", "multi_gpu_train.json"], dataset_dir=str(cohort), output_dir=str(out),
         models_dir=str(models), num_workers=0, encoder_source="random", num_epochs=1, progress_bar=False,
         dist_backend="gloo", device="$torch.device('cpu')", **TINY,
         **{"train#datalist": "$oct_foundation.data.load_datalist(@datalist, 'training')[:4]"})
    assert not torch.distributed.is_initialized() and idist.get_world_size() == 1
    state = torch.load(models / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # the plain network, not the DDP wrapper
    assert (out / "checkpoints" / "checkpoint_1.pt").exists()


@pytest.mark.parametrize("bundle", [SEG, CLS])
def test_metadata_properties_and_network_io(bundle, cohort, tmp_path):
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "network_data_format", "task"):
        assert key in meta
    for f in ("LICENSE", "large_files.yml", "docs/README.md", "configs/logging.conf",
              "configs/multi_gpu_train.json", "configs/evaluate.json", "configs/inference.json"):
        assert (bundle / f).exists(), f
    cwd = os.getcwd()
    os.chdir(bundle)
    try:
        verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json",
                          config_file="configs/inference.json", n=1, device="cpu", **TINY)
        wf = ConfigWorkflow(config_file="configs/train.json", workflow_type="train", meta_file="configs/metadata.json",
                            logging_file="configs/logging.conf", encoder_source="random", dataset_dir=str(cohort),
                            output_dir=str(tmp_path), models_dir=str(tmp_path / "models"), **TINY)
        wf.initialize()
        assert wf.check_properties() == []  # MONAI's train-workflow properties, references included
    finally:
        os.chdir(cwd)


def test_segmentation_inference_on_mixed_folder(cohort, tmp_path):
    """A folder of NIfTI, DICOM and HEYEX .vol volumes plus a broken file: one label map per readable volume in
    its own geometry, the broken one recorded as an error; a rerun skips finished inputs."""
    from oct_foundation.data.readers import write_dicom_oct, write_heyex_vol
    from oct_foundation.networks.heads import SegmentationNet

    torch.manual_seed(0)
    net = SegmentationNet(num_classes=10, decoder_channels=[8], freeze="all", in_chans=1, img_size=(4, 32, 32),
                          patch_size=16, tubelet_size=2, embed_dim=32, depth=2, num_heads=2, pos_embed="rope")
    models = tmp_path / "models"
    models.mkdir()
    torch.save(net.state_dict(), models / "model.pt")

    src = tmp_path / "scans"
    src.mkdir()
    item = json.loads((cohort / "datalist.json").read_text())["test"][0]
    nii = nib.load(str(cohort / item["image"]))
    nib.save(nii, str(src / "scan_nifti.nii.gz"))
    vol = np.asarray(nii.dataobj)
    u8 = np.clip(vol / max(float(vol.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    write_dicom_oct(str(src / "scan_dicom.dcm"), u8[:6, :, :24], spacing=(0.2, 0.01, 0.05), patient_id="X1")
    write_heyex_vol(str(src / "scan_heyex.vol"), u8[:5, :20], spacing=(0.1, 0.004, 0.02))
    (src / "broken.nii.gz").write_bytes(b"not a nifti file")

    out = tmp_path / "seg"
    kw = dict(dataset_dir=str(src), output_dir=str(out), models_dir=str(models), decoder_channels=[8], **TINY)
    _run(SEG, "inference", ["inference.json"], **kw)
    rows = _rows(out / "summary.csv")
    assert len(rows) == 4
    status = sorted(r["status"] for r in rows)
    assert status == ["done", "done", "done", "error"]
    bad = [r for r in rows if r["status"] == "error"][0]
    assert bad["reason"] and str(src) not in bad["reason"]  # no input path in the shared summary
    shapes = sorted(nib.load(str(out / r["label_map"])).shape for r in rows if r["status"] == "done")
    assert shapes == sorted([vol.shape, (6, vol.shape[1], 24), (5, 20, vol.shape[2])])
    dcm_out = [nib.load(str(out / r["label_map"])) for r in rows if r["status"] == "done"]
    dcm_out = [o for o in dcm_out if o.shape == (6, vol.shape[1], 24)][0]
    assert np.allclose(np.diag(dcm_out.affine)[:3], (0.2, 0.01, 0.05))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    _run(SEG, "inference", ["inference.json"], **kw)  # rerun: finished volumes are skipped, not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")} == before


def test_best_model_export_and_output_helpers(tmp_path):
    from ignite.engine import Engine, Events

    from oct_foundation.engines.batches import PrepareClassBatch, StackOutputs
    from oct_foundation.engines.checkpoints import BestModelExport

    net = torch.nn.Linear(2, 2)
    values = iter([0.5, 0.4, float("nan"), 0.7])
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):  # registered before the exporter, as metrics are in a MONAI evaluator
        e.state.metrics["val_dice"] = next(values)
        with torch.no_grad():
            net.weight.add_(1.0)

    path = tmp_path / "models" / "model.pt"
    BestModelExport(net, str(path), "val_dice", mode="max").attach(engine)
    saved = []
    engine.add_event_handler(Events.EPOCH_COMPLETED,
                             lambda e: saved.append(json.loads(path.with_name("model.pt.json").read_text())["epoch"]))
    engine.run([0], max_epochs=4)
    assert saved == [1, 1, 1, 4]  # 0.4 and NaN are not improvements
    assert torch.equal(torch.load(path, weights_only=True)["weight"], net.weight.detach())
    with pytest.raises(ValueError):
        BestModelExport(net, str(path), "val_dice", mode="higher")

    out = [{"pred": torch.tensor([0.1, 0.9]), "label": torch.tensor(1)}]
    pred, label = StackOutputs(["pred", "label"])(out)
    assert pred.shape == (1, 2) and label.shape == (1,)
    x, y = PrepareClassBatch(label_key="class")({"image": torch.zeros(2, 1, 2, 4, 4), "class": [2, 0]}, "cpu")
    assert x.shape == (2, 1, 2, 4, 4) and y.tolist() == [2, 0] and y.dtype == torch.long
