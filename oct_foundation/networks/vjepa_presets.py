"""Architectures of every public V-JEPA 2 / 2.1 checkpoint, as ``VJEPA3D`` keyword arguments.

Each entry builds the encoder (one input channel: the RGB patch embedding is reduced and the ImageNet
normalisation folded on load, see :func:`oct_foundation.networks.pretrained.load_pretrained`) and the predictor
of the file, so ``load_pretrained(VJEPA3D(**VJEPA_CHECKPOINT_PRESETS[name]), file)`` maps every encoder and
predictor tensor strictly. Sizes follow the public code (facebookresearch/vjepa2 ``src/models/vision_transformer.py``,
``src/hub/backbones.py`` and ``app/vjepa_2_1``):

* V-JEPA 2.0: ViT-L/16 (1024 x 24, 16 heads), ViT-H/16 (1280 x 32, 16 heads), ViT-g/16 (1408 x 40, 22 heads,
  MLP ratio 48/11) at 256 px, ViT-g/16 at 384 px; tubelet 2; RoPE with 2.0's tiled angles
  (``rope_variant="vjepa2"``); predictor 12 blocks x 384, 12 heads, MLP ratio 4, 10 mask tokens.
* V-JEPA 2.1: ViT-B/16 (768 x 12, 12 heads) and ViT-L/16 (distilled), ViT-g/16, ViT-G/16 (1664 x 48, 26 heads;
  the public builder misspells ``mlp_ratio`` so its MLP ratio is the default 4) at 384 px; exact rotary RoPE,
  ``interpolate_rope``, modality embeddings, the single-frame ``patch_embed_img`` and the four hierarchical
  norms. The 2.1 predictor (``app/vjepa_2_1/models/predictor.py`` as ``src/hub/backbones.py`` builds it for the
  four files): 384 wide, 12 heads, MLP 4, 8 mask tokens, RoPE, modality embeddings and a context projection
  (``predictor_proj_context``, the dense loss); ViT-g/G: 24 blocks on the 4 concatenated hierarchical levels
  (``predictor_embed`` = Linear(4E, E), GELU, Linear(E, 384); ``predictor_proj[_context]`` Linear(384, 4E));
  distilled ViT-B/L: 12 blocks on the last level only (``predictor_embed`` Linear(E, 384)) predicting their
  ViT-G teacher's 1664 channels (``predictor_proj[_context]`` Linear(384, 1664)). Encoder and predictor load
  strictly, no allow-list. The g/G predictors train with the package's 2.1 objective as they are (deep
  self-supervision on the 4 levels; ``dense_loss=True`` adds the context loss weighted by
  ``context_loss_weight`` 0.5, the 2.1 recipe's ``lambda_value_vid``; ``app/vjepa_2_1/train.py`` defaults to 0
  and reads it from a config); the B/L predictors run (prediction of the teacher's
  features) but cannot be trained against the file's own target encoder (1024/768 channels, the teacher is not
  in the file): for JEPA training use :data:`VJEPA21_TRAINING_PRESETS` (``vjepa2_1_vitb_384_jepa``,
  ``vjepa2_1_vitl_384_jepa``: the same network with the predictor's two projections to the model's own width,
  which start from their initialisation; the load must allow ``predictor.predictor_proj*``).
  The predictor's ``interpolate_rope`` follows the 2.1 training code (``init_video_model`` passes the encoder's
  option to both); the hub builder leaves it off for the predictor (``predictor_kwargs`` can turn it off).
  Not reproduced from ``train.py``: the progressive context weight (0 until iteration 15k, linear to lambda at
  30k; here constant), the distance-weighted context loss (``weight_distance_loss``), ``normalize_predictor``,
  and its mask-token index (the public wrapper passes the clip-length group, so with one clip length every mask
  configuration uses token 0; here configuration ``i`` uses token ``i``).

``img_size`` is nominal (RoPE works on any grid); the OCT defaults are one channel and the files' 16 px patches.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

__all__ = ["VJEPA_CHECKPOINT_PRESETS", "VJEPA_CHECKPOINT_FILES", "VJEPA21_TRAINING_PRESETS", "get_checkpoint_preset",
           "RECIPES", "recipe_args"]

_PREDICTOR_20 = dict(predictor_embed_dim=384, predictor_depth=12, predictor_num_heads=12, predictor_mlp_ratio=4.0,
                     num_mask_tokens=10)
_COMMON = dict(in_chans=1, patch_size=16, tubelet_size=2, pos_embed="rope", qkv_bias=True, **_PREDICTOR_20)
_V21_ENCODER = dict(interpolate_rope=True, rope_pretrained_grid=16, modality_embedding=True,
                    img_temporal_dim_size=1, hierarchical_norms=True)
#: V-JEPA 2.1 predictor (src/hub/backbones.py ``_make_vjepa2_1_model``): 384 wide, 12 heads, 8 mask tokens,
#: ``return_all_tokens`` (context projection); ViT-g/G 24 blocks on 4 levels, distilled B/L 12 blocks on 1 level
#: predicting the ViT-G teacher's 1664 channels
_V21_TEACHER_DIM = 1664
_V21_PREDICTOR = dict(predictor_embed_dim=384, predictor_num_heads=12, predictor_mlp_ratio=4.0, num_mask_tokens=8,
                      context_loss_weight=0.5)
_V21_PREDICTOR_OPTIONS = dict(context_proj=True, modality_embedding=True, interpolate_rope=True,
                              rope_pretrained_grid=16)

_SIZES = {
    "vitb": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vitl": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vith": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "vitg": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    "vitG": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=4.0),
}


def _v20(size: str, px: int) -> Dict[str, Any]:
    return dict(_COMMON, img_size=(64, px, px), rope_variant="vjepa2", **_SIZES[size])


def _v21(size: str, px: int = 384) -> Dict[str, Any]:
    distilled = size in ("vitb", "vitl")
    levels = dict(num_levels=1, out_embed_dim=_V21_TEACHER_DIM) if distilled else dict(num_levels=4)
    return dict(_COMMON, img_size=(16, px, px), rope_variant="rotary", encoder_kwargs=dict(_V21_ENCODER),
                **{**_V21_PREDICTOR, "predictor_depth": 12 if distilled else 24},
                predictor_kwargs=dict(_V21_PREDICTOR_OPTIONS, **levels), **_SIZES[size])


#: preset name -> ``VJEPA3D`` keyword arguments
VJEPA_CHECKPOINT_PRESETS: Dict[str, Dict[str, Any]] = {
    "vjepa2_vitl_256": _v20("vitl", 256),
    "vjepa2_vith_256": _v20("vith", 256),
    "vjepa2_vitg_256": _v20("vitg", 256),
    "vjepa2_vitg_384": _v20("vitg", 384),
    "vjepa2_1_vitb_384": _v21("vitb"),
    "vjepa2_1_vitl_384": _v21("vitl"),
    "vjepa2_1_vitg_384": _v21("vitg"),
    "vjepa2_1_vitG_384": _v21("vitG"),
}

#: the distilled 2.1 ViT-B/L for JEPA training on their own target encoder: the file's network with the predictor's
#: ``predictor_proj`` / ``predictor_proj_context`` to the model's width (from their initialisation; the file's
#: project to the 1664-channel teacher). Load with ``allow_missing=["predictor.predictor_proj*"]`` (the bundle's
#: default ``predictor.*`` covers it).
VJEPA21_TRAINING_PRESETS: Dict[str, Dict[str, Any]] = {}
for _name in ("vjepa2_1_vitb_384", "vjepa2_1_vitl_384"):
    _kw = copy.deepcopy(VJEPA_CHECKPOINT_PRESETS[_name])
    _kw["predictor_kwargs"]["out_embed_dim"] = None
    VJEPA21_TRAINING_PRESETS[_name + "_jepa"] = _kw

#: preset name -> (release file, the file's key holding the released encoder, whether the predictor loads)
VJEPA_CHECKPOINT_FILES: Dict[str, Dict[str, Any]] = {
    "vjepa2_vitl_256": dict(file="vitl.pt", encoder_key="encoder, target_encoder", predictor=True),
    "vjepa2_vith_256": dict(file="vith.pt", encoder_key="encoder, target_encoder", predictor=True),
    "vjepa2_vitg_256": dict(file="vitg.pt", encoder_key="encoder, target_encoder", predictor=True),
    "vjepa2_vitg_384": dict(file="vitg-384.pt", encoder_key="encoder, target_encoder", predictor=True),
    "vjepa2_1_vitb_384": dict(file="vjepa2_1_vitb_dist_vitG_384.pt", encoder_key="ema_encoder", predictor=True),
    "vjepa2_1_vitl_384": dict(file="vjepa2_1_vitl_dist_vitG_384.pt", encoder_key="ema_encoder", predictor=True),
    "vjepa2_1_vitg_384": dict(file="vjepa2_1_vitg_384.pt", encoder_key="target_encoder", predictor=True),
    "vjepa2_1_vitG_384": dict(file="vjepa2_1_vitG_384.pt", encoder_key="target_encoder", predictor=True),
}


def get_checkpoint_preset(name: str) -> Dict[str, Any]:
    """A copy of the ``VJEPA3D`` keyword arguments of public checkpoint ``name``; ``KeyError`` lists the names."""
    if name not in VJEPA_CHECKPOINT_PRESETS:
        raise KeyError(f"unknown V-JEPA checkpoint preset {name!r}; known: {sorted(VJEPA_CHECKPOINT_PRESETS)}")
    return copy.deepcopy(VJEPA_CHECKPOINT_PRESETS[name])


#: training recipes as overrides of ``bundles/oct_vjepa_pretrain/configs/train.json`` (top-level keys, and
#: ``network_def#num_mask_tokens``). ``vjepa2``: the published V-JEPA 2 pretraining settings: EMA momentum 0.99925
#: constant, weight decay 0.04 constant, LR 5.25e-4, predictor 12 x 384 (12 heads) with 10 mask tokens; the masks
#: are the bundle's default pair (8 blocks of spatial scale 0.15 + 2 of 0.7, full depth).
#: ``vjepa1``: the bundle's defaults (V-JEPA 1 style: EMA 0.998 -> 1 linear, weight decay 0.04 -> 0.4 cosine).
RECIPES: Dict[str, Dict[str, Any]] = {
    "vjepa1": {"learning_rate": 6.25e-4, "weight_decay": 0.04, "final_weight_decay": 0.4, "ema_start": 0.998,
               "ema_end": 1.0, "ema_mode": "linear"},
    "vjepa2": {"learning_rate": 5.25e-4, "weight_decay": 0.04, "final_weight_decay": 0.04, "ema_start": 0.99925,
               "ema_end": 0.99925, "ema_mode": "linear", "predictor_embed_dim": 384, "predictor_depth": 12,
               "predictor_num_heads": 12, "network_def#num_mask_tokens": 10},
}


def recipe_args(name: str) -> list:
    """Command-line overrides (``["--key", "value", ...]``) of recipe ``name`` for ``python -m monai.bundle run``."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    out = []
    for k, v in RECIPES[name].items():
        out += [f"--{k}", str(v)]
    return out
