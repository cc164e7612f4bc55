"""Self-describing model files: the weights (``model.pt``) and, beside them, what they are (``model.json``).

``model.pt`` stays a plain ``state_dict`` (``torch.load(path, weights_only=True)`` reads it, as every loader of
the package does). ``model.json`` (the weight file's name with ``.json`` for its suffix) records:

* ``_target_`` and ``args``: the import path and the constructor keyword arguments of the network, so
  :func:`build_from_file` builds the same network without being told its shape;
* ``encoder``: for a network around a 3D ViT (``VJEPA3D``, ``SegmentationNet``, ``ClassificationNet``), the
  :class:`~oct_foundation.networks.vit3d.VisionTransformer3D` arguments of that encoder and the sub-modules that
  hold it, so a downstream bundle builds its encoder from ``--encoder_path`` alone;
* ``sha256`` and ``size`` of the weight file (a description that no longer matches its weights is refused),
  the package, torch and MONAI versions, and ``extra`` (what the writer adds, e.g. the best metric).

The constructor arguments are recorded where the network is built: classes decorated with
:func:`records_init_args` keep the arguments they were called with (defaults filled in), so a network built from a
bundle config (``network_def``) describes itself whatever path built it (a preset, flat keys, a kwargs dict).

Bundle configs call :func:`resolve_architecture`: the shape keys of a config (``embed_dim``, ``depth``, ...) are
``null`` by default, meaning "from the model file"; a value given on the command line must agree with the file,
otherwise the error names the key, both values and the file. ``d_target`` and ``image_size`` are the input
geometry (the volume size the network is built for): they default to the file's and may differ from it, because
no weight of the encoder depends on them (RoPE positions are computed per input; a sin-cos table is recomputed
for another grid when the encoder weights are loaded). A file without ``model.json`` (older exports, other
checkpoints) or no file at all gives the bundle's defaults, as before.

All reads and writes go through :mod:`oct_foundation.io`, so ``gs://`` and ``memory://`` paths work.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import inspect
import io as _pyio
import logging
import posixpath
from typing import Any, Dict, Mapping, Optional, Tuple

from oct_foundation import io
from oct_foundation.errors import CheckpointError

__all__ = [
    "records_init_args",
    "init_args",
    "spec_path",
    "model_spec",
    "save_model",
    "export_model",
    "read_model_spec",
    "check_overrides",
    "build_from_file",
    "resolve_architecture",
    "MODEL_FILE_FORMAT",
]

logger = logging.getLogger("oct_foundation.networks")

#: ``format`` field of every ``model.json``
MODEL_FILE_FORMAT = "oct_foundation.model/1"
_INIT_ATTR = "_oct_init_args"
_ENCODER_TARGET = "oct_foundation.networks.vit3d.VisionTransformer3D"
#: functions (not classes) that a ``model.json`` may name as ``_target_``
BUILDERS = frozenset({
    "oct_foundation.networks.presets.build_vjepa",
    "oct_foundation.networks.maisi.build_maisi_autoencoder",
})
#: config keys of the input geometry: ``img_size = [d_target, *image_size]``
GEOMETRY_KEYS = ("d_target", "image_size")
_ENCODER_KEYS = ("in_chans", "img_size", "patch_size", "tubelet_size", "embed_dim", "depth", "num_heads",
                 "mlp_ratio", "pos_embed")


# ------------------------------------------------------------------------------------- recording the arguments
def records_init_args(cls):
    """Class decorator: instances keep ``(import path, constructor kwargs)`` as built (defaults filled in,
    ``**kwargs`` flattened). With decorated subclasses, the outermost decorated class's record wins."""
    init = cls.__init__
    sig = inspect.signature(init)
    target = f"{cls.__module__}.{cls.__qualname__}"

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        params: Dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                params.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    params[name] = list(value)
            else:
                params[name] = value
        self.__dict__[_INIT_ATTR] = (target, params)

    cls.__init__ = __init__
    return cls


