"""One way to put weights into a network: :func:`load_weights`.

Every weight file the package reads goes through the same steps, whatever wrote it:

1. **read** (:func:`read_weights`): a local path or fsspec URL; ``.safetensors`` through safetensors, anything
   else with ``weights_only=True`` (a file holding pickled code is refused); its sha256 is recorded;
2. **find the state dict** (:func:`find_state_dict`): plain dicts wrapping one under a well-known key
   (``state_dict``, ``model``, ``network``, ``autoencoder``, ``unet_state_dict`` ...: Ignite checkpoints, the
   model zoo, NV-Generate) are unwrapped;
3. **strip prefixes** (:func:`strip_prefixes`): ``module.`` (DDP), ``_orig_mod.`` (``torch.compile``),
   ``backbone.`` (V-JEPA's multi-sequence wrapper), ``autoencoder.`` (MAISI);
4. **adapt** per format (``source``):

   ========== ==================================================================================================
   source     what the file is, and what receives it
   ========== ==================================================================================================
   model      the package's own whole-network file (``models/model.pt`` of any bundle) -> the whole network
   model_pt   the pretrain bundle's ``models/model.pt`` (``encoder.*`` / ``target_encoder.*`` of a ``VJEPA3D``,
              or a bare encoder) -> ``network.encoder``
   checkpoint an Ignite training checkpoint (network state under ``checkpoint_key``) -> ``network.encoder``
   vjepa2     V-JEPA 2 / 2.1 / 1 official or Hugging Face files, adapted to one channel, other kernels and grids
              (:func:`oct_foundation.networks.pretrained.load_pretrained`) -> a ``VJEPA3D`` whole, else the
              encoder
   maisi      MAISI autoencoder weights (model zoo ``maisi_ct_generative``, NV-Generate) -> the autoencoder of a
              ``StackedVideoVAE`` (or an autoencoder)
   diffusion  a diffusion U-Net: its ``models/model.pt`` or a zoo-style ``{"unet_state_dict", "scale_factor"}``
   random     nothing is read: the network keeps its initialisation (reported)
   ========== ==================================================================================================

5. **one report** (:class:`LoadReport`: loaded / adapted / missing / unexpected / shape mismatch per key, printed
   as one table) and a **strict load**: every check is made before any tensor is copied, so a file that does not
   fit raises :class:`~oct_foundation.errors.CheckpointError` naming the file and the first differing key, and
   the network is left exactly as it was.

Bundle configs reach it by this one name, e.g. ``"$oct_foundation.networks.weights.load_weights(@network,
@model_path)"`` in their ``initialize`` list.
"""
from __future__ import annotations

import fnmatch
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError

__all__ = [
    "LoadReport",
    "SOURCES",
    "ENCODER_SOURCES",
    "WRAPPER_KEYS",
    "STRIP_PREFIXES",
    "read_weights",
    "find_state_dict",
    "strip_prefixes",
    "strip_key",
    "load_checked",
    "load_weights",
]

#: every ``source`` :func:`load_weights` accepts
SOURCES = ("model", "model_pt", "checkpoint", "vjepa2", "maisi", "diffusion", "random")
#: the sources of a downstream encoder (``--encoder_source`` of the segmentation / classification bundles)
ENCODER_SOURCES = ("random", "model_pt", "checkpoint", "vjepa2")
#: keys under which checkpoints wrap a state dict, tried in this order
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "net", "autoencoder",
                "autoencoder_state_dict", "unet_state_dict")
#: key prefixes written by wrappers rather than by the network: DDP, ``torch.compile``, V-JEPA's multi-sequence
#: wrapper
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_COPIED = "copied from the adapted encoder"
logger = logging.getLogger("oct_foundation.weights")


