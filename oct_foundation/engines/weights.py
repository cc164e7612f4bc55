"""Loading a bundle's shareable weight file (``models/model.pt``) into its network."""
from __future__ import annotations

from typing import Mapping

import torch

from oct_foundation import io
from oct_foundation.errors import CheckpointError

__all__ = ["load_network_weights"]


def load_network_weights(network: torch.nn.Module, path, strict: bool = True) -> torch.nn.Module:
    """Load a plain ``state_dict`` file (read with ``weights_only=True``) into ``network`` and return it.

    An empty ``path`` returns the network unchanged; a dict holding only ``{"model": state_dict}`` (what an
    Ignite ``CheckpointLoader`` saves for one object) is unwrapped. A file that does not fit the network raises
    :class:`CheckpointError` naming the file and the first differing keys.
    """
    if not path:
        return network
    state = io.torch_load(path)
    if isinstance(state, Mapping) and len(state) == 1 and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(path, f"expected a state_dict, got {type(state).__name__}")
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(path, "does not match the network: " + " ".join(lines[1:3])[:400]) from None
    return network
