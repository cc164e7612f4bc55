"""Load V-JEPA 2 / V-JEPA 1 / Hugging Face ``VJEPA2Model`` weights into the package's 3D networks.

Supported files (local paths or fsspec URLs; PyTorch files always read with ``weights_only=True``, so a file
holding pickled code is refused; ``.safetensors`` files through the safetensors package when it is installed):

* ``official``: the training checkpoints of facebookresearch/vjepa2 (and jepa): a dict with ``encoder``,
  ``target_encoder`` and ``predictor`` state dicts whose keys carry the ``module.`` (DDP) and ``backbone.``
  (multi-sequence wrapper) prefixes; V-JEPA 2 uses RoPE so there is no position table.
* ``vjepa1``: the same layout with an additive 3D sin-cos ``pos_embed`` ``[1, N, E]`` (and
  ``predictor_pos_embed``).
* ``hf``: a Hugging Face transformers ``VJEPA2Model`` state dict (``encoder.embeddings.patch_embeddings.proj``,
  ``encoder.layer.i.attention.query/key/value/proj``, ``encoder.layernorm``, ``predictor.*``), optionally
  prefixed ``vjepa2.`` as saved from the classification model.
* ``state_dict``: a bare state dict, either of an encoder (``patch_embed.proj.weight``, ``blocks.i...``) or of a
  whole :class:`~oct_foundation.networks.VJEPA3D` (``encoder.``/``target_encoder.``/``predictor.`` prefixes).

Every file is first converted to canonical parts named as the package's networks (the V-JEPA 2 names,
see :data:`KEY_MAPPING`), then adapted to the receiving model's shapes:

* input normalisation: V-JEPA networks were trained on ImageNet-normalised RGB; by default (``input_norm="auto"``)
  the mean/std are folded exactly into the patch-embedding weight and bias of a V-JEPA file's RGB embedding, so
  the model takes [0, 1] inputs and, for a gray volume, equals the file's network on its normalised RGB copy;
* RGB -> one channel: ``sum`` over the colour axis (exact for a gray image copied to three channels) or ``mean``;
  one channel -> C channels divides by C (exact for a gray image copied to C channels);
* tubelet (temporal kernel) and patch (spatial kernel) size changes redistribute the kernel by overlap of the
  old and new cells, so the sum over every new cell's kernel equals the old sum: a volume that is constant over
  the kernel keeps its embedding (tubelet 2 -> 1 sums the two taps; 2 -> 4 splits each tap in two halves);
* additive position tables are resampled trilinearly on their ``[T, H, W]`` grid (never 1D over the sequence),
  or, for sin-cos tables and ``pos_table="recompute"``, recomputed exactly on the model's grid;
* Hugging Face's separate query/key/value projections are fused into ``qkv``.

A shape that cannot be adapted never keeps random weights silently: loading raises :class:`CheckpointError`
with the report table. Missing or unexpected keys raise too, unless they match an explicit allow-list (glob
patterns; a key in ``allow_missing`` may also keep its initial value when its file shape cannot be adapted,
which the table shows). The file's target encoder, when there is one, fills the target encoder; otherwise the
target encoder starts as a copy of the adapted context encoder.

Example (an encoder-only video checkpoint into the OCT V-JEPA model)::

    report = load_pretrained(VJEPA3D(in_chans=1, ...), "gs://bucket/video_encoder.pt", allow_missing=["predictor.*"])
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oct_foundation.errors import CheckpointError
from oct_foundation.networks.weights import _COPIED, LoadReport, _match_any, find_state_dict, read_weights, strip_key

__all__ = [
    "KEY_MAPPING",
    "LoadReport",
    "ConvertedCheckpoint",
    "load_pretrained",
    "convert_checkpoint",
    "adapt_state_dict",
    "detect_format",
    "sincos_table_3d",
    "infer_sincos_grid",
    "interpolate_pos_table",
    "resample_kernel_axis",
    "adapt_patch_weight",
    "fold_input_normalization",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

SOURCES = ("auto", "official", "hf", "vjepa1", "state_dict")
#: ImageNet RGB mean / std, the input normalisation of V-JEPA 1 / 2 / 2.1 (inputs scaled to [0, 1] first)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: formats whose RGB patch embeddings were trained on ImageNet-normalised inputs (folded by ``input_norm="auto"``)
_VIDEO_SOURCES = ("official", "hf", "vjepa1")
PARTS = ("encoder", "target_encoder", "predictor")
#: V-JEPA 2.1 distilled ViT-B/L files keep their (EMA) encoder under this key; it is read as the target encoder
_EMA_KEY = "ema_encoder"

#: Documented key mapping, file name -> canonical (package) name; ``{i}`` is a block index.
KEY_MAPPING: dict[str, dict[str, str]] = {
    "official / vjepa1 (prefixes module., backbone., _orig_mod. stripped)": {
        "ema_encoder (V-JEPA 2.1 ViT-B/L files)": "target_encoder (the released encoder; g/G files: target_encoder)",
        "encoder (2.1): norms_block.{0..3}.*, video_mod_embed, img_mod_embed, patch_embed_img.proj.*": "same names "
        "(VisionTransformer3D(hierarchical_norms=True, modality_embedding=True, img_temporal_dim_size=1))",
        "encoder: patch_embed.proj.{weight,bias}": "patch_embed.proj.{weight,bias}",
        "encoder: pos_embed [1, N, E] (V-JEPA 1 only)": "pos_embed (resampled on the [T, H, W] grid)",
        "encoder: blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*": "same names",
        "encoder: norm.*": "norm.*",
        "predictor: predictor_embed.*": "predictor_embed.*",
        "predictor: mask_tokens.{i} [1, 1, P]": "mask_tokens.{i}",
        "predictor: predictor_pos_embed [1, N, P] (V-JEPA 1 only)": "predictor_pos_embed",
        "predictor: predictor_blocks.{i}.*": "predictor_blocks.{i}.*",
        "predictor: predictor_norm.*, predictor_proj.*": "predictor_norm.*, predictor_proj.*",
        "predictor (2.1): predictor_embed.{0,2}.* (4 levels: Linear(4E, E), GELU, Linear(E, P)), video_mod_embed, "
        "img_mod_embed, predictor_proj_context.*": "same names (Predictor3D(num_levels=4, modality_embedding=True, "
        "context_proj=True); distilled B/L: num_levels=1, out_embed_dim=1664)",
    },
    "hf (VJEPA2Model; optional prefix vjepa2.)": {
        "encoder.embeddings.patch_embeddings.proj.*": "encoder: patch_embed.proj.*",
        "encoder.embeddings.position_embeddings": "encoder: pos_embed",
        "encoder.layer.{i}.attention.{query,key,value}.*": "encoder: blocks.{i}.attn.qkv.* (fused q;k;v)",
        "encoder.layer.{i}.attention.proj.*": "encoder: blocks.{i}.attn.proj.*",
        "encoder.layer.{i}.{norm1,norm2,mlp.fc1,mlp.fc2}.*": "encoder: blocks.{i}.{same}.*",
        "encoder.layernorm.*": "encoder: norm.*",
        "predictor.embeddings.predictor_embeddings.*": "predictor: predictor_embed.*",
        "predictor.embeddings.mask_tokens [n, 1, 1, P]": "predictor: mask_tokens.{i} [1, 1, P]",
        "predictor.embeddings.position_embeddings": "predictor: predictor_pos_embed",
        "predictor.layer.{i}.attention.{query,key,value}.*": "predictor: predictor_blocks.{i}.attn.qkv.*",
        "predictor.layer.{i}.{attention.proj,norm1,norm2,mlp.fc1,mlp.fc2}.*": "predictor: predictor_blocks.{i}.*",
        "predictor.layernorm.*": "predictor: predictor_norm.*",
        "predictor.proj.*": "predictor: predictor_proj.*",
        "(older files) ...attention.attention.*": "treated as ...attention.*",
    },
    "state_dict": {
        "patch_embed.*, blocks.*, norm.*, pos_embed": "encoder: same names",
        "encoder.*, target_encoder.*, predictor.* (a VJEPA3D state dict)": "the three parts, prefix removed",
    },
}



# ------------------------------------------------------------------------------------------ format conversion
@dataclass
class ConvertedCheckpoint:
    """A file converted to canonical part state dicts (package names) plus how each key was converted."""

    source: str
    parts: dict[str, dict[str, torch.Tensor]]
    notes: dict[str, str] = field(default_factory=dict)  # "part:key" -> how it was converted (beyond renaming)
    other: dict[str, Any] = field(default_factory=dict)  # keys the format does not know, as found


def detect_format(obj: Any) -> str:
    """``official``, ``vjepa1``, ``hf`` or ``state_dict`` for a loaded checkpoint object."""
    if isinstance(obj, Mapping) and any(isinstance(obj.get(p), Mapping) for p in PARTS + (_EMA_KEY,)):
        enc = obj.get("encoder") if isinstance(obj.get("encoder"), Mapping) else obj.get("target_encoder")
        if isinstance(enc, Mapping) and any(strip_key(k) == "pos_embed" for k in enc):
            return "vjepa1"
        return "official"
    if isinstance(obj, Mapping):
        keys = [strip_key(k) for k in obj]
        keys = [k[len("vjepa2."):] if k.startswith("vjepa2.") else k for k in keys]
        if any(k.startswith(("encoder.embeddings.", "encoder.layer.", "predictor.embeddings.")) for k in keys):
            return "hf"
        return "state_dict"
    raise ValueError(f"not a checkpoint dictionary (got {type(obj).__name__})")


def _fuse_qkv(block: dict, prefix: str, out: dict, part: str, out_prefix: str, notes: dict) -> None:
    for suffix in ("weight", "bias"):
        names = [f"{prefix}{n}.{suffix}" for n in ("query", "key", "value")]
        present = [n in block for n in names]
        if all(present):
            key = f"{out_prefix}qkv.{suffix}"
            out[key] = torch.cat([block.pop(n) for n in names], dim=0)
            notes[f"{part}:{key}"] = "fused from separate query/key/value"
        elif any(present):
            # keep the partial set under its own names: it will show up as unexpected
            for n in names:
                if n in block:
                    out[f"{out_prefix}{n.rsplit('.', 2)[-2]}.{suffix}"] = block.pop(n)


def _convert_hf(sd: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
    flat = {}
    for k, v in sd.items():
        k = strip_key(k)
        k = k[len("vjepa2."):] if k.startswith("vjepa2.") else k
        flat[k.replace("attention.attention.", "attention.")] = v
    parts: dict[str, dict[str, torch.Tensor]] = {}
    notes: dict[str, str] = {}
    other: dict[str, Any] = {}
    layer_re = re.compile(r"^(encoder|predictor)\.layer\.(\d+)\.(.+)$")
    blocks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        m = layer_re.match(k)
        if m:
            blocks.setdefault((m.group(1), int(m.group(2))), {})[m.group(3)] = v
            continue
        if k.startswith("encoder."):
            rest = k[len("encoder."):]
            enc = parts.setdefault("encoder", {})
            if rest.startswith("embeddings.patch_embeddings."):
                enc["patch_embed." + rest[len("embeddings.patch_embeddings."):]] = v
            elif rest == "embeddings.position_embeddings":
                enc["pos_embed"] = v
            elif rest.startswith("layernorm."):
                enc["norm." + rest[len("layernorm."):]] = v
            else:
                other[k] = v
        elif k.startswith("predictor."):
            rest = k[len("predictor."):]
            pred = parts.setdefault("predictor", {})
            if rest.startswith("embeddings.predictor_embeddings."):
                pred["predictor_embed." + rest[len("embeddings.predictor_embeddings."):]] = v
            elif rest == "embeddings.mask_tokens":
                for i in range(v.shape[0]):
                    key = f"mask_tokens.{i}"
                    pred[key] = v[i].reshape(1, 1, -1).clone()
                    notes[f"predictor:{key}"] = f"split from mask_tokens {list(v.shape)}"
            elif rest == "embeddings.position_embeddings":
                pred["predictor_pos_embed"] = v
            elif rest.startswith("layernorm."):
                pred["predictor_norm." + rest[len("layernorm."):]] = v
            elif rest.startswith("proj."):
                pred["predictor_proj." + rest[len("proj."):]] = v
            else:
                other[k] = v
        else:
            other[k] = v
    for (part, i), block in sorted(blocks.items()):
        dst = parts.setdefault(part, {})
        base = f"blocks.{i}." if part == "encoder" else f"predictor_blocks.{i}."
        block = dict(block)
        _fuse_qkv(block, "attention.", dst, part, base + "attn.", notes)
        for k, v in block.items():
            dst[base + (("attn." + k[len("attention."):]) if k.startswith("attention.") else k)] = v
    return ConvertedCheckpoint("hf", parts, notes, other)


def convert_checkpoint(checkpoint: Any, source: str = "auto") -> ConvertedCheckpoint:
    """Convert a loaded checkpoint object (or a path / URL) to canonical part state dicts.

    Returns a :class:`ConvertedCheckpoint` whose ``parts`` has some of ``encoder``, ``target_encoder`` and
    ``predictor`` with package names (see :data:`KEY_MAPPING`). Non-tensor entries (epoch, optimiser state)
    are ignored.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
        checkpoint = read_weights(checkpoint)
    checkpoint = find_state_dict(checkpoint, stop=lambda m: any(k in m for k in PARTS + (_EMA_KEY,)),
                                 keys=("state_dict", "model", "network", "net"), required=False)
    detected = detect_format(checkpoint)
    src = detected if source == "auto" else source
    if src in ("official", "vjepa1"):
        if detected not in ("official", "vjepa1"):
            raise ValueError(f"source {src!r} expects a dict with encoder/target_encoder/predictor entries, "
                             f"the file looks like {detected!r}")
        parts = {}
        for p in PARTS:
            if isinstance(checkpoint.get(p), Mapping):
                parts[p] = {strip_key(k): v for k, v in checkpoint[p].items() if isinstance(v, torch.Tensor)}
        other = {}
        if isinstance(checkpoint.get(_EMA_KEY), Mapping):
            ema = {strip_key(k): v for k, v in checkpoint[_EMA_KEY].items() if isinstance(v, torch.Tensor)}
            if "target_encoder" in parts:
                other = {f"{_EMA_KEY}.{k}": v for k, v in ema.items()}
            else:  # V-JEPA 2.1 ViT-B/L: the EMA encoder is the released (target) encoder
                parts["target_encoder"] = ema
        return ConvertedCheckpoint(src, parts, other=other)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"not a state dict (got {type(checkpoint).__name__})")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if src == "hf":
        return _convert_hf(tensors)
    # bare state dict: a whole VJEPA3D or a single encoder
    stripped = {strip_key(k): v for k, v in tensors.items()}
    if any(k.split(".", 1)[0] in PARTS for k in stripped):
        parts: dict[str, dict[str, torch.Tensor]] = {}
        other = {}
        for k, v in stripped.items():
            head, _, rest = k.partition(".")
            if head in PARTS and rest:
                parts.setdefault(head, {})[rest] = v
            else:
                other[k] = v
        return ConvertedCheckpoint("state_dict", parts, other=other)
    return ConvertedCheckpoint("state_dict", {"encoder": stripped})