# ----------------------------------------------------------------------------------------------------- report
@dataclass
class LoadReport:
    """What happened to every weight: loaded as is, adapted (how), missing, unexpected, wrong shape.

    Key names are the receiving module's state-dict names (``encoder.``/``target_encoder.``/``predictor.``
    prefixed for a ``VJEPA3D``); unexpected keys are the file's names. ``str()`` is the printed table.
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    allowed_missing: list[str] = field(default_factory=list)
    allowed_unexpected: list[str] = field(default_factory=list)
    allowed_mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: input normalisation folded into the patch embedding(s): ``{"mean": [...], "std": [...], "keys": [...]}``,
    #: empty when nothing was folded
    folded_normalization: dict = field(default_factory=dict)
    #: sha256 of the file read (None when nothing was read)
    sha256: Optional[str] = None
    #: True when no file was read and the network keeps its initialisation
    random_init: bool = False

    @property
    def problems(self) -> dict[str, list[str]]:
        """Keys outside the allow-lists: ``{"missing": [...], "unexpected": [...], "mismatched": [...]}``."""
        return {
            "missing": [k for k in self.missing if k not in set(self.allowed_missing)],
            "unexpected": [k for k in self.unexpected if k not in set(self.allowed_unexpected)],
            "mismatched": [k for k in self.mismatched if k not in set(self.allowed_mismatched)],
        }

    @property
    def ok(self) -> bool:
        """True when every weight of the file has its place in the network and every place was filled (keys on
        the allow-lists aside)."""
        return not any(self.problems.values())

    def table(self) -> str:
        """One table: status | key(s) | detail. Keys differing only by block index share a row."""
        if self.random_init and not (self.loaded or self.adapted):
            lines = [f"Weights: none loaded ({self.source}); the network keeps its RANDOM initialisation"]
            return "\n".join(lines + [f"  note: {n}" for n in self.notes])
        rows: list[tuple[str, str, str]] = []
        rows += [("loaded", k, d) for k, d in _compact([(k, "as is") for k in self.loaded])]
        copied = [k for k, d in self.adapted.items() if d == _COPIED]
        rows += [("adapted", k, d) for k, d in _compact([(k, d) for k, d in self.adapted.items() if d != _COPIED])]
        if copied:
            rows.append(("adapted", "target_encoder.*", f"{_COPIED} ({len(copied)} tensors)"))
        al = set(self.allowed_mismatched)
        rows += [
            ("MISMATCH", k, d)
            for k, d in _compact([(k, d + ("; kept at init (allowed)" if k in al else "")) for k, d in
                                  self.mismatched.items()])
        ]
        am, au = set(self.allowed_missing), set(self.allowed_unexpected)
        rows += [
            ("missing", k, d)
            for k, d in _compact([(k, "kept at init (allowed)" if k in am else "NOT IN FILE") for k in self.missing])
        ]
        rows += [
            ("unexpected", k, d)
            for k, d in _compact([(k, "ignored (allowed)" if k in au else "NOT IN MODEL") for k in self.unexpected])
        ]
        w0 = max([len("status")] + [len(r[0]) for r in rows])
        w1 = max([len("key")] + [len(r[1]) for r in rows])
        head = (
            f"Weights {self.path} (format: {self.source}"
            + (f", sha256 {self.sha256[:12]}..." if self.sha256 else "")
            + f"): {len(self.loaded)} loaded as is, {len(self.adapted)} adapted, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected"
            + (f", {len(self.mismatched)} shape mismatches" if self.mismatched else "")
        )
        lines = [head]
        lines += [f"  note: {n}" for n in self.notes]
        sep = f"  {'-' * w0}-+-{'-' * w1}-+-{'-' * 20}"
        lines += [f"  {'status':<{w0}} | {'key':<{w1}} | detail", sep]
        lines += [f"  {s:<{w0}} | {k:<{w1}} | {d}" for s, k, d in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def failure(self, what: str, hint: str = "", table: bool = True) -> str:
        """The error text for a load that does not fit: counts, the first offending key, ``hint``, and with
        ``table`` the report table on the following lines."""
        p = self.problems
        if p["mismatched"]:
            first = f"{p['mismatched'][0]}: {self.mismatched[p['mismatched'][0]]}"
        elif p["missing"]:
            first = f"{p['missing'][0]} not in the file"
        elif p["unexpected"]:
            first = f"{p['unexpected'][0]} not in the {what}"
        else:
            first = "-"
        text = (f"does not match the {what}: {len(p['missing'])} missing key(s), {len(p['unexpected'])} unexpected "
                f"key(s), {len(p['mismatched'])} shape mismatch(es) (first: {first}); nothing was loaded"
                + (f"; {hint}" if hint else ""))
        return text + ("\n" + self.table() if table else "")


def _compact(items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Merge keys that differ only in their numeric path components into ``blocks.{0-11}.x`` rows."""
    groups: "OrderedDict[tuple[str, str], list[list[int]]]" = OrderedDict()
    for key, detail in items:
        parts = key.split(".")
        nums = [int(p) for p in parts if p.isdigit()]
        pattern = ".".join("{}" if p.isdigit() else p for p in parts)
        groups.setdefault((pattern, detail), []).append(nums)
    out = []
    for (pattern, detail), idx in groups.items():
        if not idx[0]:
            out.append((pattern, detail))
            continue
        fills = []
        for pos in range(len(idx[0])):
            vals = sorted({v[pos] for v in idx})
            if len(vals) == 1:
                fills.append(str(vals[0]))
            elif vals == list(range(vals[0], vals[-1] + 1)):
                fills.append(f"{{{vals[0]}-{vals[-1]}}}")
            else:
                fills.append("{" + ",".join(map(str, vals)) + "}")
        out.append((pattern.format(*fills), detail))
    # second pass: siblings with the same detail share a row, e.g. ``norm.{weight,bias}``
    merged: "OrderedDict[tuple[str, str], list[str]]" = OrderedDict()
    for key, detail in out:
        head, _, leaf = key.rpartition(".")
        merged.setdefault((head, detail), []).append(leaf)
    rows = []
    for (head, detail), leaves in merged.items():
        if not head:
            rows += [(leaf, detail) for leaf in leaves]
        elif len(leaves) == 1:
            rows.append((f"{head}.{leaves[0]}", detail))
        else:
            rows.append((f"{head}.{{{','.join(leaves)}}}", detail))
    return rows