def init_args(module) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(import path, kwargs)`` a :func:`records_init_args` class was built with, or None."""
    module = getattr(module, "module", module)  # DistributedDataParallel / DataParallel
    rec = getattr(module, "__dict__", {}).get(_INIT_ATTR)
    return (rec[0], dict(rec[1])) if rec else None


def _jsonable(value, key: str):
    """``value`` as JSON data (tuples become lists; a recorded module becomes ``{"_target_": ..., **kwargs}``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"network argument {key}={value!r} is not a finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"network argument {key} has non-string keys {bad[:3]}")
        return {k: _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    rec = init_args(value)
    if rec is not None:
        return {"_target_": rec[0], **_jsonable(rec[1], key)}
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return _jsonable(item(), key)
    raise TypeError(f"network argument {key}={type(value).__name__} cannot be stored in a model file "
                    "(only numbers, strings, booleans, lists, dicts and recorded networks)")


# ---------------------------------------------------------------------------------------------- writing
def spec_path(path) -> str:
    """The ``model.json`` of weight file ``path``: same folder, last suffix replaced by ``.json``."""
    s = str(path)
    base = posixpath.basename(s.replace("\\", "/"))
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return s[: len(s) - len(base)] + stem + ".json"


def _versions() -> Dict[str, str]:
    from importlib import metadata

    import torch

    import oct_foundation

    out = {"oct_foundation": oct_foundation.__version__, "torch": torch.__version__}
    try:
        out["monai"] = metadata.version("monai")
    except metadata.PackageNotFoundError:  # MONAI is a dependency; a bare torch environment still writes
        out["monai"] = "not installed"
    return out


def _encoder_section(network) -> Optional[Dict[str, Any]]:
    """``{"_target_", "args", "modules"}`` of the 3D ViT encoder(s) inside ``network`` (None: no such encoder)."""
    rec = init_args(network)
    if rec is not None and rec[0] == _ENCODER_TARGET:
        return {"_target_": rec[0], "args": _jsonable(rec[1], "encoder"), "modules": [""]}
    net = getattr(network, "module", network)
    found: Dict[str, Any] = {}
    for name, child in getattr(net, "named_children", lambda: [])():
        crec = init_args(child)
        if crec is not None and crec[0] == _ENCODER_TARGET:
            args = _jsonable(crec[1], name)
            if found and args != found["args"]:
                continue  # a second encoder of another shape: only the first is described
            found.setdefault("args", args)
            found.setdefault("modules", []).append(name)
    if not found:
        return None
    return {"_target_": _ENCODER_TARGET, "args": found["args"], "modules": found["modules"]}


def model_spec(network, network_def_args: Optional[Mapping[str, Any]] = None, target: Optional[str] = None,
               extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The description of ``network`` (no weight fields): its recorded constructor arguments, or the given
    ``target`` / ``network_def_args`` (needed for a network whose class does not record them)."""
    rec = init_args(network)
    if network_def_args is None and rec is None:
        raise ValueError(f"{type(network).__name__} does not record its constructor arguments: pass "
                         "network_def_args and target")
    if network_def_args is None:
        network_def_args = rec[1]
    if target is None:
        if rec is None:
            raise ValueError("network_def_args given without target (the import path of what builds the network)")
        target = rec[0]
    spec: Dict[str, Any] = {
        "format": MODEL_FILE_FORMAT,
        "_target_": str(target),
        "args": _jsonable(dict(network_def_args), "args"),
    }
    enc = _encoder_section(network)
    if enc is not None:
        spec["encoder"] = enc
    spec["versions"] = _versions()
    spec["extra"] = _jsonable(dict(extra or {}), "extra")
    return spec


def save_model(network, path, network_def_args: Optional[Mapping[str, Any]] = None, target: Optional[str] = None,
               extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write ``network``'s ``state_dict`` to ``path`` and its description to :func:`spec_path` (both atomic;
    local or fsspec URL). Returns the description. The weights are written first, then the description with
    their sha256, so an interrupted export leaves a description that :func:`read_model_spec` refuses rather than
    one that silently describes other weights."""
    import torch

    spec = model_spec(network, network_def_args, target, extra)
    net = getattr(network, "module", network)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    buf = _pyio.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    spec["weights"] = posixpath.basename(str(path).replace("\\", "/"))
    spec["size"] = len(data)
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    io.makedirs(io.dirname(path))
    io.atomic_write(path, data)
    io.save_json(spec, spec_path(path))
    return spec


def export_model(network, path, network_def_args: Optional[Mapping[str, Any]] = None, target: Optional[str] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The bundles' one export of ``models/model.pt``: :func:`save_model` (weights + ``model.json``) when the
    network records its constructor arguments or ``network_def_args`` are given; otherwise bare weights (a
    warning says so) and any older ``model.json`` beside them is removed, so no description names other weights.
    Returns the description (None for bare weights)."""
    net = getattr(network, "module", network)
    if network_def_args is None and init_args(net) is None:
        logger.warning("%s records no constructor arguments: %s saved without a model.json", type(net).__name__,
                       path)
        io.makedirs(io.dirname(path))
        io.torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
        remove_stale_spec(path)
        return None
    return save_model(net, path, network_def_args, target, extra)


def remove_stale_spec(path) -> None:
    """Remove the ``model.json`` beside ``path`` (used when bare weights replace described ones)."""
    sp = spec_path(path)
    if io.exists(sp):
        fs, p = io._fs(sp)
        fs.rm(p)


# ---------------------------------------------------------------------------------------------- reading
def _weights_of(path) -> Tuple[str, str]:
    """(weight file, spec file) for ``path`` given as either."""
    s = str(path)
    if s.endswith(".json"):
        spec = io.load_json(s)
        name = spec.get("weights") if isinstance(spec, Mapping) else None
        return (io.join(io.dirname(s), name) if name else s[:-5] + ".pt"), s
    return s, spec_path(s)


def read_model_spec(path, verify: bool = True, required: bool = True) -> Optional[Dict[str, Any]]:
    """The description of weight file ``path`` (or of ``model.json`` itself), ``file`` set to the
    ``model.json`` path. ``verify`` checks the weight file's sha256 against it (a description that does not
    match its weights raises :class:`CheckpointError`). Without a ``model.json``: None, or with ``required``
    a :class:`CheckpointError` naming the file."""
    weights, sp = _weights_of(path)
    if not io.exists(sp):
        if required:
            raise CheckpointError(weights, f"no model description ({sp} not found): the file does not say which "
                                           "network it holds")
        return None
    spec = io.load_json(sp)
    if not isinstance(spec, dict) or spec.get("format") != MODEL_FILE_FORMAT or "_target_" not in spec:
        raise CheckpointError(sp, f"not a model description (expected format {MODEL_FILE_FORMAT!r} with "
                                  "'_target_' and 'args')")
    if not isinstance(spec.get("args"), dict):
        raise CheckpointError(sp, "'args' must be a dict of constructor arguments")
    if verify:
        if not io.exists(weights):
            raise CheckpointError(sp, f"describes weights {weights} that do not exist")
        digest = io.sha256_file(weights)
        if spec.get("sha256") and digest != spec["sha256"]:
            raise CheckpointError(sp, f"describes other weights than {weights} (sha256 {digest[:12]}... vs recorded "
                                      f"{str(spec['sha256'])[:12]}...): the weights were replaced after it was written")
    spec["file"] = sp
    return spec


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _same(key: str, given, stored) -> bool:
    g, s = _norm(given), _norm(stored)
    if key == "patch_size":  # 16 and [16, 16] build the same patch embedding
        g = [g, g] if isinstance(g, float) else g
        s = [s, s] if isinstance(s, float) else s
    return g == s


def check_overrides(stored: Mapping[str, Any], overrides: Optional[Mapping[str, Any]], file) -> None:
    """Every non-None ``overrides[key]`` must equal ``stored[key]``; otherwise :class:`CheckpointError` naming the
    key, both values and ``file``. A key ``stored`` does not have is an error too."""
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in stored:
            raise CheckpointError(file, f"--{key} {value!r} given, but {key} is not an argument recorded in the "
                                        f"file (recorded: {', '.join(sorted(stored))})")
        if not _same(key, value, stored[key]):
            raise CheckpointError(file, f"--{key} {value!r} disagrees with the model file, which was built with "
                                        f"{key}={stored[key]!r}; leave {key} unset to use the file's value")


def _resolve_target(target: str, file):
    if not isinstance(target, str) or not target.startswith("oct_foundation.") or "." not in target:
        raise CheckpointError(file, f"_target_ {target!r} is not a network of the oct_foundation package")
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(file, f"_target_ {target!r} not found ({e})") from None
    import torch

    if not ((inspect.isclass(obj) and issubclass(obj, torch.nn.Module)) or target in BUILDERS):
        raise CheckpointError(file, f"_target_ {target!r} is neither a network class nor a known builder")
    return obj


def _instantiate(value, file):
    if isinstance(value, Mapping):
        items = {k: _instantiate(v, file) for k, v in value.items() if k != "_target_"}
        if "_target_" in value:
            return _resolve_target(value["_target_"], file)(**items)
        return items
    if isinstance(value, list):
        return [_instantiate(v, file) for v in value]
    return value


def build_from_file(path, overrides: Optional[Mapping[str, Any]] = None, load_weights: bool = True,
                    strict: bool = True):
    """The network described by ``path``'s ``model.json``, with its weights (``load_weights``).

    ``overrides``: constructor arguments the caller expects; each must agree with the stored value
    (:func:`check_overrides`; None means not given). The weights are checked against the recorded sha256 and
    loaded strictly (``weights_only=True``) by :func:`oct_foundation.networks.weights.load_weights`.
    """
    import torch

    spec = read_model_spec(path, verify=False)
    weights, sp = _weights_of(path)
    check_overrides(spec["args"], overrides, sp)
    net = _resolve_target(spec["_target_"], sp)(**_instantiate(spec["args"], sp))
    if not isinstance(net, torch.nn.Module):
        raise CheckpointError(sp, f"_target_ {spec['_target_']!r} built a {type(net).__name__}, not a network")
    if not load_weights:
        read_model_spec(path, verify=True)
        return net
    from oct_foundation.networks.weights import load_weights

    load_weights(net, weights, source="model", strict=strict, print_report=False,
                 expected_sha256=spec.get("sha256"))
    return net


# ---------------------------------------------------------------------------------- bundle configurations
def _default_args(defaults, part: str) -> Dict[str, Any]:
    from .presets import get_preset

    args = get_preset(defaults) if isinstance(defaults, str) else copy.deepcopy(dict(defaults))
    if part == "encoder":  # a VJEPA3D preset: its encoder's keys
        args = {k: v for k, v in args.items() if k in _ENCODER_KEYS}
    return args


def resolve_architecture(path=None, part: str = "encoder", defaults="vit_small_oct", **keys) -> Dict[str, Any]:
    """Constructor arguments for a bundle's network from a model file, checked against the config's keys.

    Args:
        path: a model file (``model.pt``); its ``model.json`` is used when there is one. None, ``""`` or a file
            without ``model.json``: ``defaults`` with the given ``keys`` (the behaviour of bundles before model
            files described themselves).
        part: ``"encoder"`` (the :class:`VisionTransformer3D` arguments of the file's encoder, for downstream
            heads) or ``"network"`` (the file's own ``VJEPA3D`` arguments, for embedding inference).
        defaults: a preset name (:data:`oct_foundation.networks.PRESETS`) or a kwargs dict.
        keys: the config's shape keys (``d_target``, ``image_size``, ``patch_size``, ``embed_dim``, ...); None
            means "from the file". Architecture keys must agree with the file (else :class:`CheckpointError`
            naming key, values and file); ``d_target`` / ``image_size`` (the input geometry) replace the file's.
            A file of a network without a ViT that records its input size (the UNet baseline) gives that geometry
            and the ``defaults`` for the ViT keys, which do not apply to it.

    Returns:
        ``{"kwargs": constructor kwargs, "d_target": int, "image_size": [H, W], "file": model.json or None}``.
    """
    if part not in ("encoder", "network"):
        raise ValueError(f"part must be 'encoder' or 'network', got {part!r}")
    geometry = {k: keys.pop(k) for k in GEOMETRY_KEYS if k in keys}
    spec = read_model_spec(path, verify=True, required=False) if path else None
    if spec is None:
        args = _default_args(defaults, part)
        args.update({k: v for k, v in keys.items() if v is not None})
        source = None
    else:
        source = spec["file"]
        if part == "encoder":
            enc = spec.get("encoder")
            stored = spec.get("args") or {}
            if not enc and stored.get("img_size") is not None:
                # a network with no ViT that records its input size (the UNet baseline): the geometry is the
                # file's; the ViT keys do not apply to it and are left at the defaults
                args = _default_args(defaults, part)
                args.update(img_size=list(stored["img_size"]), in_chans=int(stored.get("in_chans", 1)))
                keys = {}
            elif not enc:
                raise CheckpointError(source, f"describes a {spec['_target_']}, which holds no 3D ViT encoder")
            else:
                args = dict(enc["args"])
        else:
            from .vjepa3d import VJEPA3D

            target = _resolve_target(spec["_target_"], source)
            if not (inspect.isclass(target) and issubclass(target, VJEPA3D)):
                raise CheckpointError(source, f"describes a {spec['_target_']}, not a V-JEPA network (VJEPA3D)")
            args = dict(spec["args"])
        check_overrides(args, keys, source)
    img = args.get("img_size", (16, 64, 64))
    img = [int(img)] * 3 if isinstance(img, (int, float)) else [int(v) for v in img]
    d_target = geometry.get("d_target")
    image_size = geometry.get("image_size")
    new_img = [int(d_target) if d_target is not None else int(img[0]),
               *([int(v) for v in image_size] if image_size is not None else [int(v) for v in img[1:]])]
    if source is not None and new_img != img:
        logger.info("%s: network built for input size %s (the file's: %s)", source, new_img, img)
    args["img_size"] = new_img
    return {"kwargs": args, "d_target": new_img[0], "image_size": new_img[1:], "file": source}
