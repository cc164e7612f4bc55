"""Named network architectures: ``PRESETS`` maps a name to ``VJEPA3D`` keyword arguments (a bundle's network_def).

The registry holds the architectures of every public V-JEPA 2 / 2.1 checkpoint
(:data:`oct_foundation.networks.vjepa_presets.VJEPA_CHECKPOINT_PRESETS`, e.g. ``vjepa2_vitl_256``,
``vjepa2_1_vitl_384``), the distilled 2.1 ViT-B/L for JEPA training on their own targets
(:data:`~oct_foundation.networks.vjepa_presets.VJEPA21_TRAINING_PRESETS`, ``vjepa2_1_vitl_384_jepa``); the
package's own sizes are added beside them. :func:`build_vjepa` is what the pretraining
bundle's ``network_def`` calls: ``--preset NAME`` replaces the architecture keys by the preset's while the bundle
keeps its input keys (``in_chans``, ``img_size``).
"""
from __future__ import annotations

import copy
from typing import Any, Dict

from .vjepa_presets import VJEPA21_TRAINING_PRESETS, VJEPA_CHECKPOINT_PRESETS

__all__ = ["PRESETS", "OCT_PRESETS", "get_preset", "build_vjepa"]

#: preset name -> ``VJEPA3D`` keyword arguments
PRESETS: Dict[str, Dict[str, Any]] = {}
PRESETS.update(copy.deepcopy(VJEPA_CHECKPOINT_PRESETS))
PRESETS.update(copy.deepcopy(VJEPA21_TRAINING_PRESETS))

#: the package's own sizes: ``vit_tiny_oct`` is the demo's network (scripts/demo.sh ``NET``/``PRED``),
#: ``vit_small_oct`` the pretraining bundle's defaults (configs/train.json)
OCT_PRESETS: Dict[str, Dict[str, Any]] = {
    "vit_tiny_oct": dict(in_chans=1, img_size=(16, 64, 64), patch_size=16, tubelet_size=2, embed_dim=96, depth=4,
                         num_heads=4, mlp_ratio=4.0, pos_embed="rope", predictor_embed_dim=64, predictor_depth=2,
                         predictor_num_heads=4),
    "vit_small_oct": dict(in_chans=1, img_size=(16, 128, 128), patch_size=16, tubelet_size=2, embed_dim=384,
                          depth=12, num_heads=6, mlp_ratio=4.0, pos_embed="rope", predictor_embed_dim=192,
                          predictor_depth=6, predictor_num_heads=6),
}
PRESETS.update(copy.deepcopy(OCT_PRESETS))

#: keys a bundle keeps from its own configuration when a preset is chosen (input geometry, not architecture)
_INPUT_KEYS = ("in_chans", "img_size")


def get_preset(name: str) -> Dict[str, Any]:
    """A copy of preset ``name``'s ``VJEPA3D`` keyword arguments; ``KeyError`` lists the known names."""
    if name not in PRESETS:
        raise KeyError(f"unknown network preset {name!r}; known: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def build_vjepa(preset: str = "", **kwargs):
    """``VJEPA3D(**kwargs)``, or with ``preset`` the preset's architecture over ``kwargs`` (input keys kept)."""
    from .vjepa3d import VJEPA3D

    if preset:
        arch = {k: v for k, v in get_preset(preset).items() if k not in _INPUT_KEYS or k not in kwargs}
        kwargs = {**kwargs, **arch}
    return VJEPA3D(**kwargs)
