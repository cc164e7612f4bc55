"""Model-zoo readiness checks for the bundles under ``bundles/``, all offline.

For every bundle: metadata validated against the schema we ship (``schemas/meta_schema.json``) through
``monai.bundle.verify_metadata``; the changelog holds the version; the required files exist and
``docs/README.md`` has the model zoo's sections; ``verify_net_in_out`` passes for ``network_def``; the
network exports to TorchScript through ``monai.bundle.ckpt_export`` (or the README says why not);
``ConfigWorkflow(...).check_properties()`` passes for the train and inference configs. For the collection:
the top-level ``metadata.json`` lists every bundle with its version and path, and no committed file is
larger than 25 MB. ``scripts/verify_bundles.py`` is the command line.
"""
from __future__ import annotations

import contextlib
import io as _pyio
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["BundleCheck", "verify_bundle", "verify_collection", "README_SECTIONS", "REQUIRED_FILES"]

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "meta_schema.json"
MAX_FILE_MB = 25
REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/logging.conf",
    "configs/inference.json",
    "docs/README.md",
    "LICENSE",
    "large_files.yml",
)
#: Section titles (lower case, substring match on Markdown headings) the model zoo's READMEs use.
README_SECTIONS = ("overview", "data", "configuration", "input and output", "performance", "commands",
                   "references", "licen")


@dataclass
class BundleCheck:
    bundle: str
    results: dict[str, str] = field(default_factory=dict)  # check -> "ok" | "skipped: why" | "FAILED: why"

    @property
    def ok(self) -> bool:
        return not any(v.startswith("FAILED") for v in self.results.values())


def _quiet(fn, *args, **kwargs):
    """Run a monai.bundle script without its long argument dumps; errors propagate."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(_pyio.StringIO()):
            return fn(*args, **kwargs)
    finally:
        logging.disable(logging.NOTSET)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _readme_sections(readme: Path) -> list[str]:
    heads = [ln.lstrip("#").strip().lower() for ln in readme.read_text().splitlines() if ln.startswith("#")]
    return [s for s in README_SECTIONS if not any(s in h for h in heads)]


def _config_files(bundle: Path, name: str) -> list[str]:
    cfg = bundle / "configs" / name
    return [str(cfg)] if cfg.exists() else []


#: fewest slices of a volume in :func:`tiny_cohort`
TINY_COHORT_MIN_DEPTH = 8


def tiny_cohort(folder) -> str:
    """A tiny synthetic cohort (6 cases) to resolve config properties against; returns its folder."""
    from oct_foundation.data.synthetic import generate_cohort

    folder = os.path.join(str(folder), "cohort")
    if not os.path.exists(os.path.join(folder, "datalist.json")):
        generate_cohort(folder, cases=6, seed=0, size="tiny", progress=False)
    return folder


def verify_bundle(bundle: Path, export: bool = True, dataset_dir: str | None = None,
                  min_depth: int | None = None) -> BundleCheck:
    """Run every check on one bundle folder; never raises for a failed check, records it instead.

    ``dataset_dir``: a cohort to resolve the configs against (default: a tiny synthetic one made here).
    ``min_depth``: fewest slices of its volumes; a training config's ``d_target`` is lowered to it so that
    the preflight does not refuse the cohort (default: that of the tiny cohort when none is given).
    """
    if dataset_dir is None:
        min_depth = TINY_COHORT_MIN_DEPTH
    from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

    bundle = Path(bundle)
    chk = BundleCheck(bundle.name)
    missing = [f for f in REQUIRED_FILES if not (bundle / f).exists()]
    chk.results["files"] = "ok" if not missing else f"FAILED: missing {missing}"
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.exists():
        return chk
    meta = json.loads(meta_file.read_text())

    try:
        _quiet(verify_metadata, meta_file=str(meta_file), filepath=str(SCHEMA))
        problems = []
        if meta.get("version") not in meta.get("changelog", {}):
            problems.append(f"changelog has no entry for version {meta.get('version')}")
        import monai

        if meta.get("monai_version") != monai.__version__:
            problems.append(f"monai_version {meta.get('monai_version')} != installed {monai.__version__}")
        if meta.get("pytorch_version") != torch.__version__.split("+")[0]:
            problems.append(f"pytorch_version {meta.get('pytorch_version')} != installed {torch.__version__}")
        chk.results["metadata"] = "ok" if not problems else "FAILED: " + "; ".join(problems)
    except Exception as e:  # a failed check is recorded, the others still run
        chk.results["metadata"] = f"FAILED: {_one_line(e)}"

    readme = bundle / "docs" / "README.md"
    if readme.exists():
        gaps = _readme_sections(readme)
        chk.results["readme"] = "ok" if not gaps else f"FAILED: no section for {gaps}"

    infer_cfg = _config_files(bundle, "inference.json")
    train_cfg = _config_files(bundle, "train.json")
    net_cfg = infer_cfg or train_cfg
    with tempfile.TemporaryDirectory() as tmp:
        # Properties are resolved, so the configs need a real dataset: a tiny synthetic cohort.
        data_dir = dataset_dir or tiny_cohort(tmp)
        overrides = {"bundle_root": str(bundle), "dataset_dir": data_dir, "output_dir": os.path.join(tmp, "out")}
        try:
            _quiet(verify_net_in_out, net_id="network_def", meta_file=str(meta_file), config_file=net_cfg,
                   device="cpu", n=1, p=1, any=1, **overrides)
            chk.results["net_in_out"] = "ok"
        except Exception as e:
            chk.results["net_in_out"] = f"FAILED: {_one_line(e)}"

        if export:
            chk.results["torchscript"] = _export(bundle, meta, meta_file, net_cfg, tmp, overrides, ckpt_export)

        for cfg, wtype in ((train_cfg, "train"), (infer_cfg, "infer")):
            if not cfg:
                continue
            cfg_overrides = dict(overrides)
            if min_depth and any("d_target" in json.loads(Path(c).read_text()) for c in cfg):
                # a training crop deeper than the cohort's volumes is refused by the preflight
                cfg_overrides["d_target"] = min_depth
            try:
                # The bundle's own `initialize` (weight loading, output folders) is not run: only the
                # properties are resolved, as the model zoo's checks do.
                wf = _quiet(ConfigWorkflow, config_file=cfg, meta_file=str(meta_file), workflow_type=wtype,
                            logging_file=str(bundle / "configs" / "logging.conf"), init_id="_no_initialize_",
                            **cfg_overrides)
                _quiet(wf.initialize)
                absent = wf.check_properties()
                chk.results[f"properties_{wtype}"] = "ok" if not absent else f"FAILED: missing {absent}"
            except Exception as e:
                chk.results[f"properties_{wtype}"] = f"FAILED: {_one_line(e)}"
    return chk


def _export(bundle, meta, meta_file, net_cfg, tmp, overrides, ckpt_export) -> str:
    """Export ``network_def`` (random weights) to TorchScript by tracing at the metadata's input shape."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(net_cfg)
    parser.read_meta(str(meta_file))
    for k, v in overrides.items():
        parser[k] = v
    try:
        fmt = meta["network_data_format"]["inputs"]["image"]
        shape = [int(eval(str(s), {"n": 1, "p": 1, "any": 1})) for s in fmt["spatial_shape"]]
        net = parser.get_parsed_content("network_def")
        ckpt = os.path.join(tmp, "model.pt")
        torch.save(net.state_dict(), ckpt)
        ts = os.path.join(tmp, "model.ts")
        _quiet(ckpt_export, net_id="network_def", filepath=ts, ckpt_file=ckpt, meta_file=str(meta_file),
               config_file=net_cfg, use_trace=True, input_shape=[1, int(fmt["num_channels"]), *shape], **overrides)
        x = torch.rand(1, int(fmt["num_channels"]), *shape)
        loaded = torch.jit.load(ts)
        with torch.no_grad():
            net.eval()
            ref, out = net(x), loaded(x)
        if not torch.allclose(ref, out, atol=1e-4, rtol=1e-4):
            return "FAILED: TorchScript output differs from the network's"
        return "ok"
    except Exception as e:
        readme = (bundle / "docs" / "README.md")
        if readme.exists() and "torchscript" in readme.read_text().lower() and "not supported" in readme.read_text().lower():
            return f"skipped: documented in docs/README.md ({_one_line(e)})"
        return f"FAILED: {_one_line(e)}"


