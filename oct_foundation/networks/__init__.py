"""Networks: 3D ViT encoder, V-JEPA predictor and model, masks, pretrained loading, MAISI VAE, heads.

Names are resolved lazily (module ``__getattr__``) so that ``import oct_foundation.networks`` stays cheap and a
bundle config can refer to ``oct_foundation.networks.VJEPA3D`` without importing every submodule.
"""
import importlib

_EXPORTS = {
    # vit3d
    "VisionTransformer3D": "vit3d",
    "PatchEmbed3D": "vit3d",
    "Attention": "vit3d",
    "Block": "vit3d",
    "sincos_pos_embed_3d": "vit3d",
    "token_positions": "vit3d",
    "rope_tables": "vit3d",
    "apply_rope": "vit3d",
    "gather_tokens": "vit3d",
    # predictor / model
    "Predictor3D": "predictor",
    "VJEPA3D": "vjepa3d",
    "VJEPAEmbedding": "embedding",
    "LatentDiffusionUNet": "diffusion",
    # masking
    "MultiBlockMask3D": "masking",
    "default_mask_generators": "masking",
    "VJEPA_MASK_CONFIGS": "masking",
    # weights: one loader for every file, one report
    "load_weights": "weights",
    "LoadReport": "weights",
    "ENCODER_SOURCES": "weights",
    # V-JEPA checkpoints (the vjepa2 adapter of load_weights)
    "load_pretrained": "pretrained",
    # MAISI autoencoder
    "StackedVideoVAE": "maisi",
    "maisi_autoencoder_config": "maisi",
    "check_split_safety": "maisi",
    # downstream heads
    "SegmentationNet": "heads",
    "ClassificationNet": "heads",
    "AttentivePooler": "heads",
    "set_encoder_trainable": "freezing",
    "freeze_encoder": "freezing",
    "encoder_units": "freezing",
    "build_encoder": "heads",
    "SegmentationHead": "heads",
    "ClassificationProbe": "heads",
    # named architectures
    "PRESETS": "presets",
    "OCT_PRESETS": "presets",
    "get_preset": "presets",
    "build_vjepa": "presets",
    # self-describing model files (model.pt + model.json)
    "save_model": "model_files",
    "read_model_spec": "model_files",
    "build_from_file": "model_files",
    "resolve_architecture": "model_files",
    "records_init_args": "model_files",
}

_SUBMODULES = ("vit3d", "predictor", "vjepa3d", "masking", "pretrained", "maisi", "heads", "presets", "model_files",
               "weights", "embedding", "diffusion", "freezing")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
