"""The embedding network of the pretraining bundle's inference config: a ``VJEPA3D`` that returns one vector."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from oct_foundation.networks.vjepa3d import VJEPA3D

__all__ = ["VJEPAEmbedding"]


class VJEPAEmbedding(VJEPA3D):
    """A :class:`~oct_foundation.networks.VJEPA3D` whose ``forward`` returns pooled embeddings.

    ``forward(x [B, C, T, H, W]) -> [B, E]``: the mean of the tokens of the target encoder (with
    ``use_target_encoder``, what V-JEPA evaluates) or of the context encoder. The parameters (and so the
    ``state_dict`` names) are exactly those of ``VJEPA3D``, so the pretraining bundle's ``models/model.pt``
    loads unchanged; only the output differs, which lets the inference config's ``network_def`` describe
    what inference writes (one ``[E]`` vector per volume) and export to TorchScript with that output.
    T, H, W must be multiples of the tubelet and patch sizes (:class:`oct_foundation.engines.embedding_inference.EmbeddingProcessor` pads by edge
    replication before calling the encoder). ``network_args``: ``VJEPA3D`` keyword arguments as one dict (what
    :func:`oct_foundation.networks.resolve_architecture` reads from a model file), under the keyword arguments.
    """

    def __init__(self, *args, use_target_encoder: bool = True, network_args: Mapping[str, Any] | None = None,
                 **kwargs):
        super().__init__(*args, **{**dict(network_args or {}), **kwargs})
        self.use_target_encoder = bool(use_target_encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.encode(x, pool="mean", target=self.use_target_encoder)
