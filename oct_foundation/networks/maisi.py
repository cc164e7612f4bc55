"""MAISI autoencoder on 2D+time OCT data: frames grouped into short stacks (or sliding windows) of depth.

MAISI's autoencoder (``monai.apps.generation.maisi.networks.autoencoderkl_maisi.AutoencoderKlMaisi``) is a 3D
KL-autoencoder trained on CT; it compresses every spatial axis by ``2 ** (len(num_channels) - 1)`` (4 for the
model-zoo weights) into ``latent_channels`` (4) channels. An OCT volume ``[C, D, H, W]`` is a video of B-scans
(D is time); :class:`StackedVideoVAE` encodes it as a sequence of short 3D stacks along D, so a volume of any
length goes through the network in pieces of bounded size and the latents of the pieces line up into one latent
video ``[latent_channels, D', H', W']``.

Shapes (``cf`` = the compression factor, 4 for the zoo weights):

* input ``x``: ``[B, C, T, H, W]``, any ``T >= 1``, any ``H, W`` (padded by edge replication to multiples of
  ``cf`` and cropped back on decode);
* strategy ``"stack"``: consecutive groups of ``stack_size`` frames; the last group is completed by repeating
  the last frame; latents ``[B, latent_channels, T_pad / cf, H_pad / cf, W_pad / cf]`` with
  ``T_pad = ceil(T / stack_size) * stack_size``;
* strategy ``"sliding"``: windows of ``window`` frames starting every ``stride`` frames (both multiples of
  ``cf``, ``stride <= window``) until the windows cover ``T`` (the last one completed by repeating the last
  frame). Every window is encoded on its own; a latent frame covered by several windows is the plain average of
  their latents for that frame (the windows are aligned on the latent grid because ``stride`` is a multiple of
  ``cf``). On decode the latent video is cut into the same windows, each is decoded and overlapping output
  frames are averaged the same way. With ``stride == window`` no frame is shared and the result is exactly
  the ``"stack"`` strategy with ``stack_size == window``.

Memory is bounded in T: the autoencoder never sees more than ``chunk_size`` stacks (``chunk_size * window``
frames) at once, and :meth:`StackedVideoVAE.encode_stream` encodes a video that arrives in pieces (e.g. read
from disk slice range by slice range), holding at most one chunk of frames plus one window.

MAISI's own memory saver (``num_splits`` / ``dim_split``: every convolution cuts its input into slabs along one
axis) is only exact for some shapes: along a short axis it crashes ("Kernel size can't be greater than actual
input size") and otherwise it can silently drop voxels, e.g. when the axis is not a multiple of ``num_splits``
or when the axis after the split axis (which MAISI reads to detect down-sampling) is the short frame axis. The
wrapper therefore defaults to ``num_splits=1`` (exact, and faster on CPU), and verifies any other setting on
the actual stack shape by running MAISI's own split convolutions against unsplit ones on a one-channel probe;
an inexact setting raises a ``ValueError`` saying why. ``norm_float16`` (half-precision group norm in the zoo
config) works only on CUDA under autocast; elsewhere it is switched off with a warning.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from oct_foundation import io

__all__ = [
    "video_to_stacks",
    "window_count",
    "complete_window",
    "pad_hw",
    "MAISI_ZOO_AUTOENCODER",
    "maisi_autoencoder_config",
    "build_maisi_autoencoder",
    "check_split_safety",
    "StackedVideoVAE",
]

logger = logging.getLogger("oct_foundation.maisi")

#: Arguments of the MAISI CT autoencoder in the MONAI model zoo (``maisi_ct_generative``,
#: ``configs/inference.json`` -> ``autoencoder_def``), matching its published weights. The zoo's split
#: settings (``num_splits``, ``dim_split``) and ``norm_float16`` are memory tricks for large CUDA volumes;
#: the wrapper manages them (see the module docstring), so they are left at exact / portable values here.
MAISI_ZOO_AUTOENCODER: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 4,
    "num_channels": [64, 128, 256],
    "num_res_blocks": [2, 2, 2],
    "norm_num_groups": 32,
    "norm_eps": 1e-06,
    "attention_levels": [False, False, False],
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
    "use_checkpointing": False,
    "use_convtranspose": False,
    "norm_float16": False,
    "num_splits": 1,
    "dim_split": 1,
}


def maisi_autoencoder_config(**overrides) -> dict[str, Any]:
    """The zoo autoencoder arguments (:data:`MAISI_ZOO_AUTOENCODER`) with ``overrides`` applied.

    ``num_channels`` may be given alone (e.g. ``(8, 8, 8)`` for tests): ``num_res_blocks`` and
    ``attention_levels`` follow its length and ``norm_num_groups`` shrinks to divide every channel count.
    """
    cfg = copy.deepcopy(MAISI_ZOO_AUTOENCODER)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    n = len(cfg["num_channels"])
    if len(cfg["num_res_blocks"]) != n:
        cfg["num_res_blocks"] = [cfg["num_res_blocks"][0]] * n
    if len(cfg["attention_levels"]) != n:
        cfg["attention_levels"] = [False] * n
    if "norm_num_groups" not in overrides:
        cfg["norm_num_groups"] = math.gcd(cfg["norm_num_groups"], *[int(c) for c in cfg["num_channels"]])
    return cfg


def _resolve_refs(value, root: Mapping):
    """Resolve the ``"@name"`` references of a model-zoo config entry against its top level."""
    if isinstance(value, str) and value.startswith("@"):
        return _resolve_refs(root[value[1:]], root)
    if isinstance(value, Mapping):
        return {k: _resolve_refs(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, root) for v in value]
    return value


def build_maisi_autoencoder(config: Mapping[str, Any] | None = None) -> nn.Module:
    """``AutoencoderKlMaisi`` from keyword arguments (default: the zoo preset). ``_target_`` is ignored."""
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    kwargs = maisi_autoencoder_config() if config is None else dict(config)
    kwargs.pop("_target_", None)
    groups = int(kwargs.get("norm_num_groups", 32))
    bad = [c for c in kwargs.get("num_channels", []) if int(c) % groups]
    if bad:
        raise ValueError(f"MAISI autoencoder: num_channels {list(kwargs['num_channels'])} must all be multiples of "
                         f"norm_num_groups={groups}")
    return AutoencoderKlMaisi(**kwargs)


def _maisi_convs(module: nn.Module):
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiConvolution

    return [m for m in module.modules() if isinstance(m, MaisiConvolution)]


def _maisi_norms(module: nn.Module):
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiGroupNorm3D

    return [m for m in module.modules() if isinstance(m, MaisiGroupNorm3D)]


_AXIS_NAMES = {0: "frames (T)", 1: "height (H)", 2: "width (W)"}


def check_split_safety(
    shape: Sequence[int],
    num_levels: int,
    num_splits: int,
    dim_split: int,
    use_convtranspose: bool = False,
) -> str | None:
    """Why MAISI's ``num_splits`` / ``dim_split`` would not be exact for stacks of ``shape`` (None if exact).

    ``shape`` is the spatial shape one stack has inside the autoencoder, ``(frames, H, W)`` after padding.
    Every kind of convolution the autoencoder runs (stride-1, down-sampling, up-sampling) is built on a
    one-channel probe with MAISI's own ``MaisiConvolution`` / ``MaisiDownsample`` / ``MaisiUpsample`` at
    every resolution level, once split and once unsplit with the same weights; a crash, a shape difference
    or a value difference means the setting is unsafe. (A probe, rather than re-deriving MAISI's slicing
    arithmetic, so that the check follows the installed MONAI version.)
    """
    if num_splits <= 1:
        return None
    if dim_split not in (0, 1, 2):
        return f"dim_split must be 0 (frames), 1 (H) or 2 (W), got {dim_split}"
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import (
        MaisiConvolution,
        MaisiDownsample,
        MaisiUpsample,
    )

    def conv(splits):
        return MaisiConvolution(3, 1, 1, num_splits=splits, dim_split=dim_split, print_info=False, save_mem=False,
                                strides=1, kernel_size=3, padding=1, conv_only=True)

    def down(splits):
        return MaisiDownsample(3, 1, num_splits=splits, dim_split=dim_split, print_info=False, save_mem=False)

    def up(splits):
        return MaisiUpsample(3, 1, use_convtranspose=use_convtranspose, num_splits=splits, dim_split=dim_split,
                             print_info=False, save_mem=False)

    gen = torch.Generator().manual_seed(0)
    for level in range(num_levels):
        size = [int(s) // 2**level for s in shape]
        cases = [("convolution", conv, size)]
        if level < num_levels - 1:
            cases.append(("down-sampling", down, size))
            cases.append(("up-sampling", up, [int(s) // 2 ** (level + 1) for s in shape]))
        for name, make, in_size in cases:
            ref, split = make(1), make(num_splits)
            split.load_state_dict(ref.state_dict())
            x = torch.rand(1, 1, *in_size, generator=gen)
            with torch.no_grad():
                expected = ref(x)
                try:
                    got = split(x)
                except Exception as e:  # MAISI's slicing fails in several ways on short axes
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    return (f"num_splits={num_splits} along {_AXIS_NAMES[dim_split]} crashes in the {name} at "
                            f"level {level} (input {tuple(in_size)}): {first}")
            if got.shape != expected.shape:
                return (f"num_splits={num_splits} along {_AXIS_NAMES[dim_split]} silently crops the {name} at "
                        f"level {level}: output {tuple(got.shape[2:])} instead of {tuple(expected.shape[2:])}")
            if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
                return (f"num_splits={num_splits} along {_AXIS_NAMES[dim_split]} changes the {name} output at "
                        f"level {level} (input {tuple(in_size)})")
    return None


def _autocast_dtype(autocast, device: torch.device) -> torch.dtype | None:
    if autocast in (None, False):
        return None
    if autocast is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    from oct_foundation.config import parse_amp_dtype

    return parse_amp_dtype(autocast, "autocast")


# -------------------------------------------------------------------- cutting videos into stacks
def window_count(t: int, window: int, stride: int) -> int:
    """How many windows of ``window`` frames, starting every ``stride`` frames, cover ``t`` frames."""
    return 1 if t <= window else math.ceil((t - window) / stride) + 1


def complete_window(piece: torch.Tensor, window: int) -> torch.Tensor:
    """``piece [B, C, t, H, W]`` with ``t <= window`` completed to ``window`` frames by repeating its last one."""
    if piece.shape[2] < window:
        piece = torch.cat([piece, piece[:, :, -1:].expand(-1, -1, window - piece.shape[2], -1, -1)], 2)
    return piece


def pad_hw(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x [..., H, W]`` padded by edge replication at the far end to multiples of ``multiple``."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
    return x


def video_to_stacks(x: torch.Tensor, window: int, stride: int, compression: int = 1) -> torch.Tensor:
    """Cut videos ``[B, C, T, H, W]`` into stacks ``[B * n, C, window, H_pad, W_pad]`` (batch-major).

    Windows of ``window`` frames start every ``stride`` frames until ``T`` is covered (:func:`window_count`);
    the last window is completed by repeating the last frame (:func:`complete_window`), and H, W are padded by
    edge replication to multiples of ``compression`` (:func:`pad_hw`): the pieces :class:`StackedVideoVAE`
    encodes, for training the autoencoder on them.
    """
    if x.ndim != 5:
        raise ValueError(f"video_to_stacks expects [B, C, T, H, W], got shape {tuple(x.shape)}")
    n = window_count(x.shape[2], window, stride)
    x = pad_hw(complete_window(x, (n - 1) * stride + window), compression)
    stacks = x.unfold(2, window, stride)  # [B, C, n, H, W, window]
    b, c = x.shape[:2]
    return stacks.permute(0, 2, 1, 5, 3, 4).reshape(b * n, c, window, x.shape[3], x.shape[4])


class StackedVideoVAE(nn.Module):
    """MAISI autoencoder applied to 2D+time volumes by stacks or sliding windows of frames.

    Args:
        autoencoder: an ``AutoencoderKlMaisi``, a dict of its keyword arguments, or None for the zoo preset
            (:func:`maisi_autoencoder_config`).
        strategy: ``"stack"`` or ``"sliding"`` (see the module docstring).
        stack_size: frames per stack for ``"stack"`` (a multiple of the compression factor).
        window, stride: window length and step in frames for ``"sliding"`` (multiples of the compression
            factor, ``stride <= window``).
        scale_factor: latents are multiplied by it after encoding and divided before decoding (None: 1.0 until
            :meth:`compute_scale_factor` sets it to 1 / std of the latents).
        chunk_size: stacks (windows) per autoencoder call; bounds memory independently of T.
        sample: draw latents from the posterior instead of returning its mean.
        num_splits, dim_split: MAISI's convolution splitting. None: no splitting (exact). Given: verified on
            every new stack shape (see :func:`check_split_safety`); with ``dim_split=None`` H then W is tried.
        autocast: None/False (float32), True (bf16 on CPU, fp16 on CUDA), ``"bf16"`` or ``"fp16"``.
    """

    def __init__(
        self,
        autoencoder: nn.Module | Mapping[str, Any] | None = None,
        strategy: str = "stack",
        stack_size: int = 4,
        window: int = 4,
        stride: int = 4,
        scale_factor: float | None = None,
        chunk_size: int = 8,
        sample: bool = False,
        num_splits: int | None = None,
        dim_split: int | None = None,
        autocast=None,
    ):
        super().__init__()
        self.autoencoder = autoencoder if isinstance(autoencoder, nn.Module) else build_maisi_autoencoder(
            None if autoencoder is None else maisi_autoencoder_config(**dict(autoencoder)))
        convs = _maisi_convs(self.autoencoder)
        if not convs:
            raise TypeError("StackedVideoVAE needs a MAISI autoencoder (AutoencoderKlMaisi)")
        enc_blocks = getattr(self.autoencoder.encoder, "blocks", [])
        self.num_levels = 1 + sum(type(b).__name__ == "MaisiDownsample" for b in enc_blocks)
        self.compression = 2 ** (self.num_levels - 1)
        self.latent_channels = int(self.autoencoder.quant_conv_mu.conv.out_channels)
        self.use_convtranspose = any(getattr(b, "use_convtranspose", False) for b in self.autoencoder.decoder.blocks)
        if strategy not in ("stack", "sliding"):
            raise ValueError(f"strategy must be 'stack' or 'sliding', got {strategy!r}")
        self.strategy = strategy
        self.stack_size, self.window_frames, self.stride_frames = int(stack_size), int(window), int(stride)
        w, s = self.window_and_stride
        cf = self.compression
        if w < cf or w % cf or s < 1 or s % cf or s > w:
            raise ValueError(f"{strategy}: window/stack size ({w}) and stride ({s}) must be multiples of the "
                             f"compression factor {cf} with stride <= window")
        if int(chunk_size) < 1:
            raise ValueError("chunk_size must be >= 1")
        self.scale_factor = None if scale_factor is None else float(scale_factor)
        #: where the autoencoder weights came from: ``"sha256:<hex>"`` of the file ``load_weights(..., source="maisi")``
        #: read, ``"random-init"`` when it kept the random weights, ``None`` when no loader ran
        self.weights_id: str | None = None
        self.chunk_size = int(chunk_size)
        self.sample = bool(sample)
        self.autocast = autocast
        _autocast_dtype(autocast, torch.device("cpu"))  # validate early
        self._norm_float16 = any(m.norm_float16 for m in _maisi_norms(self.autoencoder))
        self._warned_fp16 = False
        if num_splits is not None and int(num_splits) < 1:
            raise ValueError("num_splits must be >= 1")
        self.num_splits = 1 if num_splits is None else int(num_splits)
        self.dim_split = dim_split
        self._split_ok: dict[tuple, int] = {}
        self._set_splits(1, 1)

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def from_zoo_config(cls, config=None, key: str = "autoencoder_def", **kwargs) -> "StackedVideoVAE":
        """Build from a model-zoo bundle config (path/URL or dict; ``@`` references resolved) or the preset."""
        if config is None:
            ae_cfg = maisi_autoencoder_config()
        else:
            root = io.load_json(config) if isinstance(config, str) else dict(config)
            if key not in root:
                raise ValueError(f"{config if isinstance(config, str) else 'config'}: no '{key}' entry")
            ae_cfg = _resolve_refs(root[key], root)
            ae_cfg.pop("_target_", None)
        # the zoo's splitting settings are memory tricks for large CUDA volumes and are not exact for every
        # stack shape: the wrapper's own num_splits / dim_split arguments (verified) decide instead
        ae_cfg.pop("num_splits", None)
        ae_cfg.pop("dim_split", None)
        return cls(autoencoder=ae_cfg, **kwargs)

    @property
    def window_and_stride(self) -> tuple[int, int]:
        """``(frames per autoencoder stack, step between stacks)``."""
        if self.strategy == "stack":
            return self.stack_size, self.stack_size
        return self.window_frames, self.stride_frames

    @property
    def effective_scale(self) -> float:
        return 1.0 if self.scale_factor is None else float(self.scale_factor)

    def settings(self) -> dict[str, Any]:
        """The stack settings that a latent file needs to be decoded (for manifests / sidecars)."""
        w, s = self.window_and_stride
        return {"strategy": self.strategy, "window": w, "stride": s, "compression": self.compression,
                "latent_channels": self.latent_channels, "scale_factor": self.effective_scale}

    def provenance(self) -> dict[str, Any]:
        """How latents of this network are made, for sidecars and manifests (no input information): the
        autoencoder's identity, mean or sampled latents, and the padding of short stacks and odd sizes."""
        return {"autoencoder": self.weights_id or "random-init (no weights loaded)",
                "latents": "posterior samples" if self.sample else "posterior means",
                "padding": "edge replication (last frame, last row/column); cropped on decode"}

    def latent_shape(self, t: int, h: int, w: int) -> tuple[int, int, int, int]:
        """``(latent_channels, T', H', W')`` for an input of ``t`` frames of ``h x w``."""
        win, st = self.window_and_stride
        n = window_count(t, win, st)
        cf = self.compression
        return (self.latent_channels, ((n - 1) * st + win) // cf, math.ceil(h / cf), math.ceil(w / cf))

    # ---------------------------------------------------------------- splitting / precision
    def _set_splits(self, num_splits: int, dim_split: int) -> None:
        for m in _maisi_convs(self.autoencoder):
            m.num_splits, m.dim_split = num_splits, dim_split

    def _prepare_splits(self, stack_shape: tuple[int, int, int]) -> None:
        """Validate (or choose the axis of) the requested splitting for stacks of ``stack_shape``."""
        if self.num_splits <= 1:
            self._set_splits(1, 1)
            return
        key = tuple(stack_shape)
        if key not in self._split_ok:
            axes = [int(self.dim_split)] if self.dim_split is not None else [1, 2]
            reasons = []
            for axis in axes:
                why = check_split_safety(stack_shape, self.num_levels, self.num_splits, axis, self.use_convtranspose)
                if why is None:
                    self._split_ok[key] = axis
                    break
                reasons.append(why)
            else:
                raise ValueError(f"MAISI splitting is not exact for stacks of shape {key} (frames, H, W): "
                                 + "; ".join(reasons) + ". Use num_splits=None (no splitting) or another setting.")
        self._set_splits(self.num_splits, self._split_ok[key])

    def _autocast_context(self, device: torch.device):
        dtype = _autocast_dtype(self.autocast, device)
        want16 = self._norm_float16 and device.type == "cuda" and dtype is not None
        if self._norm_float16 and not want16 and not self._warned_fp16:
            warnings.warn("norm_float16 needs CUDA with autocast; using float32 group norms", stacklevel=3)
            self._warned_fp16 = True
        for m in _maisi_norms(self.autoencoder):
            m.norm_float16 = want16
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    @property
    def _device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    # ---------------------------------------------------------------- autoencoder calls
    def _pad_hw(self, x: torch.Tensor) -> torch.Tensor:
        return pad_hw(x, self.compression)

    def _encode_windows(self, windows: list[torch.Tensor], sample: bool) -> list[torch.Tensor]:
        """Encode windows ``[B, C, window, H, W]`` (H, W padded) in chunks of ``chunk_size``; unscaled latents."""
        device = self._device
        out: list[torch.Tensor] = []
        self._prepare_splits(tuple(windows[0].shape[2:]))
        for i in range(0, len(windows), self.chunk_size):
            group = windows[i:i + self.chunk_size]
            b = group[0].shape[0]
            x = torch.cat(group, 0).to(device=device, dtype=torch.float32)
            with self._autocast_context(device):
                z_mu, z_sigma = self.autoencoder.encode(x)
                # sampling: (mean, std) are returned and averaged over overlapping windows; one noise draw per
                # latent position happens afterwards (averaging independent draws would shrink the noise)
                z = torch.cat([z_mu, z_sigma], 1) if sample else z_mu
            z = z.float().to(windows[0].device)
            out.extend(z.split(b, 0))
        return out

    def _decode_windows(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        device = self._device
        out: list[torch.Tensor] = []
        for i in range(0, len(latents), self.chunk_size):
            group = latents[i:i + self.chunk_size]
            b = group[0].shape[0]
            z = torch.cat(group, 0).to(device=device, dtype=torch.float32)
            cf = self.compression
            self._prepare_splits((z.shape[2] * cf, z.shape[3] * cf, z.shape[4] * cf))
            with self._autocast_context(device):
                y = self.autoencoder.decode(z)
            out.extend(y.float().to(latents[0].device).split(b, 0))
        return out

    # ---------------------------------------------------------------- public API
    def encode_stream(self, chunks: Iterable[torch.Tensor], sample: bool | None = None,
                      scale: bool = True) -> Iterator[torch.Tensor]:
        """Encode a video arriving as consecutive frame chunks ``[B, C, t_i, H, W]``; yields latent frames.

        Yields tensors ``[B, latent_channels, t'_j, H', W']`` whose concatenation along dim 2 equals
        ``encode(torch.cat(chunks, 2))``. At most ``chunk_size`` windows are encoded at once and frames are
        dropped as soon as no later window needs them, so memory does not grow with the video length.
        """
        sample = self.sample if sample is None else sample
        win, st = self.window_and_stride
        cf = self.compression
        lw = win // cf
        scale_value = self.effective_scale if scale else 1.0
        buf: torch.Tensor | None = None  # frames from index buf_start on
        buf_start = total = 0
        next_start = 0  # first frame of the next window to encode
        covered = 0  # frames covered by encoded windows
        acc: torch.Tensor | None = None  # latent sums for latent frames acc_start..
        cnt: torch.Tensor | None = None
        acc_start = 0
        ref_shape = None

        def window_at(s: int) -> torch.Tensor:
            # at the end of the video the window is completed with its last frame
            return complete_window(buf[:, :, s - buf_start:s - buf_start + win], win)

        def flush(starts: list[int]):
            nonlocal acc, cnt, acc_start
            lat = self._encode_windows([window_at(s) for s in starts], sample)
            for s, z in zip(starts, lat):
                g0 = s // cf
                end = g0 + lw
                if acc is None:
                    acc = torch.zeros(*z.shape[:2], 0, *z.shape[3:], dtype=z.dtype, device=z.device)
                    cnt = torch.zeros(0, dtype=z.dtype, device=z.device)
                    acc_start = g0
                need = end - acc_start - acc.shape[2]
                if need > 0:
                    acc = torch.cat([acc, acc.new_zeros(*acc.shape[:2], need, *acc.shape[3:])], 2)
                    cnt = torch.cat([cnt, cnt.new_zeros(need)])
                acc[:, :, g0 - acc_start:end - acc_start] += z
                cnt[g0 - acc_start:end - acc_start] += 1

        def ready(upto: int | None) -> torch.Tensor | None:
            """Pop finished latent frames (all before latent index ``upto``; None: all)."""
            nonlocal acc, cnt, acc_start
            if acc is None:
                return None
            n = acc.shape[2] if upto is None else max(0, min(upto - acc_start, acc.shape[2]))
            if n == 0:
                return None
            out = acc[:, :, :n] / cnt[:n].view(1, 1, -1, 1, 1)
            acc, cnt, acc_start = acc[:, :, n:], cnt[n:], acc_start + n
            if sample:  # mean + std * eps with a single eps per latent position
                mu, sigma = out.chunk(2, 1)
                out = mu + sigma * torch.randn_like(sigma)
            return out * scale_value

        for chunk in chunks:
            if chunk.ndim != 5:
                raise ValueError(f"encode_stream expects chunks [B, C, t, H, W], got shape {tuple(chunk.shape)}")
            if ref_shape is None:
                ref_shape = (chunk.shape[0], chunk.shape[1], chunk.shape[3], chunk.shape[4])
            elif (chunk.shape[0], chunk.shape[1], chunk.shape[3], chunk.shape[4]) != ref_shape:
                raise ValueError(f"frame chunk of shape {tuple(chunk.shape)} does not match the first chunk "
                                 f"(B, C, H, W) = {ref_shape}")
            if chunk.shape[2] == 0:
                continue
            chunk = self._pad_hw(chunk)
            buf = chunk if buf is None else torch.cat([buf, chunk], 2)
            total += chunk.shape[2]
            while True:
                full = 0 if next_start + win > total else (total - win - next_start) // st + 1
                if full < self.chunk_size:
                    break
                starts = [next_start + i * st for i in range(self.chunk_size)]
                flush(starts)
                covered = starts[-1] + win
                next_start = starts[-1] + st
                buf, buf_start = buf[:, :, next_start - buf_start:], next_start
                out = ready(next_start // cf)
                if out is not None:
                    yield out
        if ref_shape is None:
            raise ValueError("encode_stream: the video has no frames")
        starts: list[int] = []
        end = covered
        while end < total:  # windows until the video is covered; the last ones are completed by repetition
            starts.append(next_start + len(starts) * st)
            end = starts[-1] + win
        for i in range(0, len(starts), self.chunk_size):
            flush(starts[i:i + self.chunk_size])
        out = ready(None)
        if out is not None:
            yield out

    def encode(self, x: torch.Tensor, sample: bool | None = None, return_info: bool = False):
        """Latents of ``x [B, C, T, H, W]``: ``[B, latent_channels, T', H', W']`` (see :meth:`latent_shape`).

        Deterministic posterior means (unless ``sample``), multiplied by the scale factor. With
        ``return_info`` also returns ``{"shape": (T, H, W), **settings()}`` for :meth:`decode`.
        """
        if x.ndim != 5:
            raise ValueError(f"StackedVideoVAE.encode expects [B, C, T, H, W], got shape {tuple(x.shape)}")
        win, st = self.window_and_stride
        piece = max(win, self.chunk_size * st)
        z = torch.cat(list(self.encode_stream(x.split(piece, 2), sample=sample)), 2)
        if return_info:
            return z, {"shape": tuple(int(v) for v in x.shape[2:]), **self.settings()}
        return z

    def decode(self, z: torch.Tensor, t: int | None = None, h: int | None = None, w: int | None = None,
               scale: bool = True) -> torch.Tensor:
        """Volumes ``[B, C_out, t, h, w]`` from latents ``[B, latent_channels, T', H', W']``.

        Without ``t``/``h``/``w`` the padded size (``T' * cf`` ...) is returned; give the original size (from
        ``encode(..., return_info=True)`` or a latent sidecar) to crop the padding away.
        """
        if z.ndim != 5:
            raise ValueError(f"StackedVideoVAE.decode expects [B, C, T', H', W'], got shape {tuple(z.shape)}")
        win, st = self.window_and_stride
        cf = self.compression
        lw, ls = win // cf, st // cf
        tl = z.shape[2]
        if tl < lw or (tl - lw) % ls:
            raise ValueError(f"{tl} latent frames do not fit windows of {lw} latent frames every {ls}")
        if scale:
            z = z / self.effective_scale
        starts = list(range(0, tl - lw + 1, ls))
        t_pad = (len(starts) - 1) * st + win
        out = None
        count = torch.zeros(t_pad, dtype=torch.float32, device=z.device)
        for i in range(0, len(starts), self.chunk_size):
            group = starts[i:i + self.chunk_size]
            decoded = self._decode_windows([z[:, :, g:g + lw] for g in group])
            for g, y in zip(group, decoded):
                if out is None:
                    out = torch.zeros(*y.shape[:2], t_pad, *y.shape[3:], dtype=torch.float32, device=z.device)
                out[:, :, g * cf:g * cf + win] += y
                count[g * cf:g * cf + win] += 1
        out = out / count.view(1, 1, -1, 1, 1)
        t = t_pad if t is None else int(t)
        h = out.shape[3] if h is None else int(h)
        w = out.shape[4] if w is None else int(w)
        if t > t_pad or h > out.shape[3] or w > out.shape[4]:
            raise ValueError(f"requested size {(t, h, w)} exceeds the decoded size {tuple(out.shape[2:])}")
        return out[:, :, :t, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Round trip ``[B, C, T, H, W] -> [B, C_out, T, H, W]``."""
        z = self.encode(x)
        return self.decode(z, *x.shape[2:])

    @torch.no_grad()
    def compute_scale_factor(self, data, max_batches: int | None = None, key: str = "image") -> float:
        """Set and return ``scale_factor = 1 / std`` of the (mean) latents of ``data``.

        ``data``: a tensor ``[B, C, T, H, W]`` or an iterable of such tensors (or of dicts holding one under
        ``key``, e.g. a MONAI DataLoader). Statistics accumulate in float64 over all latent values.
        """
        batches = [data] if isinstance(data, torch.Tensor) else data
        n, s, ss = 0, 0.0, 0.0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[key] if isinstance(batch, Mapping) else batch
            x = torch.as_tensor(x)
            for z in self.encode_stream(x.split(max(self.window_and_stride[0], self.chunk_size *
                                                    self.window_and_stride[1]), 2), sample=False, scale=False):
                z = z.double()
                n += z.numel()
                s += float(z.sum())
                ss += float((z * z).sum())
        if n < 2:
            raise ValueError("compute_scale_factor: no data")
        var = (ss - s * s / n) / (n - 1)
        if var <= 0:
            raise ValueError("compute_scale_factor: the latents have zero variance")
        self.scale_factor = float(1.0 / math.sqrt(var))
        return self.scale_factor
