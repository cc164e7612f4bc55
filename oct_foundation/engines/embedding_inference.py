"""Embeddings of whole OCT volumes with a pretrained V-JEPA encoder, as a ``BatchInference`` processor.

Each volume is read at full depth (no depth subsampling: the encoder sees every B-scan), preprocessed
(spacing, intensity normalisation, in-plane resize; depth padded by edge replication to a multiple of the
tubelet size), encoded, and written next to ``out_stem``:

* ``<out_stem>_embedding.pt`` (or ``.npy``): the mean-pooled embedding ``[E]`` (float32);
* optionally ``<out_stem>_tokens.pt`` (or ``.npy``): all tokens ``[N, E]`` in ``(t, h, w)`` raster order.

Reading, running and the atomic writers are those of the processors' base
(:class:`oct_foundation.engines.processors.InferenceProcessor`); the returned row holds the output file names (not
paths, so the summary reveals nothing about the inputs), the embedding size, the token grid and the depth.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import torch

from oct_foundation.engines.processors import InferenceProcessor

__all__ = ["EmbeddingProcessor", "run_embedding_inference"]


class EmbeddingProcessor(InferenceProcessor):
    """``processor(item, out_stem) -> row`` for :class:`oct_foundation.engines.BatchInference`.

    Args:
        network: a ``VJEPA3D`` (its ``target_encoder`` with ``use_target_encoder``, else ``encoder``) or a
            ``VisionTransformer3D``.
        target_spacing: ``(sd, sh, sw)`` in mm for ``Spacingd`` (None: keep).
        image_size: in-plane ``(H, W)`` after resampling (None: keep).
        transforms: preprocessing of an item ``{"image": path}`` to ``{"image": [C, D, H, W]}``; default
            ``build_preprocessing(d_target=None, train=False, eval_full_depth=True, ...)`` (full depth).
        device: where the encoder runs.
        save_tokens: also write the token tensor.
        fmt: ``"pt"`` (torch tensors) or ``"npy"``.
        use_target_encoder: for a ``VJEPA3D``, use the EMA target encoder (what V-JEPA evaluates) or the context
            encoder.
        amp: bf16 autocast.
        inferer: a MONAI ``Inferer`` (``inferer(inputs, network)``) that runs the encoder on the
            ``[1, C, D, H, W]`` batch (default ``SimpleInferer``); the encoder returns tokens ``[1, N, E]``.

    Reading, the device, autocast, the inferer and the writers are those of
    :class:`~oct_foundation.engines.processors.InferenceProcessor`: items given as paths are read and preprocessed
    with ``transforms``; items already loaded (from a MONAI ``Dataset`` given to ``BatchInference``) hold
    ``{"image": MetaTensor [C, D, H, W]}`` and are used as is.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        target_spacing: Sequence[float] | None = None,
        image_size: Sequence[int] | None = None,
        transforms: Callable | Sequence | None = None,
        device: str | torch.device = "cpu",
        save_tokens: bool = False,
        fmt: str = "pt",
        use_target_encoder: bool = True,
        normalize: bool | str = True,
        amp: bool = False,
        image_key: str = "image",
        inferer: Callable | None = None,
    ) -> None:
        if fmt not in ("pt", "npy"):
            raise ValueError(f"fmt must be 'pt' or 'npy', got {fmt!r}")
        if hasattr(network, "target_encoder") and hasattr(network, "encoder"):
            network = network.target_encoder if use_target_encoder else network.encoder
        super().__init__(network, device, transforms, inferer, amp, image_key, target_spacing=target_spacing,
                         image_size=image_size, normalize=normalize)
        self.save_tokens = bool(save_tokens)
        self.fmt = fmt
        pe = getattr(self.encoder, "patch_embed", None)
        kernel = getattr(getattr(pe, "proj", None), "kernel_size", None)
        self.kernel = tuple(int(k) for k in kernel) if kernel is not None else (1, 1, 1)

    @property
    def encoder(self) -> torch.nn.Module:
        """The encoder that runs (``self.network``)."""
        return self.network

    def output_suffixes(self) -> list[str]:
        return [f"_embedding.{self.fmt}"] + ([f"_tokens.{self.fmt}"] if self.save_tokens else [])

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Every axis padded to a multiple of the patch kernel (tubelet, patch, patch) by edge replication, so that
        no voxel is dropped and no zero tokens bias the mean."""
        pads = []
        for size, k in zip(reversed(x.shape[1:]), reversed(self.kernel)):
            pads += [0, (-size) % k]
        if any(pads):
            x = torch.nn.functional.pad(x[None], pads, mode="replicate")[0]
        return x

    def __call__(self, item: Mapping, out_stem: str) -> dict[str, Any]:
        """Read, preprocess, encode ``item`` and write its outputs; returns the summary fields."""
        x, _ = self.read(item)
        x = self._pad(x)
        depth = int(x.shape[1])
        tokens = self.run(x)  # [N, E]
        emb = tokens.mean(dim=0)
        paths = self.outputs(out_stem)
        self._save(emb, paths[0])
        row: dict[str, Any] = {"embedding": os.path.basename(paths[0])}
        if self.save_tokens:
            self._save(tokens, paths[1])
            row["tokens"] = os.path.basename(paths[1])
        grid = self.encoder.grid_size(*x.shape[1:]) if hasattr(self.encoder, "grid_size") else None
        row.update({
            "embed_dim": int(emb.shape[0]),
            "n_tokens": int(tokens.shape[0]),
            "grid": "x".join(str(int(g)) for g in grid) if grid is not None else "",
            "depth": depth,
            "shape": "x".join(str(int(s)) for s in x.shape[1:]),
        })
        return row


def run_embedding_inference(
    inputs,
    output_dir: str,
    network: torch.nn.Module,
    weights: str | None = None,
    datalist_key: str = "test",
    overwrite: bool = False,
    summary_name: str = "manifest.csv",
    **processor_kwargs,
) -> list[dict]:
    """Load ``weights`` (a plain ``state_dict`` of ``network``, ``weights_only``) if given and write the embedding
    of every input (folder, datalist JSON or path list) plus the manifest CSV with :class:`BatchInference`."""
    from oct_foundation.engines.batch_inference import BatchInference

    from oct_foundation.networks.weights import load_weights

    load_weights(network, weights)
    proc = EmbeddingProcessor(network, **processor_kwargs)
    return BatchInference(inputs, output_dir, proc, datalist_key=datalist_key, overwrite=overwrite,
                          summary_name=summary_name).run()