# ----------------------------------------------------------------------------------------------- adaptations
def resample_kernel_axis(w: torch.Tensor, dim: int, new_size: int) -> torch.Tensor:
    """Redistribute a kernel along ``dim`` to ``new_size`` taps, preserving the sum over that axis.

    The old taps are cells of width ``1/old`` on ``[0, 1]``, the new taps cells of width ``1/new``; each old
    tap's weight is shared among the new cells in proportion to their overlap with it. The sum over the axis is
    kept exactly, so an input that is constant along the axis gives the same response (2 -> 1 sums the taps,
    2 -> 4 splits each tap in two halves, 4 -> 2 sums pairs). Written by hand because this conservative
    remapping is not ``F.interpolate`` (which averages, and so does not keep the sum).
    """
    old = w.shape[dim]
    if old == new_size:
        return w
    if new_size < 1:
        raise ValueError(f"kernel size must be >= 1, got {new_size}")
    # overlap matrix M[new, old] = |new cell j ∩ old cell i| / |old cell i|; every column sums to one
    edges_o = torch.linspace(0, 1, old + 1, dtype=torch.float64)
    edges_n = torch.linspace(0, 1, new_size + 1, dtype=torch.float64)
    lo = torch.maximum(edges_n[:-1, None], edges_o[None, :-1])
    hi = torch.minimum(edges_n[1:, None], edges_o[None, 1:])
    m = (hi - lo).clamp(min=0) * old
    moved = w.movedim(dim, -1).to(torch.float64)
    out = moved @ m.T
    return out.movedim(-1, dim).to(w.dtype)


