"""The scientific check, reproducible in minutes on a CPU: does V-JEPA pretraining beat a random-init encoder?

For each lesion scale of the synthetic generator (1 = the default focal lesions; larger = spatially extended
disease), the check

1. writes two cohorts: an unlabelled pretraining cohort and a separate labelled probe cohort (its training split
   fits the probes, its validation + test splits are the held-out set);
2. pretrains one ``VJEPA3D`` per pretraining seed on the unlabelled cohort with the package's ``JEPATrainer``,
   V-JEPA's mask pair, warm-up + cosine LR, weight-decay and EMA schedules;
3. embeds every probe volume at full depth with each pretrained encoder and with random-init encoders of the same
   shape (several seeds), pools the tokens (mean and max, concatenated), fits the same standardised logistic
   regression on each and scores the held-out volumes;
4. compares every pretrained encoder with every random seed by a paired, class-stratified bootstrap over the
   held-out volumes (:mod:`oct_foundation.metrics.comparison`), and records the token effective rank of each
   encoder (collapse).

Everything runs in one process on cached tensors (the bundles' NIfTI loading would dominate the time); the
components are the ones the bundles use. Outputs under ``out``: ``cohorts/``, ``scale_<s>/`` (models, one JSON
per finished unit, so a rerun skips them), ``results.json`` and ``results.md``.

    python scripts/scientific_check.py --out scientific_check          # full preset, about 10-20 min on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from oct_foundation import io

__all__ = ["CheckSettings", "PRESETS", "run_check", "write_report", "main"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CheckSettings:
    """Sizes and hyper-parameters of the check (defaults: the ``full`` preset)."""

    lesion_scales: Sequence[float] = (1.0, 2.5)
    unlabelled_cases: int = 480
    probe_cases: int = 276
    probe_split: Sequence[float] = (0.39, 0.3, 0.31)  # 108 probe-training, 168 held-out volumes of 276
    size: str = "small"
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
    epochs: int = 5
    batch_size: int = 4
    learning_rate: float = 5e-4
    ema_start: float = 0.99
    pretrain_seeds: Sequence[int] = (0, 1)
    random_seeds: Sequence[int] = (0, 1, 2)
    n_resamples: int = 2000
    unlabelled_seed: int = 2
    probe_seed: int = 3

    def network_kwargs(self) -> dict[str, Any]:
        return dict(in_chans=1, img_size=(self.d_target, self.image_size, self.image_size),
                    patch_size=self.patch_size, tubelet_size=self.tubelet_size, embed_dim=self.embed_dim,
                    depth=self.depth, num_heads=self.num_heads, predictor_embed_dim=self.predictor_embed_dim,
                    predictor_depth=self.predictor_depth, predictor_num_heads=self.predictor_num_heads)


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    # seconds, for tests: tiny volumes and network, few cases, one seed each
    "smoke": dict(unlabelled_cases=12, probe_cases=24, probe_split=(0.5, 0.25, 0.25), size="tiny", image_size=32,
                  d_target=8, d_full=12, patch_size=8, embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=32,
                  predictor_depth=1, predictor_num_heads=2, epochs=1, batch_size=2, pretrain_seeds=(0,),
                  random_seeds=(0, 1), n_resamples=100),
}


# ------------------------------------------------------------------------------------------------- data
def _cohort(out: str, cases: int, seed: int, size: str, lesion_scale: float, split) -> str:
    from oct_foundation.data.synthetic import generate_cohort

    datalist = io.join(out, "datalist.json")
    if not io.exists(datalist):  # the datalist is written last: its presence means a complete cohort
        generate_cohort(out, cases=cases, seed=seed, size=size, split=split, lesion_scale=lesion_scale,
                        overwrite=True, progress=False)
    return datalist


def _volumes(datalist: str, splits: Sequence[str], image_size: int, cache: str):
    """Preprocessed volumes ``[1, D, H, W]`` (even D) and class labels of ``splits``, cached as one file."""
    if io.exists(cache):
        data = io.torch_load(cache)
        return data["x"], data["y"]
    from monai.transforms import Compose

    from oct_foundation.data import build_preprocessing, load_datalist

    pre = Compose(build_preprocessing(keys=("image",), image_size=[image_size, image_size], train=False))
    xs, ys = [], []
    for split in splits:
        for item in load_datalist(datalist, split):
            x = pre(dict(item))["image"].as_tensor()
            xs.append(x[:, : x.shape[1] // 2 * 2].clone())
            ys.append(int(item["class"]))
    io.torch_save({"x": xs, "y": ys}, cache)
    return xs, ys


# ------------------------------------------------------------------------------------------------- steps
#: optimisation settings the check takes from the pretrain bundle's ``configs/train.json`` (so the two never drift)
RECIPE_KEYS = ("weight_decay", "final_weight_decay", "start_lr_factor", "final_lr_factor", "clip_grad", "ema_end",
               "ema_mode")


def bundle_recipe() -> dict[str, Any]:
    """The pretrain bundle's values of :data:`RECIPE_KEYS` (its ``configs/train.json`` defaults)."""
    from oct_foundation.experiments.runner import PRETRAIN_BUNDLE
    from oct_foundation.experiments.units import _bundle_default

    recipe = {k: _bundle_default(PRETRAIN_BUNDLE, k) for k in RECIPE_KEYS}
    missing = [k for k, v in recipe.items() if v is None]
    if missing:
        raise KeyError(f"{PRETRAIN_BUNDLE}/configs/train.json has no {missing}")
    return recipe