def verify_collection(root: Path = ROOT) -> BundleCheck:
    """Checks of the whole collection: top-level metadata.json and committed file sizes."""
    chk = BundleCheck("(collection)")
    top = json.loads((root / "metadata.json").read_text())
    bundles = sorted(p.name for p in (root / "bundles").iterdir() if (p / "configs" / "metadata.json").exists())
    listed = {b["name"]: b for b in top.get("bundles", [])}
    problems = [f"{b} not listed" for b in bundles if b not in listed]
    for name, entry in listed.items():
        meta_path = root / entry.get("path", "") / "configs" / "metadata.json"
        if not meta_path.exists():
            problems.append(f"{name}: path {entry.get('path')} has no configs/metadata.json")
            continue
        if json.loads(meta_path.read_text()).get("version") != entry.get("version"):
            problems.append(f"{name}: version differs from its configs/metadata.json")
    chk.results["metadata.json"] = "ok" if not problems else "FAILED: " + "; ".join(problems)
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        big = [f for f in files.decode().split("\0") if f and (root / f).exists()
               and (root / f).stat().st_size > MAX_FILE_MB * 2**20]
        chk.results["file_sizes"] = "ok" if not big else f"FAILED: over {MAX_FILE_MB} MB: {big}"
    except (OSError, subprocess.CalledProcessError) as e:
        chk.results["file_sizes"] = f"skipped: not a git checkout ({_one_line(e)})"
    return chk


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Verify every bundle for the MONAI model zoo, offline.")
    ap.add_argument("bundles", nargs="*", help="bundle names (default: all under bundles/)")
    ap.add_argument("--no-export", action="store_true", help="skip the TorchScript export check")
    args = ap.parse_args(argv)
    names = args.bundles or sorted(p.name for p in (ROOT / "bundles").iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        cohort = tiny_cohort(tmp)
        checks = [verify_bundle(ROOT / "bundles" / n, export=not args.no_export, dataset_dir=cohort,
                                min_depth=TINY_COHORT_MIN_DEPTH) for n in names]
    checks.append(verify_collection(ROOT))
    width = max(len(c.bundle) for c in checks)
    for c in checks:
        for k, v in c.results.items():
            print(f"{c.bundle:<{width}}  {k:<16} {v}")
    failed = [c.bundle for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0
