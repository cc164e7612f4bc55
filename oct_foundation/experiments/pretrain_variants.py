"""Pretraining variants on the CPU: which V-JEPA settings keep the representation from collapsing, and do they
beat a random-init encoder of the same shape?

One call of :func:`run_variant` pretrains a ``VJEPA3D`` on an unlabelled synthetic cohort with the package's
``JEPATrainer`` (V-JEPA's mask pair, warm-up + cosine LR, weight-decay and EMA schedules, as the pretraining
bundle uses them) under the settings of one variant, then scores the target and the context encoder on a
separate labelled probe cohort:

* collapse: effective rank (participation ratio and RankMe, :func:`oct_foundation.metrics.effective_rank`) of
  the tokens of 20 held-out volumes and of the mean-pooled features of every held-out volume, and the smallest
  per-dimension standard deviation of the pooled features over the held-out volumes;
* content: the standardised logistic-regression probe (:func:`oct_foundation.metrics.linear_probe`) fitted on
  the probe cohort's training split and scored on its validation + test volumes (one-vs-rest macro AUROC,
  accuracy), and kNN top-1 (:func:`oct_foundation.metrics.knn_top1`, k = 20), on mean-pooled tokens.

``random`` variants score random-init encoders (seeds of ``random_seeds``) with the same numbers. Each finished
variant is one JSON file under ``out/variants/`` (a rerun skips it) and one row of ``out/variants.md``.

    python -m oct_foundation.experiments.pretrain_variants --out DIR --name dense --set dense_loss=true
    python -m oct_foundation.experiments.pretrain_variants --out DIR --name random --random
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from oct_foundation import io

__all__ = ["VariantSettings", "PRESETS", "pretrain_variant", "score_encoder", "run_variant", "build_augmentation",
           "main"]

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("flip", "crop", "intensity")


@dataclasses.dataclass
class VariantSettings:
    """Data, network and pretraining settings of one variant (defaults: the demo's encoder and pretraining)."""

    unlabelled_cases: int = 240
    probe_cases: int = 276
    probe_split: Sequence[float] = (0.39, 0.3, 0.31)  # 108 probe-training, 168 held-out volumes of 276
    lesion_scale: float = 1.0
    size: str = "small"
    unlabelled_seed: int = 2
    probe_seed: int = 3
    image_size: int = 64
    d_target: int = 16
    d_full: int = 32
    patch_size: int = 16
    tubelet_size: int = 2
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    predictor_embed_dim: int = 64
    predictor_depth: int = 2
    predictor_num_heads: int = 4
    dense_loss: bool = False
    temporal_scale: Sequence[float] = (1.0, 1.0)  # (min, max) fraction of the slices one mask block covers
    epochs: int = 5
    batch_size: int = 4
    learning_rate: float = 5e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema_start: float = 0.99
    ema_end: float = 1.0
    augment: str = ""  # comma-separated subset of AUGMENTATIONS
    eval_depth: str = "full"  # "full": every slice; "subsampled": d_target slices (uniform, centred) as pretrained
    seed: int = 0
    random_seeds: Sequence[int] = (0, 1)

    def network_kwargs(self) -> dict[str, Any]:
        return dict(in_chans=1, img_size=(self.d_target, self.image_size, self.image_size),
                    patch_size=self.patch_size, tubelet_size=self.tubelet_size, embed_dim=self.embed_dim,
                    depth=self.depth, num_heads=self.num_heads, predictor_embed_dim=self.predictor_embed_dim,
                    predictor_depth=self.predictor_depth, predictor_num_heads=self.predictor_num_heads,
                    dense_loss=self.dense_loss)


PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    # seconds, for tests: tiny volumes and network, few cases
    "smoke": dict(unlabelled_cases=8, probe_cases=24, probe_split=(0.5, 0.25, 0.25), size="tiny", image_size=32,
                  d_target=8, d_full=12, patch_size=8, embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=32,
                  predictor_depth=1, predictor_num_heads=2, epochs=1, batch_size=2, random_seeds=(0,)),
}