def pretrain(volumes, settings: CheckSettings, seed: int):
    """One V-JEPA pretraining run on ``volumes``; returns ``(network, per-epoch mean losses)``."""
    from ignite.engine import Events

    from oct_foundation.engines import (JEPATrainer, MomentumSchedule, WarmupCosineLR, WeightDecaySchedule,
                                        build_param_groups, mask_generator_for_depth)
    from oct_foundation.networks import VJEPA3D, default_mask_generators

    from monai.data import Dataset

    from oct_foundation.data import DepthSubsampled

    torch.manual_seed(seed)
    subsample = DepthSubsampled(keys="image", d_target=settings.d_target, strategy="uniform")
    subsample.set_random_state(seed)
    dataset = Dataset([{"image": x} for x in volumes], transform=subsample)
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True)
    net = VJEPA3D(**settings.network_kwargs())
    masks = mask_generator_for_depth(default_mask_generators(), settings.d_full, settings.d_target, True)
    total = settings.epochs * len(loader)
    r = bundle_recipe()
    opt = torch.optim.AdamW(build_param_groups(net, settings.learning_rate, r["weight_decay"]),
                            lr=settings.learning_rate)
    trainer = JEPATrainer("cpu", settings.epochs, loader, net, opt, masks,
                          MomentumSchedule(total, settings.ema_start, r["ema_end"], r["ema_mode"]),
                          WarmupCosineLR(opt, max(1, total // 10), total, r["start_lr_factor"], r["final_lr_factor"]),
                          WeightDecaySchedule(opt, total, r["weight_decay"], r["final_weight_decay"]),
                          clip_grad=r["clip_grad"], mask_seed=seed)
    losses: list[float] = []
    epoch_losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))

    def _epoch(engine):
        epoch_losses.append(float(np.mean(losses[-len(loader):])))
        logger.info("  pretraining seed %d: epoch %d/%d, loss %.4f", seed, engine.state.epoch, settings.epochs,
                    epoch_losses[-1])

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _epoch)
    trainer.run()
    return net.eval(), epoch_losses