# ---------------------------------------------------------------------------------------- read / find / strip
def read_weights(path) -> Any:
    """Read a weight file (local or URL): ``.safetensors`` through safetensors, anything else through
    :func:`oct_foundation.io.torch_load` (``weights_only=True``: pickled code is refused). Every failure is a
    :class:`CheckpointError` (or ``OCTInputError`` for a missing file) naming the file."""
    if str(path).lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError:
            raise CheckpointError(path, "reading .safetensors files needs the 'safetensors' package") from None
        if not oio.exists(path):
            raise CheckpointError(path, "file not found")
        with oio.open_file(path, "rb") as f:
            data = f.read()
        try:
            return load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(path, f"not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return oio.torch_load(path)


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path=None, keys: Sequence[str] = WRAPPER_KEYS,
                    stop: Optional[Callable[[Mapping], bool]] = None, required: bool = True):
    """The state dict inside a loaded checkpoint object.

    A mapping whose values are all tensors is returned as it is; otherwise the first of ``keys`` that holds a
    mapping is followed (repeatedly: ``{"epoch": 3, "autoencoder": {"state_dict": ...}}``). ``stop(mapping)``
    True returns that mapping as it is (a V-JEPA file with ``encoder`` / ``predictor`` parts). With nothing
    found: :class:`CheckpointError` naming ``path`` and the top-level entries, or ``obj`` unchanged when not
    ``required``.
    """
    cur = obj
    for _ in range(8):
        if not isinstance(cur, Mapping) or _is_tensor_dict(cur) or (stop is not None and stop(cur)):
            break
        nxt = next((cur[k] for k in keys if isinstance(cur.get(k), Mapping)), None)
        if nxt is None:
            break
        cur = nxt
    if isinstance(cur, Mapping) and (_is_tensor_dict(cur) or (stop is not None and stop(cur))):
        return cur
    if not required:
        return obj
    found = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(path, f"no state dict found (top-level entries: {found}; a state dict is a mapping of "
                                f"names to tensors, possibly under one of {', '.join(keys)})")


