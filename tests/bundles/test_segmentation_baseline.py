"""oct_layer_segmentation: the supervised UNet baseline (``--model unet``) through the real command line, and
evaluation scored at the labels' native in-plane size when the network runs on a resized grid."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT / "bundles" / "oct_layer_segmentation"
# a resized grid (16 x 16) smaller than the cohort's native 32 x 32 B-scans
UNET = ["--model", "unet", "--image_size", "[16, 16]", "--d_target", "4", "--unet_channels", "[4, 8, 8]",
        "--unet_strides", "[[1, 2, 2], 2]", "--num_workers", "0"]


def _cli(run_id, configs, *args, cwd=SEG):
    files = [str(SEG / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id,
           "--config_file", files[0] if len(files) == 1 else json.dumps(files),
           "--logging_file", str(SEG / "configs" / "logging.conf"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_unet_baseline_trains_and_scores_at_native_size(cohort, tmp_path):
    root = tmp_path / "unet"
    common = ["--dataset_dir", str(cohort), "--bundle_root", str(root), *UNET]
    _cli("training", ["train.json"], *common, "--encoder_source", "random", "--num_epochs", "1",
         "--progress_bar", "false")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert state and all(k.startswith("unet.") for k in state)  # MONAI UNet weights, no ViT encoder
    assert not any("encoder" in k for k in state)

    # the model file describes the UNet and its input grid: evaluation and inference need no shape flag
    spec = json.loads((root / "models" / "model.json").read_text())
    assert spec["_target_"] == "oct_foundation.networks.baselines.UNetBaseline"
    assert spec["args"]["channels"] == [4, 8, 8] and spec["args"]["img_size"] == [4, 16, 16]
    _cli("evaluating", ["train.json", "evaluate.json"], "--dataset_dir", str(cohort), "--bundle_root", str(root),
         "--num_workers", "0")
    res = json.loads((root / "runs" / "eval" / "segmentation_metrics.json").read_text())
    test_items = json.loads((cohort / "datalist.json").read_text())["test"]
    assert res["n_cases"] == len(test_items) and len(res["layers"]) == 9
    # every case is scored on its label's own grid (full depth, 32 x 32), not on the 16 x 16 network grid
    native = {it["case_id"]: "x".join(str(s) for s in nib.load(str(cohort / it["label"])).shape)
              for it in test_items}
    with open(root / "runs" / "eval" / "segmentation_cases.csv") as f:
        scored = {r["case"]: r["shape"] for r in csv.DictReader(f)}
    assert scored == native and all(s.endswith("x32x32") for s in scored.values())
    vals = [v for v in res["dice_per_layer"].values() if v is not None and v == v]
    assert vals and all(0.0 <= v <= 1.0 for v in vals)


def test_unet_baseline_refuses_pretrained_weights(tmp_path):
    from oct_foundation.networks.baselines import UNetBaseline
    from oct_foundation.networks.weights import load_weights

    torch.save({"pos_embed": torch.zeros(1)}, tmp_path / "model.pt")  # any weight file: refused before reading
    net = UNetBaseline(num_classes=3, channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="encoder_source 'random'"):
        load_weights(net, str(tmp_path / "model.pt"), source="model_pt")
    load_weights(net, None, source="random", print_report=False)  # from scratch: accepted


def test_unet_baseline_any_size():
    from oct_foundation.networks.baselines import UNetBaseline, build_segmentation_network

    net = build_segmentation_network(model="unet", num_classes=5, unet_channels=(4, 8, 8),
                                     unet_strides=((1, 2, 2), 2), encoder={"in_chans": 2})
    assert isinstance(net, UNetBaseline) and net.kernel == (2, 4, 4)
    for shape in [(1, 2, 5, 30, 18), (2, 2, 8, 32, 32)]:  # padded to the strides' product and cropped back
        assert net(torch.randn(*shape)).shape == (shape[0], 5, *shape[2:])
    with pytest.raises(ValueError, match="one more entry"):
        UNetBaseline(channels=(4, 8), strides=(2, 2))


def test_class_weights_checked():
    from oct_foundation.networks.baselines import class_weight_tensor

    assert class_weight_tensor(None, 3) is None
    assert class_weight_tensor([1, 1, 10], 3).tolist() == [1.0, 1.0, 10.0]
    with pytest.raises(ValueError, match="class_weights has 2 values for num_classes=3"):
        class_weight_tensor([1, 10], 3)
    with pytest.raises(ValueError, match="non-negative"):
        class_weight_tensor([1, -1, 1], 3)


def test_unknown_model_is_refused():
    from oct_foundation.networks.baselines import build_segmentation_network

    with pytest.raises(ValueError, match="model must be one of"):
        build_segmentation_network(model="swin", num_classes=3)


def test_unet_inference_from_the_model_file_alone(cohort, tmp_path):
    root, out = tmp_path / "unet", tmp_path / "labels"
    _cli("training", ["train.json"], "--dataset_dir", str(cohort), "--bundle_root", str(root), *UNET,
         "--encoder_source", "random", "--num_epochs", "1", "--progress_bar", "false")
    model = root / "models" / "model.pt"
    _cli("run", ["inference.json"], "--datalist", str(cohort / "datalist.json"), "--dataset_dir", str(cohort),
         "--model_path", str(model), "--output_dir", str(out), "--device", "$torch.device('cpu')")
    maps = sorted(out.glob("*_seg.nii.gz"))
    test_items = json.loads((cohort / "datalist.json").read_text())["test"]
    assert len(maps) == len(test_items)
    first = nib.load(str(cohort / test_items[0]["image"])).shape  # written in the input's geometry
    assert any(nib.load(str(m)).shape == first for m in maps)
    # a ViT head asked of a UNet file is refused naming the file
    files = [str(SEG / "configs" / "inference.json")]
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0], "--model", "vit",
                          "--datalist", str(cohort / "datalist.json"), "--dataset_dir", str(cohort),
                          "--model_path", str(model), "--output_dir", str(tmp_path / "vit"),
                          "--device", "$torch.device('cpu')"], cwd=str(SEG), capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert res.returncode != 0 and str(model) in res.stderr