def fold_input_normalization(
    weight: torch.Tensor, bias: torch.Tensor | None, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel input normalisation ``(x_c - mean_c) / std_c`` into a patch embedding.

    ``weight`` is ``[E, C, (t,) p, p]`` (a Conv3d or Conv2d patch embedding without padding), ``bias`` ``[E]``
    or ``None``. Returns ``(w', b')`` with ``w'_c = w_c / std_c`` and
    ``b' = b - sum_c sum_kernel(w_c) * mean_c / std_c``, so the embedding of the raw input equals the original
    embedding of the normalised input exactly (up to float rounding). Reducing ``w'`` over the channels
    afterwards (``adapt_patch_weight``) then gives, for a gray image ``g``, the original network on the
    normalised RGB copy of ``g``.
    """
    c = weight.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"input normalisation has {len(mean)} mean / {len(std)} std values, weight {c} channels")
    if any(float(s_) <= 0 for s_ in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    shape = (1, c) + (1,) * (weight.ndim - 2)
    m = torch.as_tensor(mean, dtype=torch.float64).reshape(shape)
    sd = torch.as_tensor(std, dtype=torch.float64).reshape(shape)
    w64 = weight.to(torch.float64) / sd
    b64 = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.to(torch.float64)
    b64 = b64 - (w64 * m).flatten(1).sum(1)
    return w64.to(weight.dtype), b64.to(weight.dtype if bias is None else bias.dtype)


def _resolve_input_norm(input_norm, source: str, weight: torch.Tensor):
    """``(mean, std)`` to fold into ``weight`` for the ``input_norm`` option, or ``None``."""
    if input_norm is None or input_norm is False or input_norm == "none":
        return None
    if input_norm == "auto":
        if source not in _VIDEO_SOURCES or weight.shape[1] != 3:
            return None
        return IMAGENET_MEAN, IMAGENET_STD
    if input_norm == "imagenet":
        if weight.shape[1] != 3:
            raise ValueError(f"input_norm='imagenet' needs a 3-channel patch embedding, the file's has "
                             f"{weight.shape[1]}")
        return IMAGENET_MEAN, IMAGENET_STD
    if isinstance(input_norm, Mapping):
        return tuple(input_norm["mean"]), tuple(input_norm["std"])
    if isinstance(input_norm, (tuple, list)) and len(input_norm) == 2:
        return tuple(input_norm[0]), tuple(input_norm[1])
    raise ValueError(f"input_norm must be 'auto', 'imagenet', 'none'/None, (mean, std) or "
                     f"{{'mean': ..., 'std': ...}}, got {input_norm!r}")


def adapt_patch_weight(
    w: torch.Tensor, shape: Sequence[int], channel_adapt: str = "sum"
) -> tuple[torch.Tensor, list[str]]:
    """Adapt a Conv3d patch weight ``[E, C, t, p, p]`` to ``shape`` ``[E, C', t', p', p']``.

    Returns the new weight and a list of what was done. Raises ``ValueError`` when the embedding width differs
    or the channel change is not RGB -> 1 / 1 -> C.
    """
    if channel_adapt not in ("sum", "mean"):
        raise ValueError(f"channel_adapt must be 'sum' or 'mean', got {channel_adapt!r}")
    if w.ndim == 4:  # an image (Conv2d) patch embedding: one temporal tap
        w = w.unsqueeze(2)
    if w.ndim != 5 or len(shape) != 5:
        raise ValueError(f"expected a 5D Conv3d weight, got {list(w.shape)} -> {list(shape)}")
    how = []
    if w.shape[0] != shape[0]:
        raise ValueError(f"embedding width {w.shape[0]} != {shape[0]} cannot be adapted")
    c_old, c_new = w.shape[1], shape[1]
    if c_old != c_new:
        if c_new == 1:
            w = w.sum(1, keepdim=True) if channel_adapt == "sum" else w.mean(1, keepdim=True)
            how.append(f"{c_old}->1 channel ({channel_adapt})")
        elif c_old == 1:
            w = w.repeat(1, c_new, 1, 1, 1) / c_new
            how.append(f"1->{c_new} channels (repeated / {c_new})")
        else:
            raise ValueError(f"input channels {c_old} -> {c_new} cannot be adapted (only C->1 and 1->C)")
    for dim, name in ((2, "tubelet"), (3, "patch height"), (4, "patch width")):
        if w.shape[dim] != shape[dim]:
            how.append(f"{name} {w.shape[dim]}->{shape[dim]} (sum-preserving)")
            w = resample_kernel_axis(w, dim, shape[dim])
    return w.contiguous(), how


def _sincos_rows(embed_dim: int, pt, ph, pw, uniform_power: bool):
    """Sin-cos rows ``[M, E]`` for M position triples: the table the package's ViT computes
    (:func:`oct_foundation.networks.vit3d.sincos_pos_embed_at`; ``ValueError`` for a width it cannot build)."""
    from oct_foundation.networks.vit3d import sincos_pos_embed_at

    pos = torch.stack([torch.as_tensor(np.asarray(v), dtype=torch.float64).reshape(-1) for v in (pt, ph, pw)], -1)
    return sincos_pos_embed_at(embed_dim, pos, uniform_power=uniform_power)


def sincos_table_3d(embed_dim: int, grid: Sequence[int], uniform_power: bool = False,
                    positions: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The V-JEPA 3D sin-cos position table ``[T*H*W, E]`` on ``grid = (T, H, W)`` in (t, h, w) raster order.

    Channel layout as V-JEPA 1: ``[emb_t | emb_h | emb_w]`` with E/2, E/4, E/4 channels (or equal thirds, each
    ``ceil(E/6)*2``, with ``uniform_power``), each ``[sin | cos]`` of position * 10000^(-k/(n/2)).
    ``positions`` optionally replaces ``arange`` along each axis (fractional positions).
    """
    t, h, w = (int(g) for g in grid)
    if positions is None:
        positions = [torch.arange(n, dtype=torch.float64) for n in (t, h, w)]
    pt, ph, pw = (torch.as_tensor(p, dtype=torch.float64).numpy() for p in positions)
    gt, gh, gw = np.meshgrid(pt, ph, pw, indexing="ij")
    return _sincos_rows(embed_dim, gt, gh, gw, uniform_power)


def _factor_grids(n: int) -> list[tuple[int, int, int]]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    divisors = sorted(set(small + [n // d for d in small]))
    out = [(t, h, n // (t * h)) for t in divisors for h in divisors if (n // t) % h == 0]
    # square spatial grids first (the usual case), then by fewer frames
    out.sort(key=lambda g: (g[1] != g[2], g[0]))
    return out


def infer_sincos_grid(table: torch.Tensor, atol: float = 1e-4):
    """Recover ``((T, H, W), uniform_power)`` of a V-JEPA sin-cos table ``[1, N, E]`` or ``[N, E]``.

    A fixed sin-cos table encodes its own grid, so every factorisation of N is tried (first on a few rows, then
    on all) until the computed table matches. Returns ``None`` for a learned (non sin-cos) table.
    """
    tab = table.detach().reshape(-1, table.shape[-1]).float().cpu().numpy()
    n, e = tab.shape
    probe = np.unique(np.linspace(0, n - 1, min(n, 64)).round().astype(np.int64))
    few = probe[1:4] if len(probe) > 4 else probe  # row 0 is the same for every grid
    ups = []
    for up in (False, True):
        try:
            _sincos_rows(e, [0.0], [0.0], [0.0], up)
            ups.append(up)
        except ValueError:  # a width the package's sin-cos table does not have in this layout
            pass
    for t, h, w in _factor_grids(n):
        for up in ups:
            if any(
                np.abs(_sincos_rows(e, p // (h * w), (p // w) % h, p % w, up).numpy() - tab[p]).max() > atol
                for p in (few, probe)
            ):
                continue
            if np.abs(sincos_table_3d(e, (t, h, w), uniform_power=up).numpy() - tab).max() <= atol:
                return (t, h, w), up
    return None


def interpolate_pos_table(table: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> torch.Tensor:
    """Resample an additive position table ``[1, T*H*W, E]`` (or ``[N, E]``) from ``src_grid`` to ``dst_grid``.

    Trilinear on the ``[T, H, W]`` grid with ``align_corners=True`` (corner tokens keep their embedding and a
    grid ``n -> 2n-1 -> n`` round-trips exactly); returns ``[1, T'*H'*W', E]``. A size-1 source axis is copied.
    """
    e = table.shape[-1]
    src = tuple(int(g) for g in src_grid)
    dst = tuple(int(g) for g in dst_grid)
    if math.prod(src) != table.reshape(-1, e).shape[0]:
        raise ValueError(f"table with {table.reshape(-1, e).shape[0]} tokens does not fit grid {src}")
    if src == dst:
        return table.reshape(1, -1, e).clone()
    vol = table.reshape(1, *src, e).permute(0, 4, 1, 2, 3).to(torch.float64)
    out = F.interpolate(vol, size=dst, mode="trilinear", align_corners=True)
    return out.permute(0, 2, 3, 4, 1).reshape(1, -1, e).to(table.dtype)


# ------------------------------------------------------------------------------------------ state dict adapt
def _model_grid(module: nn.Module, n_tokens: int, table: torch.Tensor | None = None):
    """Token grid ``(T', H', W')`` of a network's position table (``grid_size(*img_size)`` or fingerprint)."""
    for owner in (module, getattr(module, "patch_embed", None)):
        gs, img = getattr(owner, "grid_size", None), getattr(module, "img_size", None)
        if callable(gs) and img is not None:
            try:
                grid = tuple(int(g) for g in gs(*tuple(img)))
            except TypeError:
                grid = None
            if grid is not None and math.prod(grid) == n_tokens:
                return grid
    for attr in ("grid", "token_grid"):
        grid = getattr(module, attr, None)
        if isinstance(grid, (tuple, list)) and len(grid) == 3 and math.prod(grid) == n_tokens:
            return tuple(int(g) for g in grid)
    if table is not None:
        found = infer_sincos_grid(table)
        if found is not None:
            return found[0]
    return None


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    channel_adapt: str = "sum",
    notes: Mapping[str, str] | None = None,
    src_grids: Mapping[str, Sequence[int]] | None = None,
    dst_grids: Mapping[str, Sequence[int]] | None = None,
    mask_token_keys: Iterable[str] = (),
    pos_table: str = "interpolate",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Adapt canonical ``state_dict`` to the names/shapes of ``target`` (a model's state dict).

    Returns ``(adapted_state_dict, report)`` with ``report.loaded/adapted/missing/unexpected/mismatched`` in
    ``target``'s names. ``notes`` marks keys the format conversion already changed (e.g. fused qkv). Position
    tables (keys ending in ``pos_embed``) are resampled from ``src_grids[key]`` (inferred from the sin-cos
    fingerprint when absent) to ``dst_grids[key]``: ``pos_table="interpolate"`` resamples trilinearly,
    ``"recompute"`` computes the exact sin-cos table of the new grid (sin-cos tables only). Never raises:
    unadaptable shapes land in ``mismatched``.
    """
    if pos_table not in ("interpolate", "recompute"):
        raise ValueError(f"pos_table must be 'interpolate' or 'recompute', got {pos_table!r}")
    notes = dict(notes or {})
    src_grids, dst_grids = dict(src_grids or {}), dict(dst_grids or {})
    rep = LoadReport(path="", source="")
    out: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        if key not in state_dict:
            rep.missing.append(key)
            continue
        val = state_dict[key]
        if not isinstance(ref, torch.Tensor):
            continue
        if tuple(val.shape) == tuple(ref.shape):
            out[key] = val.to(ref.dtype)
            if key in notes:
                rep.adapted[key] = notes[key]
            else:
                rep.loaded.append(key)
            continue
        try:
            if re.search(r"(^|\.)patch_embed\w*\.proj\.weight$", key):
                new, how = adapt_patch_weight(val, ref.shape, channel_adapt)
                desc = "; ".join(how)
            elif key.endswith("pos_embed"):
                new, desc = _adapt_pos_table(val, ref, src_grids.get(key), dst_grids.get(key), pos_table)
            elif key in mask_token_keys and val.numel() == ref.numel():
                new, desc = val.reshape(ref.shape), f"reshaped {list(val.shape)} -> {list(ref.shape)}"
            else:
                raise ValueError("no adaptation for this parameter")
        except ValueError as e:
            rep.mismatched[key] = f"file {list(val.shape)} vs model {list(ref.shape)}: {e}"
            continue
        out[key] = new.to(ref.dtype)
        rep.adapted[key] = f"{desc}; {list(val.shape)} -> {list(ref.shape)}"
    rep.unexpected = [k for k in state_dict if k not in target]
    return out, rep


def _adapt_pos_table(val, ref, src_grid, dst_grid, mode="interpolate"):
    if val.shape[-1] != ref.shape[-1]:
        raise ValueError(f"table width {val.shape[-1]} != {ref.shape[-1]}")
    n_src, n_dst = val.reshape(-1, val.shape[-1]).shape[0], ref.reshape(-1, ref.shape[-1]).shape[0]
    how = ""
    found = infer_sincos_grid(val) if (src_grid is None or mode == "recompute") else None
    if src_grid is None:
        if found is None:
            raise ValueError("source grid unknown (not a sin-cos table); pass source_grid=(T, H, W)")
        src_grid, how = found[0], " (source grid from its sin-cos pattern)"
    if dst_grid is None:
        dst_found = infer_sincos_grid(ref)
        if dst_found is None:
            raise ValueError("model token grid unknown")
        dst_grid = dst_found[0]
    if math.prod(src_grid) != n_src or math.prod(dst_grid) != n_dst:
        raise ValueError(f"grids {tuple(src_grid)} / {tuple(dst_grid)} do not match the token counts")
    if mode == "recompute":
        if found is None:
            raise ValueError("pos_table='recompute' needs a sin-cos table; this one is learned")
        new = sincos_table_3d(val.shape[-1], dst_grid, uniform_power=found[1]).reshape(ref.shape)
        return new, f"sin-cos recomputed {tuple(src_grid)} -> {tuple(dst_grid)}"
    new = interpolate_pos_table(val, src_grid, dst_grid).reshape(ref.shape)
    return new, f"trilinear {tuple(src_grid)} -> {tuple(dst_grid)}{how}"


# ---------------------------------------------------------------------------------------------- main loader
def _is_vjepa(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, p, None), nn.Module) for p in ("encoder", "target_encoder"))


def _grids_for(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    grids = {}
    for k, v in sd.items():
        if k.endswith("pos_embed") and isinstance(v, torch.Tensor) and v.ndim >= 2:
            owner = module
            for name in k.split(".")[:-1]:
                owner = getattr(owner, name, owner)
            g = _model_grid(owner, v.reshape(-1, v.shape[-1]).shape[0], v)
            if g is not None:
                grids[k] = g
    return grids


def _hints(report: LoadReport) -> list[str]:
    """Plain-language hints for the usual causes of missing / unexpected keys."""
    hints = []
    extra = [k for k in report.unexpected if re.search(r"(^|\.)mask_tokens\.\d+$", k)]
    if extra:
        n_model = len([k for k in report.loaded + list(report.adapted) if re.search(r"mask_tokens\.\d+$", k)])
        hints.append(
            f"the file has {n_model + len(extra)} predictor mask tokens, the model {n_model}: build it with "
            f"num_mask_tokens={n_model + len(extra)} or allow_unexpected=['predictor.mask_tokens.*']"
        )
    v21 = {"norms_block": "hierarchical_norms=True", "mod_embed": "modality_embedding=True",
           "patch_embed_img": "img_temporal_dim_size=1"}
    for frag, opt in v21.items():
        if any(frag in k for k in report.unexpected):
            hints.append(f"the file is a V-JEPA 2.1 encoder ({frag}): build the encoder with {opt} "
                         f"(and rope_variant='rotary', interpolate_rope=True), or use a vjepa2_1 preset")
        elif any(frag in k for k in report.missing):
            hints.append(f"the file has no {frag} (not a V-JEPA 2.1 encoder): build the encoder without {opt}")
    p21 = ("predictor.predictor_proj_context.", "predictor.video_mod_embed", "predictor.predictor_embed.0.")
    if any(k.startswith(p21) for k in report.unexpected):
        hints.append("the file's predictor is a V-JEPA 2.1 predictor (predictor_proj_context, modality embeddings, "
                     "hierarchical predictor_embed): use a vjepa2_1 preset, or build VJEPA3D with "
                     "predictor_kwargs=dict(num_levels=..., context_proj=True, modality_embedding=True)")
    elif any(k.startswith(p21) for k in report.missing):
        hints.append("the file's predictor is not a V-JEPA 2.1 predictor: build it without the 2.1 "
                     "predictor_kwargs (num_levels, context_proj, modality_embedding)")
    if any(k.endswith("pos_embed") and not k.endswith("predictor_pos_embed") for k in report.missing):
        hints.append("the file's encoder has no additive position table (V-JEPA 2 uses RoPE): "
                     "build the model with pos_embed='rope'")
    if any(k.endswith("pos_embed") and not k.endswith("predictor_pos_embed") for k in report.unexpected):
        hints.append("the file's encoder adds a position table (V-JEPA 1): build the model with "
                     "pos_embed='sincos' to use it")
    return hints


def _recomputed_sincos(module: nn.Module, key: str, table: torch.Tensor) -> bool:
    """True when a file's position table is a fixed sin-cos table that ``module`` computes itself.

    The package's predictor computes its sin-cos table on the fly instead of storing it, so V-JEPA 1's
    ``predictor_pos_embed`` carries no information for it, provided the channel layout agrees.
    """
    if not key.endswith("pos_embed") or getattr(module, "use_rope", True):
        return False
    found = infer_sincos_grid(table)
    return found is not None and found[1] == bool(getattr(module, "uniform_power", False))


def load_pretrained(
    model: nn.Module,
    path,
    source: str = "auto",
    checkpoint_key: str = "auto",
    channel_adapt: str = "sum",
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
    strict: bool = True,
    print_report: bool = True,
    use_target_encoder: bool = False,
    source_grid: Sequence[int] | None = None,
    pos_table: str = "interpolate",
    input_norm: Any = "auto",
) -> LoadReport:
    """Load a V-JEPA checkpoint (local path or fsspec URL) into a ``VJEPA3D`` or a ``VisionTransformer3D``.

    Args:
        model: a ``VJEPA3D`` (encoder, target encoder and, when the file has one, predictor are loaded) or a
            ``VisionTransformer3D`` (the chosen encoder only).
        path: checkpoint file; read with ``weights_only=True`` (pickled code is refused).
        source: ``auto`` (detect), ``official``, ``hf``, ``vjepa1`` or ``state_dict``.
        checkpoint_key: which file encoder feeds the context encoder: ``auto`` (``encoder``, else
            ``target_encoder``), ``encoder`` or ``target_encoder``.
        channel_adapt: RGB -> one channel by ``sum`` (exact for gray copied to RGB) or ``mean``.
        allow_missing / allow_unexpected: glob patterns of keys that may be missing / ignored (e.g. ``predictor.*``).
            A key in ``allow_missing`` whose file shape cannot be adapted also keeps its initial value (reported
            as MISMATCH ... kept at init).
        strict: raise on missing / unexpected keys outside the allow-lists. Shape mismatches outside
            ``allow_missing`` always raise.
        print_report: print the one report table.
        use_target_encoder: take the file's target encoder as the source of both encoder and target encoder.
        source_grid: token grid ``(T, H, W)`` of the file's position table when it is not a sin-cos table.
        pos_table: a file position table on another grid is resampled trilinearly on ``[T, H, W]``
            (``"interpolate"``, as V-JEPA does for other input sizes) or, for sin-cos tables, recomputed exactly
            on the model's grid (``"recompute"``, what the package's ViT does for non-native input sizes).
        input_norm: input normalisation the file's network was trained with, folded exactly into the patch
            embedding weight and bias (:func:`fold_input_normalization`) so the model takes inputs in [0, 1] as
            the package's transforms produce them: for a gray volume ``g`` the adapted one-channel model equals the
            file's network on the normalised RGB copy of ``g`` (``channel_adapt="sum"``). ``"auto"`` (default)
            folds the ImageNet mean/std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, what V-JEPA normalises
            with) when the file is a V-JEPA file (``official``, ``hf``, ``vjepa1``) with an RGB patch embedding,
            and nothing otherwise (the package's own files); ``"imagenet"`` always folds them; ``"none"`` / ``None``
            folds nothing (the model then equals the file's network on un-normalised RGB); ``(mean, std)`` folds
            other values. The report's ``folded_normalization`` and a note say what was folded.

    The target encoder is loaded from the file's target encoder when there is one (and the context encoder is
    not taken from it), else initialised as a copy of the adapted context encoder.

    Returns the :class:`LoadReport`. Raises :class:`CheckpointError` (message: path, problem, table).
    """
    if checkpoint_key not in ("auto", "encoder", "target_encoder"):
        raise ValueError(f"checkpoint_key must be auto, encoder or target_encoder, got {checkpoint_key!r}")
    if channel_adapt not in ("sum", "mean"):
        raise ValueError(f"channel_adapt must be 'sum' or 'mean', got {channel_adapt!r}")
    if pos_table not in ("interpolate", "recompute"):
        raise ValueError(f"pos_table must be 'interpolate' or 'recompute', got {pos_table!r}")
    if isinstance(input_norm, str) and input_norm not in ("auto", "imagenet", "none"):
        raise ValueError(f"input_norm must be 'auto', 'imagenet', 'none'/None, (mean, std) or "
                         f"{{'mean': ..., 'std': ...}}, got {input_norm!r}")
    raw = read_weights(path)
    try:
        conv = convert_checkpoint(raw, source=source)
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    parts = conv.parts
    enc_key = "target_encoder" if use_target_encoder else checkpoint_key
    if enc_key == "auto":
        enc_key = "encoder" if "encoder" in parts else "target_encoder"
    if enc_key not in parts:
        raise CheckpointError(path, f"no {enc_key!r} weights in the file (found: {sorted(parts) or 'none'})")

    report = LoadReport(path=str(path), source=conv.source)
    is_vjepa = _is_vjepa(model)
    plan: list[tuple[str, str, nn.Module]] = []  # (model prefix, file part, module)
    if is_vjepa:
        plan.append(("encoder.", enc_key, model.encoder))
        report.notes.append(f"encoder <- file {enc_key!r}")
        tgt_key = "target_encoder" if ("target_encoder" in parts and enc_key == "encoder") else enc_key
        if use_target_encoder or tgt_key != "target_encoder":
            report.notes.append(
                "target_encoder <- copy of the adapted encoder"
                + ("" if use_target_encoder else " (the file has no separate target encoder)")
            )
            tgt_key = None
        else:
            plan.append(("target_encoder.", "target_encoder", model.target_encoder))
            report.notes.append("target_encoder <- file 'target_encoder'")
        if isinstance(getattr(model, "predictor", None), nn.Module):
            if "predictor" in parts:
                plan.append(("predictor.", "predictor", model.predictor))
                report.notes.append("predictor <- file 'predictor'")
            else:
                report.missing += [f"predictor.{k}" for k in model.predictor.state_dict()]
    else:
        tgt_key = None
        plan.append(("", enc_key, model))
        report.notes.append(f"encoder <- file {enc_key!r}")
        unused = sorted(p for p in parts if p != enc_key)
        if unused:
            report.notes.append(f"not used for an encoder: {', '.join(unused)}")

    new_sd: dict[str, torch.Tensor] = {}
    for prefix, part, module in plan:
        target = module.state_dict()
        src = parts[part]
        folded = []
        for wkey in [k for k in src if re.fullmatch(r"patch_embed\w*\.proj\.weight", k)]:
            try:
                norm = _resolve_input_norm(input_norm, conv.source, src[wkey])
                if norm is None:
                    continue
                bkey = wkey[: -len("weight")] + "bias"
                w, b = fold_input_normalization(src[wkey], src.get(bkey), *norm)
            except ValueError as e:
                raise CheckpointError(path, f"{part}.{wkey}: {e}") from None
            if bkey not in src and bkey not in target:
                raise CheckpointError(path, f"{part}.{wkey}: folding the input normalisation needs a bias, "
                                            f"and neither the file nor the model has {bkey!r}")
            src = {**src, wkey: w, bkey: b}
            folded += [wkey, bkey]
            report.folded_normalization = {
                "mean": [float(v) for v in norm[0]], "std": [float(v) for v in norm[1]],
                "keys": report.folded_normalization.get("keys", []) + [prefix + wkey, prefix + bkey],
            }
        notes = {k.split(":", 1)[1]: v for k, v in conv.notes.items() if k.startswith(part + ":")}
        src_grids = {k: tuple(source_grid) for k in src if k.endswith("pos_embed")} if source_grid else {}
        sd, rep = adapt_state_dict(
            src, target, channel_adapt=channel_adapt, notes=notes, src_grids=src_grids,
            dst_grids=_grids_for(module, target), mask_token_keys=[k for k in target if "mask_token" in k],
            pos_table=pos_table,
        )
        for k in ("pos_embed",):
            if k in src and k in target and hasattr(module, "uniform_power"):
                found = infer_sincos_grid(src[k])
                if found is not None and found[1] != bool(module.uniform_power):
                    report.notes.append(
                        f"{prefix}{k}: the file's sin-cos table has uniform_power={found[1]}, the model "
                        f"{bool(module.uniform_power)}; other input sizes would use a different table"
                    )
        new_sd.update({prefix + k: v for k, v in sd.items()})
        for k in folded:
            if k in rep.loaded:
                rep.loaded.remove(k)
                rep.adapted[k] = "input mean/std folded"
            elif k in rep.adapted:
                rep.adapted[k] = "input mean/std folded; " + rep.adapted[k]
        report.loaded += [prefix + k for k in rep.loaded]
        report.adapted.update({prefix + k: v for k, v in rep.adapted.items()})
        report.missing += [prefix + k for k in rep.missing]
        report.mismatched.update({prefix + k: v for k, v in rep.mismatched.items()})
        file_prefix = (part + ".") if is_vjepa or part != "encoder" else ""
        for k in rep.unexpected:
            if _recomputed_sincos(module, k, src[k]):
                report.notes.append(
                    f"{file_prefix}{k}: fixed sin-cos table, recomputed identically by the model (not stored)"
                )
            else:
                report.unexpected.append(file_prefix + k)
    if report.folded_normalization:
        fn = report.folded_normalization
        report.notes.append(
            f"input normalisation (x - mean) / std with mean={tuple(round(v, 6) for v in fn['mean'])}, "
            f"std={tuple(round(v, 6) for v in fn['std'])} folded into "
            f"{', '.join(k for k in fn['keys'] if k.endswith('weight'))} and its bias: feed inputs in [0, 1], "
            f"un-normalised (input_norm='none' to keep the file's weights as they are)"
        )
    if is_vjepa and tgt_key is None:
        for k in model.target_encoder.state_dict():
            if "encoder." + k in new_sd:
                new_sd["target_encoder." + k] = new_sd["encoder." + k].clone()
                report.adapted["target_encoder." + k] = _COPIED
            else:
                report.missing.append("target_encoder." + k)
    report.unexpected += sorted(conv.other)

    report.notes += _hints(report)
    report.allowed_missing = [k for k in report.missing if _match_any(k, allow_missing)]
    report.allowed_unexpected = [k for k in report.unexpected if _match_any(k, allow_unexpected)]
    report.allowed_mismatched = [k for k in report.mismatched if _match_any(k, allow_missing)]
    for k in report.allowed_mismatched:  # explicitly allowed to keep its initial value
        new_sd.pop(k, None)
    p = report.problems
    if p["mismatched"] or (strict and (p["missing"] or p["unexpected"])):
        raise CheckpointError(path, report.failure(
            type(model).__name__, "allow_missing / allow_unexpected take glob patterns of keys that may differ"))

    with torch.no_grad():
        result = model.load_state_dict(new_sd, strict=False)
    if result.unexpected_keys:  # internal consistency: every adapted key is a model key
        raise CheckpointError(path, f"internal key mismatch {result.unexpected_keys}\n" + report.table())
    if print_report:
        print(report.table())
    return report