def strip_key(key: str, prefixes: Sequence[str] = STRIP_PREFIXES) -> str:
    """``key`` without any leading wrapper prefixes (repeatedly: ``module.backbone.blocks.0`` -> ``blocks.0``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def strip_prefixes(state: Mapping[str, Any], prefixes: Sequence[str] = STRIP_PREFIXES) -> dict[str, Any]:
    """``state`` with :func:`strip_key` applied to every key; two keys that become one raise ``ValueError``."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        s = strip_key(str(k), prefixes)
        if s in out:
            raise ValueError(f"keys {k!r} and another one both become {s!r} once prefixes {prefixes} are removed")
        out[s] = v
    return out


def _match_any(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


# --------------------------------------------------------------------------------------------- strict loading
def load_checked(module: nn.Module, state: Mapping[str, Any], path, report: LoadReport, what: str,
                 strict: bool = True, adapt: Optional[Callable] = None, allow_missing: Sequence[str] = (),
                 allow_unexpected: Sequence[str] = ()) -> LoadReport:
    """Compare ``state`` with ``module.state_dict()`` key by key, fill ``report``, then load, or raise.

    ``adapt(key, file_tensor, model_tensor)`` may handle a shape difference: it returns ``(tensor or None,
    detail)`` (None: the module computes the value itself) or None (a mismatch). Shape mismatches always raise;
    missing / unexpected keys raise when ``strict``, unless they match ``allow_missing`` / ``allow_unexpected``.
    Nothing is copied before every check has passed, so a failed load leaves ``module`` as it was. The error is
    one line (the file, the counts, the first offending key); the whole table goes to the log.
    """
    own = module.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, ref in own.items():
        if k not in state:
            report.missing.append(k)
            continue
        val = state[k]
        if not isinstance(val, torch.Tensor):
            report.mismatched[k] = f"file holds a {type(val).__name__}, not a tensor"
        elif tuple(val.shape) == tuple(ref.shape):
            new[k] = val
            report.loaded.append(k)
        else:
            res = adapt(k, val, ref) if adapt is not None else None
            if res is None:
                report.mismatched[k] = f"file {tuple(val.shape)} vs model {tuple(ref.shape)}"
            else:
                if res[0] is not None:
                    new[k] = res[0]
                report.adapted[k] = res[1]
    report.unexpected += sorted(k for k in state if k not in own)
    report.allowed_missing = [k for k in report.missing if _match_any(k, allow_missing)]
    report.allowed_unexpected = [k for k in report.unexpected if _match_any(k, allow_unexpected)]
    p = report.problems
    if p["mismatched"] or (strict and (p["missing"] or p["unexpected"])):
        logger.error("%s", report.table())
        raise CheckpointError(path, report.failure(what, table=False))
    with torch.no_grad():
        module.load_state_dict(new, strict=False)
    return report


# ------------------------------------------------------------------------------------------------ adapters
def _unwrap_module(network: nn.Module) -> nn.Module:
    return getattr(network, "module", network) if isinstance(network, nn.Module) else network


def _encoder_of(network: nn.Module, source: str) -> nn.Module:
    encoder = getattr(network, "encoder", network)
    if not hasattr(encoder, "patch_embed"):
        raise ValueError(f"{type(network).__name__} has no ViT encoder to load {source!r} weights into (the UNet "
                         "baseline trains from scratch: use encoder_source 'random')")
    return encoder


def _encoder_part(sd: Mapping[str, Any], path, use_target_encoder: bool) -> dict:
    """The encoder's tensors from a state dict of a VJEPA3D / a head net (``encoder.*``, ``target_encoder.*``)
    or of a bare encoder (``patch_embed.*``, ``blocks.*``)."""
    prefix = "target_encoder." if use_target_encoder else "encoder."
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if sub:
        return sub
    if use_target_encoder:
        raise CheckpointError(path, "no 'target_encoder.*' weights in the file")
    if any(k.startswith("patch_embed.") for k in sd):
        return dict(sd)
    sample = ", ".join(sorted(sd)[:5])
    raise CheckpointError(path, f"no encoder weights ('encoder.*' or 'patch_embed.*') in the file (keys: {sample} ...)")


def _sincos_recompute(encoder: nn.Module):
    """A sin-cos position table is a fixed function of the grid: a table of another grid is recomputed."""
    def adapt(key, val, ref):
        if key == "pos_embed" and getattr(encoder, "pos_embed_type", None) == "sincos":
            return ref, f"sin-cos table recomputed for this grid {tuple(val.shape)} -> {tuple(ref.shape)}"
        return None
    return adapt


def _check_options(source: str, options: Mapping[str, Any], allowed: Sequence[str] = ()) -> None:
    extra = sorted(k for k in options if k not in allowed)
    if extra:
        raise ValueError(f"unexpected options for source {source!r}: {extra}"
                         + (f" (it takes {', '.join(allowed)})" if allowed else ""))


def load_weights(
    network: nn.Module,
    path=None,
    source: str = "model",
    strict: bool = True,
    print_report: bool = True,
    use_target_encoder: bool = False,
    checkpoint_key: str = "network",
    allow_random_init: bool = False,
    expected_sha256: Optional[str] = None,
    **options,
) -> LoadReport:
    """Load the weight file ``path`` into ``network`` (see the module docstring for ``source``) and report.

    Args:
        network: the receiving network (a ``DistributedDataParallel`` wrapper is looked through).
        path: local path or fsspec URL. Empty (None / ""): nothing is read and the network keeps its
            initialisation (for ``model``, ``maisi``, ``diffusion``, ``random``); the encoder sources
            ``model_pt`` / ``checkpoint`` / ``vjepa2`` need a path.
        strict: every key of the receiving module filled and every file key used, else
            :class:`CheckpointError` with the table (nothing loaded). Shape mismatches that cannot be adapted
            always raise. Non-strict loads what fits and reports the rest.
        print_report: print the report table.
        use_target_encoder: ``model_pt`` / ``vjepa2``: take the file's target (EMA) encoder.
        checkpoint_key: ``checkpoint``: the entry of the training checkpoint that holds the network state.
        allow_random_init: ``maisi``: a missing file keeps the random initialisation (reported) instead of
            raising.
        expected_sha256: refuse a file whose sha256 differs (a model description that names other weights).
        options: ``vjepa2`` only: the adapter's options (``allow_missing``, ``allow_unexpected``,
            ``channel_adapt``, ``input_norm``, ``pos_table``, ``source_grid``, ``checkpoint_key``; see
            :func:`oct_foundation.networks.pretrained.load_pretrained`).

    Returns the :class:`LoadReport` (``report.sha256`` identifies the file read).
    """
    if source not in SOURCES:
        raise ValueError(f"weights source must be one of {SOURCES}, got {source!r}")
    net = _unwrap_module(network)
    if source in ENCODER_SOURCES and source != "random":
        _encoder_of(net, source)  # fail on a network without a ViT encoder before reading anything
    if source == "random" or not path:
        if source in ("model_pt", "checkpoint", "vjepa2"):
            raise ValueError(f"weights source {source!r} needs a path")
        _check_options(source, options)
        report = LoadReport(path=str(path) if path else "-", source=source, random_init=True)
        report.notes.append("no weight file given" if source != "random" else "encoder source 'random'")
        if print_report:
            print(report.table())
        return report
    if source == "maisi" and allow_random_init and not oio.exists(path):
        report = LoadReport(path=str(path), source="maisi", random_init=True)
        report.notes.append(f"{path} not found and allow_random_init is set")
        if hasattr(net, "weights_id"):
            net.weights_id = "random-init"
        if print_report:
            print(report.table())
        return report
    if not oio.exists(path):
        hint = {
            "maisi": " (get it from the MONAI model zoo 'maisi_ct_generative' or NVIDIA NV-Generate; see "
                     "large_files.yml), or set allow_random_init to run with random weights",
            "diffusion": " (train it with configs/train_diffusion.json)",
        }.get(source, "")
        raise CheckpointError(path, f"weight file not found{hint}")
    digest = oio.sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise CheckpointError(path, f"sha256 {digest[:12]}... differs from the recorded {expected_sha256[:12]}...: "
                                    "the weights were replaced after their description was written")

    if source == "vjepa2":
        from oct_foundation.networks.pretrained import load_pretrained

        target = net if all(isinstance(getattr(net, p, None), nn.Module) for p in ("encoder", "target_encoder")) \
            else _encoder_of(net, source)
        _check_options(source, options, ("allow_missing", "allow_unexpected", "channel_adapt", "input_norm",
                                         "pos_table", "source_grid", "checkpoint_key"))
        report = load_pretrained(target, path, strict=strict, print_report=False,
                                 use_target_encoder=use_target_encoder, **options)
        report.sha256 = digest
        if print_report:
            print(report.table())
        return report

    _check_options(source, options, ("allow_missing", "allow_unexpected") if source == "model" else ())
    obj = read_weights(path)
    report = LoadReport(path=str(path), source=source, sha256=digest)
    adapt = None
    if source in ("model_pt", "checkpoint"):
        if source == "checkpoint":
            if not isinstance(obj, Mapping) or checkpoint_key not in obj:
                found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
                raise CheckpointError(path, f"no {checkpoint_key!r} entry in the checkpoint (found: {found})")
            obj = obj[checkpoint_key]
        state = strip_prefixes(find_state_dict(obj, path), ("module.", "_orig_mod."))
        module = _encoder_of(net, source)
        state = _encoder_part(state, path, use_target_encoder)
        report.notes.append(f"encoder <- {'target_encoder' if use_target_encoder else 'encoder'} weights")
        adapt, what = _sincos_recompute(module), "encoder"
    elif source == "maisi":
        module = getattr(net, "autoencoder", net)
        state = strip_prefixes(find_state_dict(obj, path), ("module.", "_orig_mod.", "autoencoder."))
        what = "MAISI autoencoder"
    elif source == "diffusion":
        module, what = net, "diffusion U-Net"
        if isinstance(obj, Mapping) and isinstance(obj.get("unet_state_dict"), Mapping):
            state = dict(obj["unet_state_dict"])
            if "scale_factor" in obj:
                state["scale_factor"] = torch.as_tensor(float(obj["scale_factor"]))
                report.notes.append(f"scale_factor {float(obj['scale_factor']):.5g} from the file's entry")
        else:
            state = dict(find_state_dict(obj, path))
        state = strip_prefixes(state, ("module.", "_orig_mod."))
        if "scale_factor" not in state and "scale_factor" in module.state_dict() and not strict:
            state["scale_factor"] = module.scale_factor
            report.notes.append("the file has no scale_factor: the network's is kept")
    else:  # model
        module, what = net, f"{type(net).__name__} network"
        state = strip_prefixes(find_state_dict(obj, path), ("module.", "_orig_mod."))
    load_checked(module, state, path, report, what, strict=strict, adapt=adapt,
                 allow_missing=options.get("allow_missing", ()), allow_unexpected=options.get("allow_unexpected", ()))
    if source == "maisi" and hasattr(net, "weights_id"):
        net.weights_id = f"sha256:{digest}"
    if print_report:
        print(report.table())
    return report
