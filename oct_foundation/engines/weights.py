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
    # Checked before loading: PyTorch copies every tensor that fits before it raises, which would leave the
    # network half-loaded.
    own = network.state_dict()
    problems = [f"shape of {k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing:
            problems.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if problems:
        raise CheckpointError(path, f"does not match the network ({'; '.join(problems[:4])})")
    network.load_state_dict(state, strict=strict)
    return network