def _parse_value(field: dataclasses.Field, text: str):
    from oct_foundation.config import parse_bool

    default = field.default
    if isinstance(default, bool):
        return parse_bool(text, field.name)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, tuple):
        return tuple(type(default[0])(v) for v in text.split(","))
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> typed overrides of :class:`VariantSettings` (unknown keys are an error)."""
    fields = {f.name: f for f in dataclasses.fields(VariantSettings)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key not in fields:
            raise ValueError(f"--set {item!r}: unknown setting {key!r}; one of {sorted(fields)}")
        out[key] = _parse_value(fields[key], value)
    return out


def build_augmentation(augment: str, image_size: int, keys: Sequence[str] = ("image",)) -> list:
    """MONAI dictionary transforms for ``augment`` (comma-separated subset of ``flip``, ``crop``, ``intensity``)
    on volumes ``[C, D, H, W]`` with in-plane size ``image_size``:

    ``flip``: lateral (W) and slice-order (D) flips, each with probability 0.5; ``crop``: V-JEPA's random resized
    crop in the B-scan plane (60-100 % of the axial and of the lateral extent, resized back), which moves the
    retina axially so that a token's position no longer tells which layers it holds; ``intensity``: random
    contrast (gamma 0.7-1.5) and intensity scaling (+-20 %).
    """
    from monai.transforms import RandAdjustContrastd, RandFlipd, RandScaleCropd, RandScaleIntensityd, Resized

    names = [a.strip() for a in augment.split(",") if a.strip()]
    bad = [a for a in names if a not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"augment: unknown augmentation(s) {bad}; choose from {list(AUGMENTATIONS)}")
    keys = list(keys)
    out: list = []
    if "crop" in names:
        out += [RandScaleCropd(keys, roi_scale=(1.0, 0.6, 0.6), max_roi_scale=(1.0, 1.0, 1.0), random_size=True),
                Resized(keys, spatial_size=(-1, image_size, image_size), mode="area")]
    if "flip" in names:
        out += [RandFlipd(keys, prob=0.5, spatial_axis=2), RandFlipd(keys, prob=0.5, spatial_axis=0)]
    if "intensity" in names:
        out += [RandAdjustContrastd(keys, prob=1.0, gamma=(0.7, 1.5)), RandScaleIntensityd(keys, factors=0.2, prob=1.0)]
    return out


def pretrain_variant(volumes, settings: VariantSettings):
    """One V-JEPA pretraining run on ``volumes`` (``[1, D, H, W]`` tensors); returns ``(network, epoch losses)``."""
    from ignite.engine import Events
    from monai.data import Dataset
    from monai.transforms import Compose

    from oct_foundation.data import DepthSubsampled
    from oct_foundation.engines import (JEPATrainer, MomentumSchedule, WarmupCosineLR, WeightDecaySchedule,
                                        build_param_groups, mask_generator_for_depth)
    from oct_foundation.networks import VJEPA3D, default_mask_generators

    torch.manual_seed(settings.seed)
    transform = Compose([DepthSubsampled(keys="image", d_target=settings.d_target, strategy="uniform"),
                         *build_augmentation(settings.augment, settings.image_size)])
    transform.set_random_state(settings.seed)
    dataset = Dataset([{"image": x} for x in volumes], transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True)
    net = VJEPA3D(**settings.network_kwargs())
    masks = mask_generator_for_depth(default_mask_generators(tuple(settings.temporal_scale)), settings.d_full, settings.d_target, True)
    total = settings.epochs * len(loader)
    lr = settings.learning_rate
    opt = torch.optim.AdamW(build_param_groups(net, lr, settings.weight_decay), lr=lr)
    trainer = JEPATrainer("cpu", settings.epochs, loader, net, opt, masks,
                          MomentumSchedule(total, settings.ema_start, settings.ema_end),
                          WarmupCosineLR(opt, max(1, int(total * settings.warmup_fraction)), total, 0.32, 0.0016),
                          WeightDecaySchedule(opt, total, settings.weight_decay, settings.final_weight_decay),
                          clip_grad=10.0, mask_seed=settings.seed)
    losses: list[float] = []
    epoch_losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))

    def _epoch(engine):
        epoch_losses.append(float(np.mean(losses[-len(loader):])))
        logger.info("  epoch %d/%d, loss %.4f", engine.state.epoch, settings.epochs, epoch_losses[-1])

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _epoch)
    trainer.run()
    return net.eval(), epoch_losses


@torch.no_grad()
def _tokens(encoder, volumes) -> list[torch.Tensor]:
    encoder.eval()
    return [encoder(x[None])[0].float() for x in volumes]


def score_encoder(encoder, x_tr, y_tr, x_te, y_te) -> dict[str, Any]:
    """Collapse and content numbers of one encoder (see the module docstring)."""
    from oct_foundation.metrics import classification_metrics, effective_rank, knn_top1, linear_probe

    tok_tr, tok_te = _tokens(encoder, x_tr), _tokens(encoder, x_te)
    f_tr = torch.stack([t.mean(0) for t in tok_tr]).numpy()
    f_te = torch.stack([t.mean(0) for t in tok_te]).numpy()
    tokens = torch.cat(tok_te[:20])
    res = linear_probe(f_tr, y_tr, f_te, y_te)
    pooled = classification_metrics(np.asarray(y_te), res["probabilities"], num_classes=3)["pooled"]
    return {
        "token_rank": effective_rank(tokens), "token_rankme": effective_rank(tokens, "rankme"),
        "pooled_rank": effective_rank(f_te), "pooled_rankme": effective_rank(f_te, "rankme"),
        "pooled_min_std": float(f_te.std(0).min()), "token_min_std": float(tokens.std(0).min()),
        "auroc": float(pooled["auroc"]), "accuracy": float(pooled["accuracy"]),
        "knn20": knn_top1(f_tr, y_tr, f_te, y_te, k=20),
        "probabilities": np.asarray(res["probabilities"]).tolist(),
    }


def _data(out: str, settings: VariantSettings):
    from oct_foundation.experiments.scientific_check import _cohort, _volumes

    tag = f"scale_{settings.lesion_scale:g}_{settings.size}"
    root = io.join(out, "cohorts", tag)
    unl = _cohort(io.join(root, f"unlabelled_{settings.unlabelled_cases}"), settings.unlabelled_cases,
                  settings.unlabelled_seed, settings.size, settings.lesion_scale, (0.6, 0.2, 0.2))
    lab = _cohort(io.join(root, f"probe_{settings.probe_cases}"), settings.probe_cases, settings.probe_seed,
                  settings.size, settings.lesion_scale, settings.probe_split)
    s = settings.image_size
    x_unl, _ = _volumes(unl, ("training", "validation", "test"), s,
                        io.join(root, f"unlabelled_{settings.unlabelled_cases}", f"volumes_{s}.pt"))
    x_tr, y_tr = _volumes(lab, ("training",), s, io.join(root, f"probe_{settings.probe_cases}", f"train_{s}.pt"))
    x_te, y_te = _volumes(lab, ("validation", "test"), s,
                          io.join(root, f"probe_{settings.probe_cases}", f"heldout_{s}.pt"))
    return x_unl, x_tr, y_tr, x_te, y_te


def run_variant(out: str, name: str, settings: VariantSettings, random_init: bool = False) -> dict[str, Any]:
    """Pretrain and score one variant (or score random-init encoders); stores ``out/variants/<name>.json``."""
    path = io.join(out, "variants", f"{name}.json")
    if io.exists(path):
        return io.load_json(path)
    from oct_foundation.networks import VJEPA3D

    x_unl, x_tr, y_tr, x_te, y_te = _data(out, settings)
    if settings.eval_depth not in ("full", "subsampled"):
        raise ValueError(f"eval_depth must be 'full' or 'subsampled', got {settings.eval_depth!r}")
    if settings.eval_depth == "subsampled":
        from oct_foundation.data import DepthSubsampled

        sub = DepthSubsampled(keys="image", d_target=settings.d_target, strategy="uniform", random_phase=False,
                              centred=True)
        x_tr, x_te = ([sub({"image": x})["image"] for x in xs] for xs in (x_tr, x_te))
    rec: dict[str, Any] = {"name": name, "settings": dataclasses.asdict(settings), "random_init": bool(random_init),
                           "n_unlabelled": len(x_unl), "n_probe_train": len(x_tr), "n_heldout": len(x_te),
                           "heldout_labels": [int(v) for v in y_te]}
    t0 = time.time()
    if random_init:
        for s in settings.random_seeds:
            torch.manual_seed(s)
            rec[f"random_{s}"] = score_encoder(VJEPA3D(**settings.network_kwargs()).target_encoder,
                                               x_tr, y_tr, x_te, y_te)
    else:
        net, losses = pretrain_variant(x_unl, settings)
        rec["epoch_losses"] = losses
        rec["pretrain_s"] = time.time() - t0
        io.torch_save(net.state_dict(), io.join(out, "variants", f"{name}.pt"))
        rec["target"] = score_encoder(net.target_encoder, x_tr, y_tr, x_te, y_te)
        rec["context"] = score_encoder(net.encoder, x_tr, y_tr, x_te, y_te)
    io.save_json(rec, path)
    with open(io.join(out, "variants.md"), "a") as f:  # local output folder: a run log, one row per encoder
        for enc in _encoders(rec):
            f.write(_row(name, enc, rec) + "\n")
    return rec


def _encoders(rec: dict[str, Any]) -> list[str]:
    return [k for k, v in rec.items() if isinstance(v, dict) and "auroc" in v]


def _row(name: str, enc: str, rec: dict[str, Any]) -> str:
    r = rec[enc]
    loss = f"{rec['epoch_losses'][-1]:.3f}" if "epoch_losses" in rec else "-"
    return (f"| {name} | {enc} | {loss} | {r['token_rank']:.1f} / {r['token_rankme']:.1f} | "
            f"{r['pooled_rank']:.1f} / {r['pooled_rankme']:.1f} | {r['pooled_min_std']:.4f} | {r['auroc']:.3f} | "
            f"{r['accuracy']:.3f} | {r['knn20']:.3f} |")


def compare(out: str, a: str, b: str, n_resamples: int = 2000) -> dict[str, Any]:
    """Paired, class-stratified bootstrap of ``a`` minus ``b`` over the held-out volumes (AUROC, accuracy);
    ``a`` / ``b`` are ``variant:encoder`` (e.g. ``dense:target``, ``random:random_0``) of finished variants."""
    from oct_foundation.metrics.comparison import compare_classifiers

    recs = []
    for spec in (a, b):
        name, sep, enc = spec.partition(":")
        path = io.join(out, "variants", f"{name}.json")
        if not sep or not io.exists(path):
            raise ValueError(f"--compare {spec!r}: expected variant:encoder of a finished variant ({path})")
        rec = io.load_json(path)
        if enc not in rec or "probabilities" not in rec[enc]:
            raise ValueError(f"--compare {spec!r}: {path} has no encoder {enc!r} with probabilities")
        recs.append(rec)
    if recs[0]["heldout_labels"] != recs[1]["heldout_labels"]:
        raise ValueError(f"--compare {a} {b}: the two variants were scored on different held-out volumes")
    res = compare_classifiers(np.asarray(recs[0]["heldout_labels"]), recs[0][a.partition(":")[2]]["probabilities"],
                              recs[1][b.partition(":")[2]]["probabilities"], metrics=("auroc", "accuracy"),
                              n_resamples=n_resamples)
    return {m: {k: v for k, v in r.items() if k in ("estimate", "ci_low", "ci_high")} for m, r in res.items()}


def cka_to_init(out: str, name: str) -> dict[str, float]:
    """Linear CKA (:func:`oct_foundation.metrics.linear_cka`) between the mean-pooled held-out features of a
    finished variant's target / context encoder and those of its own initial weights (the random-init encoder
    of its seed): 1 = training left the representation where it started."""
    from oct_foundation.metrics import linear_cka
    from oct_foundation.networks import VJEPA3D

    path = io.join(out, "variants", f"{name}.json")
    if not io.exists(path) or not io.exists(io.join(out, "variants", f"{name}.pt")):
        raise ValueError(f"--cka {name!r}: no finished pretrained variant with a saved network under {out}/variants")
    rec = io.load_json(path)
    fields = {f.name for f in dataclasses.fields(VariantSettings)}
    settings = VariantSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in rec["settings"].items()
                                  if k in fields})
    _, _, _, x_te, _ = _data(out, settings)
    torch.manual_seed(settings.seed)
    init = VJEPA3D(**settings.network_kwargs()).encoder
    net = VJEPA3D(**settings.network_kwargs())
    net.load_state_dict(io.torch_load(io.join(out, "variants", f"{name}.pt")))
    f0 = torch.stack([t.mean(0) for t in _tokens(init, x_te)])
    return {enc: linear_cka(torch.stack([t.mean(0) for t in _tokens(getattr(net, attr), x_te)]), f0)
            for enc, attr in (("target", "target_encoder"), ("context", "encoder"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oct_foundation.experiments.pretrain_variants",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (cohorts are cached there; finished variants "
                                                     "are skipped)")
    parser.add_argument("--name", help="variant name (file name of its result)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="paired bootstrap of A minus B (variant:encoder of finished variants); no training")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a VariantSettings field, e.g. dense_loss=true, augment=crop,flip, ema_start=0.996")
    parser.add_argument("--cka", metavar="NAME", help="linear CKA of a finished variant's encoders to their initial "
                                                       "weights (pooled held-out features); no training")
    parser.add_argument("--random", action="store_true", help="score random-init encoders instead of pretraining")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.compare:
        try:
            res = compare(args.out, *args.compare)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for m, r in res.items():
            print(f"{args.compare[0]} minus {args.compare[1]}: {m} {r['estimate']:+.3f} "
                  f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        return 0
    if args.cka:
        try:
            res = cka_to_init(args.out, args.cka)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.cka}: linear CKA to the initial encoder: target {res['target']:.3f}, context {res['context']:.3f}")
        return 0
    if not args.name:
        parser.error("--name is required (unless --compare)")
    try:
        settings = VariantSettings(**{**PRESETS[args.preset], **parse_overrides(args.overrides)})
        build_augmentation(settings.augment, settings.image_size)  # refuse a bad name before any work
        rec = run_variant(args.out, args.name, settings, random_init=args.random)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| variant | encoder | final loss | token rank PR / RankMe | pooled rank PR / RankMe | pooled min std | "
          "AUROC | accuracy | kNN-20 |")
    for enc in _encoders(rec):
        print(_row(args.name, enc, rec))
    slim = {k: ({kk: vv for kk, vv in v.items() if kk != "probabilities"} if isinstance(v, dict) else v)
            for k, v in rec.items() if k not in ("settings", "heldout_labels")}
    print(json.dumps(slim, default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
