"""One variant of the layer-segmentation sweep in docs/scientific_check.md ("Layer segmentation head").

Trains a segmentation network on the training split of a cohort with the bundle's preprocessing (``d_target`` 16,
64 x 64, flips), in memory, and scores the test split at full depth with the package's metric (mean Dice over
the foreground layers). One JSON line ``RESULT {...}`` is printed at the end.

    python scripts/segmentation_head_sweep.py --cohort COHORT --epochs 10 --lr 0.003 --batch-dice \\
        --net '{"image_skip_levels": null}' --weight '[1,1,1,1,1,1,1,1,1,10]'
    python scripts/segmentation_head_sweep.py --cohort COHORT --model unet --epochs 10 --lr 0.003 --batch-dice

``COHORT``: ``python -m oct_foundation.data.synthetic --out COHORT --cases 72 --seed 0 --size small --split 0.4
0.1 0.5`` (the demo's). The encoder is the demo's shape, frozen, random-init unless ``--encoder model.pt``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", required=True, help="folder with datalist.json (training and test lists)")
    p.add_argument("--model", choices=("vit", "unet"), default="vit")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--net", default="{}", help="JSON kwargs for SegmentationNet / UNetBaseline")
    p.add_argument("--batch-dice", action="store_true", help="DiceCE with batch=True")
    p.add_argument("--weight", default="null", help="JSON list of class weights for DiceCE, or null")
    p.add_argument("--encoder", default=None, help="pretrain bundle model.pt for the encoder (default: random)")
    p.add_argument("--freeze", default="all")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, RandFlipd
    from monai.utils import set_determinism

    from oct_foundation.data import build_preprocessing, load_datalist
    from oct_foundation.metrics.segmentation import SegmentationReport
    from oct_foundation.networks.baselines import UNetBaseline
    from oct_foundation.networks.heads import SegmentationNet
    from oct_foundation.networks.weights import load_weights

    set_determinism(a.seed)
    dl = f"{a.cohort}/datalist.json"
    tr = build_preprocessing(keys=["image"], label_key="label", d_target=16, image_size=[64, 64], train=True)
    ev = build_preprocessing(keys=["image"], label_key="label", d_target=None, image_size=[64, 64], train=False)
    flip = RandFlipd(["image", "label"], prob=0.5, spatial_axis=2)
    train_ds = CacheDataset(load_datalist(dl, "training"), Compose(tr + [flip]), progress=False)
    test_ds = CacheDataset(load_datalist(dl, "test"), Compose(ev), progress=False)
    kw = json.loads(a.net)
    if a.model == "vit":
        net = SegmentationNet(**{**dict(num_classes=10, in_chans=1, img_size=[16, 64, 64], patch_size=16,
                                        tubelet_size=2, embed_dim=96, depth=4, num_heads=4, pos_embed="rope",
                                        freeze=a.freeze), **kw})
        if a.encoder:
            load_weights(net, a.encoder, source="model_pt", use_target_encoder=True, print_report=False)
    else:
        net = UNetBaseline(**{"num_classes": 10, **kw})
    params = [q for q in net.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    loader = DataLoader(train_ds, batch_size=a.batch_size, shuffle=True, num_workers=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * len(loader))
    w = json.loads(a.weight)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=a.batch_dice,
                         weight=torch.tensor(w, dtype=torch.float32) if w else None)
    t0 = time.time()
    for ep in range(a.epochs):
        net.train()
        total = 0.0
        for b in loader:
            loss = loss_fn(net(b["image"].as_tensor()), b["label"].as_tensor())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {ep + 1} loss {total / len(loader):.4f} t={time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    net.eval()
    rep = SegmentationReport(10, include_background=False)
    with torch.no_grad():
        for it in test_ds:
            pred = net(it["image"].as_tensor()[None]).argmax(1, keepdim=True)
            rep.update(pred, it["label"].as_tensor()[None].long())
    r = rep.aggregate()
    layers = {k: round(v, 3) for k, v in r["dice_per_layer"].items()}
    print("RESULT", json.dumps({"args": vars(a), "dice_mean": round(r["dice_mean"], 4),
                                "dice_mean_without_fluid": round(float(np.mean(list(layers.values())[:-1])), 4),
                                "train_s": round(train_s), "dice_per_layer": layers}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
