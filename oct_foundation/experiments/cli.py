"""The command-line pieces the experiment drivers share: arguments, ``--set`` overrides, settings, the synthetic
cohort generated on first use."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

from oct_foundation.experiments.runner import NETWORK_KEYS, TASK_BUNDLES, BundleRunner
from oct_foundation.experiments.units import PRESETS, ExperimentSettings

logger = logging.getLogger("oct_foundation.experiments")


# ------------------------------------------------------------------------------------------------ CLI
def ensure_dataset(dataset_dir: str | None, out_dir: str, preset: Mapping[str, Any],
                   printer: Callable[[str], None] = print) -> str:
    """``dataset_dir`` if given, else the preset's synthetic cohort generated once under ``out_dir/cohort``."""
    if dataset_dir:
        return dataset_dir
    cohort = preset.get("cohort")
    if not cohort:
        raise SystemExit("--dataset-dir is required with this preset (it has no synthetic cohort)")
    path = os.path.join(os.path.abspath(out_dir), "cohort")
    if not os.path.isfile(os.path.join(path, "datalist.json")):
        from oct_foundation.data.synthetic import generate_cohort

        printer(f"generating the synthetic cohort ({cohort}) in {path}")
        if os.path.isdir(path):
            shutil.rmtree(path)
        generate_cohort(path, cases=int(cohort["cases"]), seed=int(cohort.get("seed", 0)),
                        size=cohort.get("size", "tiny"), progress=False)
    return path


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values parsed as JSON when possible (``4``, ``[32,32]``, ``true``)."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the ablation and comparison CLIs."""
    p.add_argument("--out", required=True, help="output folder (resumable: finished units are skipped)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                   help="smoke: tiny network on the synthetic cohort (CPU, minutes); full: the plan's settings")
    p.add_argument("--dataset-dir", help="dataset folder with datalist.json (smoke: generated when omitted)")
    p.add_argument("--datalist", help="datalist file (default: <dataset-dir>/datalist.json)")
    p.add_argument("--tasks", nargs="+", default=["classification", "segmentation"],
                   choices=sorted(TASK_BUNDLES), help="downstream evaluations")
    p.add_argument("--eval-split", default="validation", help="datalist split of the full-depth evaluation")
    p.add_argument("--pretrain-epochs", type=int, help="pretraining epochs (overrides the preset)")
    p.add_argument("--downstream-epochs", type=int, help="epochs of each downstream training")
    p.add_argument("--threshold", type=float,
                   help="validation JEPA loss threshold for steps-to-threshold (default: a level every unit reached)")
    p.add_argument("--d-full", type=int, help="nominal full depth for mask rescaling (default: from the data)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override for every bundle (repeatable), e.g. --set device=cpu")
    p.add_argument("--pretrain-set", dest="pretrain_sets", action="append", metavar="KEY=VALUE",
                   help="override for the pretrain bundle only (repeatable)")
    p.add_argument("--classification-set", dest="classification_sets", action="append", metavar="KEY=VALUE",
                   help="override for the classification bundle only (repeatable), e.g. learning_rate=0.01")
    p.add_argument("--segmentation-set", dest="segmentation_sets", action="append", metavar="KEY=VALUE",
                   help="override for the segmentation bundle only (repeatable)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="GPUs per node: > 1 trains through torch.distributed.run with multi_gpu_train.json")
    p.add_argument("--in-process", action="store_true",
                   help="run the bundles in this process instead of one subprocess each (faster, less isolated)")
    p.add_argument("--bundles-dir", help="folder holding the bundles (default: the repository's bundles/)")
    p.add_argument("--timeout", type=float, help="seconds before a bundle run is stopped")


def settings_from_args(args, printer: Callable[[str], None] = print) -> tuple[ExperimentSettings, dict, BundleRunner]:
    preset = PRESETS[args.preset]
    dataset_dir = ensure_dataset(args.dataset_dir, args.out, preset, printer)
    sets = parse_sets(args.sets)
    pre = {**preset["pretrain"], **parse_sets(args.pretrain_sets)}
    cls = {**preset["classification"], **parse_sets(getattr(args, "classification_sets", None))}
    seg = {**preset["segmentation"], **parse_sets(getattr(args, "segmentation_sets", None))}
    net = dict(preset["network"])
    for k in list(sets):
        if k in NETWORK_KEYS:
            net[k] = sets.pop(k)
    if args.pretrain_epochs:
        pre["num_epochs"] = args.pretrain_epochs
    if args.downstream_epochs:
        cls["num_epochs"] = seg["num_epochs"] = args.downstream_epochs
    settings = ExperimentSettings(dataset_dir=dataset_dir, datalist=args.datalist, network=net, pretrain=pre,
                                  classification=cls, segmentation=seg, common=sets, tasks=tuple(args.tasks),
                                  eval_split=args.eval_split, d_full=args.d_full)
    runner = BundleRunner(args.bundles_dir, mode="inprocess" if args.in_process else "subprocess",
                          nproc_per_node=args.nproc_per_node, timeout=args.timeout)
    return settings, preset, runner