@torch.no_grad()
def pooled_features(encoder, volumes) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean and max of the tokens (concatenated, ``[N, 2E]``), mean alone (``[N, E]``), and the token
    effective rank (participation ratio) of the first 20 volumes."""
    from oct_foundation.metrics import effective_rank

    encoder.eval()
    tokens = [encoder(x[None])[0] for x in volumes]
    meanmax = torch.stack([torch.cat([t.mean(0), t.max(0).values]) for t in tokens]).numpy()
    mean = torch.stack([t.mean(0) for t in tokens]).numpy()
    return meanmax, mean, effective_rank(torch.cat(tokens[:20]))


def probe(train_features, train_labels, test_features, test_labels) -> dict[str, Any]:
    from oct_foundation.metrics import classification_metrics, linear_probe

    res = linear_probe(train_features, train_labels, test_features, test_labels)
    pooled = classification_metrics(np.asarray(test_labels), res["probabilities"], num_classes=3)["pooled"]
    return {"accuracy": pooled["accuracy"], "macro_f1": pooled["macro_f1"], "auroc": pooled["auroc"],
            "probabilities": np.asarray(res["probabilities"]).tolist()}


# ------------------------------------------------------------------------------------------------- driver
def _unit(path: str, fn):
    """Run ``fn()`` unless ``path`` holds its finished result (JSON), then store it atomically."""
    if io.exists(path):
        return io.load_json(path)
    result = fn()
    io.save_json(result, path)
    return result


def run_scale(out: str, scale: float, settings: CheckSettings) -> dict[str, Any]:
    """Every unit of one lesion scale; returns ``{"encoders": {name: {...}}, "comparisons": [...]}``."""
    from oct_foundation.metrics.comparison import compare_classifiers

    tag = f"scale_{scale:g}"
    root = io.join(out, tag)
    cohorts = io.join(out, "cohorts", tag)
    t0 = time.time()
    logger.info("[%s] cohorts (%d unlabelled, %d probe cases)", tag, settings.unlabelled_cases, settings.probe_cases)
    unl = _cohort(io.join(cohorts, "unlabelled"), settings.unlabelled_cases, settings.unlabelled_seed,
                  settings.size, scale, (0.6, 0.2, 0.2))
    lab = _cohort(io.join(cohorts, "probe"), settings.probe_cases, settings.probe_seed, settings.size, scale,
                  settings.probe_split)
    x_unl, _ = _volumes(unl, ("training", "validation", "test"), settings.image_size,
                        io.join(cohorts, "unlabelled", f"volumes_{settings.image_size}.pt"))
    x_tr, y_tr = _volumes(lab, ("training",), settings.image_size,
                          io.join(cohorts, "probe", f"train_{settings.image_size}.pt"))
    x_te, y_te = _volumes(lab, ("validation", "test"), settings.image_size,
                          io.join(cohorts, "probe", f"heldout_{settings.image_size}.pt"))
    logger.info("[%s] %d unlabelled, %d probe-training, %d held-out volumes (%.0f s)", tag, len(x_unl), len(x_tr),
                len(x_te), time.time() - t0)

    def evaluate(encoder, extra=None):
        fm_tr, m_tr, rank = pooled_features(encoder, x_tr)
        fm_te, m_te, _ = pooled_features(encoder, x_te)
        return {**(extra or {}), "effective_rank": rank, "meanmax": probe(fm_tr, y_tr, fm_te, y_te),
                "mean": probe(m_tr, y_tr, m_te, y_te)}

    from oct_foundation.networks import VJEPA3D

    encoders: dict[str, Any] = {}
    for s in settings.random_seeds:
        def _random(s=s):
            torch.manual_seed(s)
            return evaluate(VJEPA3D(**settings.network_kwargs()).eval().target_encoder, {"kind": "random", "seed": s})

        encoders[f"random_{s}"] = _unit(io.join(root, f"random_{s}.json"), _random)
        logger.info("[%s] random init seed %d: %s", tag, s, _short(encoders[f"random_{s}"]))
    for s in settings.pretrain_seeds:
        def _pretrained(s=s):
            t = time.time()
            net, losses = pretrain(x_unl, settings, s)
            io.torch_save(net.state_dict(), io.join(root, f"pretrained_{s}.pt"))
            info = {"kind": "pretrained", "seed": s, "epoch_losses": losses, "pretrain_s": time.time() - t}
            return {"target": evaluate(net.target_encoder, info), "context": evaluate(net.encoder, info)}

        both = _unit(io.join(root, f"pretrained_{s}.json"), _pretrained)
        for enc in ("target", "context"):
            encoders[f"pretrained_{s}_{enc}"] = both[enc]
            logger.info("[%s] pretrained seed %d, %s encoder: %s", tag, s, enc, _short(both[enc]))

    comparisons = []
    y = np.asarray(y_te)
    for name, rec in encoders.items():
        if rec["kind"] != "pretrained":
            continue
        for rname, rrec in encoders.items():
            if rrec["kind"] != "random":
                continue
            for pool in ("meanmax", "mean"):
                res = compare_classifiers(y, rec[pool]["probabilities"], rrec[pool]["probabilities"],
                                          metrics=("auroc", "accuracy"), n_resamples=settings.n_resamples)
                comparisons.append({"pretrained": name, "random": rname, "pool": pool,
                                    **{m: {k: v for k, v in r.items()} for m, r in res.items()}})
    return {"lesion_scale": scale, "n_heldout": len(x_te), "n_probe_train": len(x_tr), "n_unlabelled": len(x_unl),
            "encoders": encoders, "comparisons": comparisons}


def _short(rec) -> str:
    m = rec["meanmax"]
    return (f"rank {rec['effective_rank']:.1f}, mean+max probe accuracy {m['accuracy']:.3f}, AUROC {m['auroc']:.3f}"
            f" (mean pooling {rec['mean']['accuracy']:.3f} / {rec['mean']['auroc']:.3f})")


def run_check(out: str, settings: CheckSettings | None = None) -> dict[str, Any]:
    """Run (or finish) the check under ``out``; writes ``results.json`` and ``results.md`` and returns the results."""
    settings = settings or CheckSettings()
    io.makedirs(out)
    results = {"settings": dataclasses.asdict(settings),
               "scales": [run_scale(out, float(s), settings) for s in settings.lesion_scales]}
    slim = json.loads(json.dumps(results))
    for sc in slim["scales"]:  # probabilities stay in the per-unit JSON files
        for rec in sc["encoders"].values():
            for pool in ("meanmax", "mean"):
                rec[pool].pop("probabilities", None)
    io.save_json(slim, io.join(out, "results.json"))
    io.atomic_write(io.join(out, "results.md"), write_report(slim).encode())
    return slim


def write_report(results: dict[str, Any]) -> str:
    """Markdown tables: per encoder (rank, probe metrics) and the paired verdicts, per lesion scale."""
    s = results["settings"]
    lines = ["# Scientific check: V-JEPA pretraining vs random init (frozen features, linear probe)", "",
             f"Encoder {s['embed_dim']}/{s['depth']}/{s['num_heads']}, patch {s['patch_size']}, "
             f"{s['epochs']} epochs on the unlabelled cohort, EMA {s['ema_start']} -> 1, LR {s['learning_rate']}; "
             f"pretraining seeds {list(s['pretrain_seeds'])}, random-init seeds {list(s['random_seeds'])}; paired "
             f"class-stratified bootstrap ({s['n_resamples']} resamples, 95 %) over the held-out volumes.", ""]
    for sc in results["scales"]:
        lines += [f"## Lesion scale {sc['lesion_scale']:g}", "",
                  f"{sc['n_unlabelled']} unlabelled pretraining volumes, {sc['n_probe_train']} probe-training and "
                  f"{sc['n_heldout']} held-out volumes.", "",
                  "| encoder | eff. rank | mean+max: accuracy | macro-F1 | AUROC | mean: accuracy | AUROC |",
                  "|---|---|---|---|---|---|---|"]
        for name, rec in sc["encoders"].items():
            mm, me = rec["meanmax"], rec["mean"]
            lines.append(f"| {name} | {rec['effective_rank']:.1f} | {mm['accuracy']:.3f} | {mm['macro_f1']:.3f} | "
                         f"{mm['auroc']:.3f} | {me['accuracy']:.3f} | {me['auroc']:.3f} |")
        lines += ["", "| pretrained | vs random | pooling | AUROC difference [95 % interval] | accuracy difference |"
                  " verdict (AUROC) |", "|---|---|---|---|---|---|"]
        counts: dict[str, list[int]] = {}
        for c in sc["comparisons"]:
            a, acc = c["auroc"], c["accuracy"]
            verdict = "pretrained better" if a["ci_low"] > 0 else "random better" if a["ci_high"] < 0 else "no clear difference"
            key = f"{c['pretrained'].rsplit('_', 1)[1]} encoder, {c['pool']}"
            counts.setdefault(key, [0, 0, 0])
            counts[key][0 if a["ci_low"] > 0 else 2 if a["ci_high"] < 0 else 1] += 1
            lines.append(f"| {c['pretrained']} | {c['random']} | {c['pool']} | {a['estimate']:+.3f} "
                         f"[{a['ci_low']:+.3f}, {a['ci_high']:+.3f}] | {acc['estimate']:+.3f} "
                         f"[{acc['ci_low']:+.3f}, {acc['ci_high']:+.3f}] | {verdict} |")
        lines += [""] + [f"- {k}: pretrained better in {v[0]}, no clear difference in {v[1]}, random better in "
                         f"{v[2]} of {sum(v)} pairs (AUROC)." for k, v in counts.items()] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/scientific_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (reused: finished units are skipped)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--lesion-scales", type=float, nargs="+", help="lesion scales (default 1 2.5)")
    parser.add_argument("--pretrain-seeds", type=int, nargs="+")
    parser.add_argument("--random-seeds", type=int, nargs="+")
    parser.add_argument("--epochs", type=int, help="pretraining epochs over the unlabelled cohort")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = dict(PRESETS[args.preset])
    for key in ("lesion_scales", "pretrain_seeds", "random_seeds", "epochs"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        results = run_check(args.out, CheckSettings(**overrides))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(write_report(results))
    print(f"results: {os.path.join(args.out, 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
