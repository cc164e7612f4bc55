"""MAISI latents of OCT volumes as ``BatchInference`` processors: encode, decode, reconstruction evaluation.

Files written per input (``<out_stem>`` = output folder + anonymised ID), all atomically:

* encode: ``<out_stem>_latent.pt`` (a plain float32 tensor ``[latent_channels, T', H', W']``, loadable with
  ``torch.load(..., weights_only=True)``) or ``<out_stem>_latent.npy`` (same array), and
  ``<out_stem>_latent.json`` (sidecar: input shape ``[C, T, H, W]``, latent shape, strategy, window, stride,
  compression, scale factor, voxel spacing; everything :class:`MaisiDecodeProcessor` needs, nothing that
  identifies the input);
* decode: ``<out_stem>_recon.nii.gz`` (``[D, H, W]`` data, affine ``diag(spacing)``, the package's NIfTI
  convention);
* evaluate: ``<out_stem>_metrics.json`` (MSE, PSNR, SSIM of the round trip) and ``<out_stem>_grid.png``
  (input, reconstruction and absolute difference for three B-scans).

The summary CSV of ``BatchInference`` is the manifest: one row per input with the ID, status, shapes, stack
settings and scale factor (or the metrics), never the input path.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from oct_foundation import io
from oct_foundation.data.latents import LATENT_SUFFIXES, read_latent
from oct_foundation.data.transforms import default_maisi_transforms
from oct_foundation.engines.processors import InferenceProcessor, save_volume_nifti, spacing_of
from oct_foundation.errors import OCTInputError
from oct_foundation.networks.maisi import StackedVideoVAE

logger = logging.getLogger("oct_foundation.engines")

__all__ = [
    "default_maisi_transforms",
    "MaisiEncodeProcessor",
    "MaisiDecodeProcessor",
    "MaisiEvaluateProcessor",
    "latent_files",
    "latent_id_map",
    "resolve_scale_factor",
    "write_reconstruction_summary",
]

#: sidecar entries that must agree for an existing latent to be kept on a rerun (else the run refuses to mix)
RERUN_KEYS = ("strategy", "window", "stride", "compression", "latent_channels", "scale_factor", "latents",
              "autoencoder", "format")


class _MaisiProcessor(InferenceProcessor):
    """The autoencoder's side of the MAISI processors, on the processors' base (reading, device, inferer, writers):
    the streamed encoder and the decoder. ``inferer`` (a MONAI ``Inferer``, default ``SimpleInferer``) runs the
    streamed encoder on ``[1, C, D, H, W]``; ``transforms`` default to :func:`default_maisi_transforms`.
    """

    def __init__(self, network: StackedVideoVAE, device="cpu", transforms: Callable | None = None,
                 image_key: str = "image", frame_chunk: int = 64, inferer: Callable | None = None):
        if transforms is None:
            transforms = default_maisi_transforms((image_key,))
        super().__init__(network, device, transforms, inferer, image_key=image_key)
        self.frame_chunk = int(frame_chunk)

    def _stream_encode(self, xb: torch.Tensor) -> torch.Tensor:
        """``[1, C, D, H, W]`` (any device) -> latents ``[1, latent_channels, D', H', W']``, handed to the
        network ``frame_chunk`` B-scans at a time (memory does not grow with D)."""
        chunks = (c.to(self.device) for c in xb.split(self.frame_chunk, 2))
        return torch.cat(list(self.network.encode_stream(chunks)), 2)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[C, D, H, W] -> [latent_channels, D', H', W']`` through the inferer (the volume stays where it is;
        the streamed encoder moves it to the device piece by piece)."""
        return self.run(x, self._stream_encode, to_device=False).cpu()

    @torch.no_grad()
    def _decode(self, z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return self.network.decode(z[None].to(self.device), *shape[1:])[0].cpu()


class MaisiEncodeProcessor(_MaisiProcessor):
    """Encode one volume to MAISI latents (see the module docstring for the files).

    Args:
        network: the :class:`StackedVideoVAE` (weights loaded).
        device: where the autoencoder runs.
        transforms: item ``{"image": path}`` -> ``{"image": [C, D, H, W] in [0, 1]}``
            (default :func:`default_maisi_transforms`).
        fmt: ``"pt"`` or ``"npy"`` for the latent file.
        frame_chunk: B-scans handed to the network at a time (it streams; memory does not grow with D).
        inferer: MONAI inferer that runs the streamed encoder (default ``SimpleInferer``).
        stream_video: video / multi-page TIFF / PNG-folder paths are decoded ``frame_chunk`` frames at a time
            (two passes: intensity range, then encode) instead of being loaded whole by ``transforms``.
    """

    def __init__(self, network: StackedVideoVAE, device="cpu", transforms: Callable | None = None,
                 fmt: str = "pt", image_key: str = "image", frame_chunk: int = 64, inferer: Callable | None = None,
                 stream_video: bool = True):
        super().__init__(network, device, transforms, image_key, frame_chunk, inferer)
        if fmt not in ("pt", "npy"):
            raise ValueError(f"fmt must be 'pt' or 'npy', got {fmt!r}")
        self.fmt = fmt
        self.stream_video = bool(stream_video)

    def output_suffixes(self) -> list[str]:
        return [f"_latent.{self.fmt}", "_latent.json"]

    def streams(self, item: Mapping) -> bool:
        """Whether ``item`` is a video, multi-page TIFF or PNG frame folder given by path: those are decoded and
        encoded ``frame_chunk`` frames at a time (``BatchInference`` then hands over the path, not the loaded
        volume), so a long video never sits in memory whole."""
        from oct_foundation.data.video import frame_reader

        img = item.get(self.image_key)
        return self.stream_video and isinstance(img, (str, os.PathLike)) and frame_reader(str(img)) is not None

    @torch.no_grad()
    def _encode_video(self, path: str) -> tuple[list[int], torch.Tensor] | None:
        """Two passes over the frames: the intensity percentiles of the whole video (exactly those the default
        transforms scale a loaded volume by: :data:`~oct_foundation.data.transforms.MAISI_PERCENTILES`, counted
        per channel), then the streamed encoder. Returns the input shape ``[C, T, H, W]`` and the latents; memory
        holds ``frame_chunk`` frames, the value counts and the latents, not the video. None when the frames have
        too many distinct values for exact streamed percentiles (float frames): the caller loads the video whole."""
        from oct_foundation.data.transforms import MAISI_PERCENTILES, StreamingPercentiles
        from oct_foundation.data.video import stream_frames

        stats, n, shape = StreamingPercentiles(), 0, None
        for f in stream_frames(path):
            if not np.isfinite(f).all():
                raise OCTInputError(path, "frames contain NaN or infinite values")
            stats.update(f)
            n, shape = n + 1, f.shape
        if n < 2:
            raise OCTInputError(path, f"{n} frame(s); expected a sequence of frames")
        if not stats.exact:
            logger.info("%s: too many distinct intensities to stream exact percentiles; loading it whole", path)
            return None
        lo, hi = stats.range(*MAISI_PERCENTILES)

        def chunks():
            buf = []
            for f in stream_frames(path):
                buf.append(f)
                if len(buf) == self.frame_chunk:
                    yield self._scaled(buf, lo, hi)
                    buf = []
            if buf:
                yield self._scaled(buf, lo, hi)

        z = torch.cat(list(self.network.encode_stream(chunks())), 2)[0].cpu()
        return [int(shape[0]), n, int(shape[1]), int(shape[2])], z

    def _scaled(self, frames: list, lo, hi) -> torch.Tensor:
        from oct_foundation.data.transforms import scale_to_unit

        x = torch.from_numpy(np.stack(frames, 1)).float()[None]  # [1, C, t, H, W]
        return scale_to_unit(x, lo, hi).to(self.device)

    def __call__(self, item: Mapping, out_stem: str) -> dict:
        streamed = self._encode_video(str(item[self.image_key])) if self.streams(item) else None
        if streamed is not None:
            shape, z = streamed
            spacing = (1.0, 1.0, 1.0)  # frames carry no physical size (the video readers' convention)
        else:
            x, geometry = self.read(item)
            spacing = spacing_of(geometry)
            shape, z = list(x.shape), self._encode(x)
        latent_path, sidecar = self.outputs(out_stem)
        info = {"input_shape": shape, "latent_shape": list(z.shape), "spacing": list(spacing),
                "format": self.fmt, **self._settings(), **_input_format(item.get(self.image_key))}
        self._save(z, latent_path)
        io.save_json(info, sidecar)  # written last: its presence marks a finished latent
        return {"latent": os.path.basename(latent_path), **{k: info[k] for k in (
            "input_shape", "latent_shape", "strategy", "window", "stride", "scale_factor", "latents",
            "autoencoder")}}

    def _settings(self) -> dict:
        return {**self.network.settings(), **self.network.provenance(), "format": self.fmt,
                "scale_factor_source": getattr(self.network, "scale_factor_source", "given")}

    def existing_mismatch(self, out_stem: str) -> str | None:
        """``None`` when the finished latent at ``out_stem`` was made with this run's settings, else what differs
        (``BatchInference`` then refuses to mix it with new latents)."""
        try:
            old = io.load_json(self.outputs(out_stem)[1])
        except Exception as e:  # an unreadable sidecar is not a finished latent of this run
            return f"unreadable sidecar ({type(e).__name__})"
        mine = self._settings()
        for k in RERUN_KEYS:
            a, b = old.get(k), mine.get(k)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                if abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b))):
                    continue
            elif a == b:
                continue
            return f"{k} was {a!r}, this run uses {b!r}"
        return None


def _input_format(img) -> dict:
    """``{"input_format": ...}`` (``mp4``/``avi``/``tiff``/``png`` frames, or ``volume``) and the video's ``fps``:
    what :class:`MaisiDecodeProcessor` needs to write the same kind of file back (never the input's name)."""
    if not isinstance(img, (str, os.PathLike)):
        return {"input_format": "volume"}
    from oct_foundation.data.video import TIFF_SUFFIXES, VIDEO_SUFFIXES, is_frame_folder, video_fps

    name = str(img).lower().rstrip("/")
    if name.endswith(VIDEO_SUFFIXES):
        fps = video_fps(str(img))
        return {"input_format": name.rsplit(".", 1)[1], "fps": fps if np.isfinite(fps) else None}
    if name.endswith(TIFF_SUFFIXES):
        return {"input_format": "tiff"}
    if is_frame_folder(str(img)):
        return {"input_format": "png"}
    return {"input_format": "volume"}


class MaisiDecodeProcessor(_MaisiProcessor):
    """Decode ``*_latent.pt``/``.npy`` files (with their sidecar JSON) back to NIfTI volumes.

    The stack settings of the sidecar must match the network's (strategy, window, stride, compression);
    the sidecar's scale factor is used, and the output is cropped to the original input shape.
    """

    def __init__(self, network: StackedVideoVAE, device="cpu", video_format: str = "same"):
        from oct_foundation.data.video import WRITE_FORMATS

        super().__init__(network, device, transforms=lambda d: d)
        if video_format not in ("same", "none") + WRITE_FORMATS:
            raise OCTInputError("video_format", f"{video_format!r} is not one of same, none, "
                                                f"{', '.join(WRITE_FORMATS)}")
        self.video_format = video_format

    def output_suffixes(self) -> list[str]:
        # the NIfTI is written last, so its presence also marks the video written before it
        extra = [] if self.video_format in ("same", "none") else [VIDEO_SUFFIXES[self.video_format]]
        return extra + ["_recon.nii.gz"]

    def __call__(self, item: Mapping, out_stem: str) -> dict:
        path = str(item[self.image_key])
        z, info = read_latent(path)
        mine = self.network.settings()
        for k in ("strategy", "window", "stride", "compression", "latent_channels"):
            if k in info and info[k] != mine[k]:
                raise OCTInputError(path, f"latent was encoded with {k}={info[k]}, the network uses {mine[k]}")
        saved_scale = self.network.scale_factor
        self.network.scale_factor = float(info.get("scale_factor", 1.0))
        try:
            y = self._decode(z, info["input_shape"])
        finally:
            self.network.scale_factor = saved_scale
        y = y.clamp(0, 1)
        fmt = self.video_format
        if fmt == "same":
            fmt = info.get("input_format", "volume")
        row = {}
        if fmt not in ("none", "volume"):
            from oct_foundation.data.video import write_frames

            if y.shape[0] not in (1, 3):
                raise OCTInputError(path, f"{y.shape[0]} channels cannot be written as {fmt} frames")
            video = f"{out_stem}{VIDEO_SUFFIXES[fmt]}"
            write_frames(y.numpy(), video, fmt, fps=info.get("fps"))
            row["video"] = os.path.basename(video.rstrip("/"))
        out = self.outputs(out_stem)[-1]
        save_volume_nifti(y, info.get("spacing", (1.0, 1.0, 1.0)), out)
        return {"recon": os.path.basename(out), **row, "output_shape": list(y.shape), "latent_shape": list(z.shape)}


#: what follows ``<out_stem>`` in a decoded video's name: ``_recon.mp4`` / ``.avi`` / ``.tif``, or the folder
#: ``_recon_frames`` of PNG frames
VIDEO_SUFFIXES = {"mp4": "_recon.mp4", "avi": "_recon.avi", "tiff": "_recon.tif", "png": "_recon_frames"}


def _save_grid(x: torch.Tensor, y: torch.Tensor, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = x.shape[1]
    idx = sorted({int(round(f * (d - 1))) for f in (0.25, 0.5, 0.75)})
    fig, axes = plt.subplots(3, len(idx), figsize=(3.2 * len(idx), 8), squeeze=False)
    for j, s in enumerate(idx):
        a, b = x[0, s].numpy(), y[0, s].numpy()
        for i, (img, name, cmap, vmax) in enumerate([(a, "input", "gray", 1), (b, "reconstruction", "gray", 1),
                                                     (np.abs(a - b), "|difference|", "magma", None)]):
            axes[i, j].imshow(img, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
            axes[i, j].set_title(f"{name}, B-scan {s}", fontsize=9)
            axes[i, j].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


class MaisiEvaluateProcessor(_MaisiProcessor):
    """Round trip (encode, decode) one volume and measure MSE, PSNR, SSIM against the input (range [0, 1]).

    Writes ``<out_stem>_metrics.json`` and, with ``save_grid``, ``<out_stem>_grid.png``.
    """

    def __init__(self, network: StackedVideoVAE, device="cpu", transforms: Callable | None = None,
                 data_range: float = 1.0, save_grid: bool = True, image_key: str = "image", frame_chunk: int = 64,
                 inferer: Callable | None = None):
        super().__init__(network, device, transforms, image_key, frame_chunk, inferer)
        self.data_range = float(data_range)
        self.save_grid = bool(save_grid)

    def output_suffixes(self) -> list[str]:
        return ["_metrics.json"] + (["_grid.png"] if self.save_grid else [])

    def __call__(self, item: Mapping, out_stem: str) -> dict:
        from oct_foundation.metrics.reconstruction import reconstruction_metrics

        x, _ = self.read(item)
        z = self._encode(x)
        y = self._decode(z, x.shape).clamp(0, 1)
        m = reconstruction_metrics(y, x, data_range=self.data_range)
        row = {**m, "input_shape": list(x.shape), "latent_shape": list(z.shape)}
        if self.save_grid:
            _save_grid(x, y, self.outputs(out_stem)[1],
                       f"{os.path.basename(out_stem)}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}")
        io.save_json(row, self.outputs(out_stem)[0])
        return row


@torch.no_grad()
def resolve_scale_factor(network: StackedVideoVAE, scale_factor=None, data=None, num_inputs: int = 4,
                         image_key: str = "image") -> float:
    """Set the latent scale factor of ``network`` and return it.

    ``scale_factor``: a number (used as given), ``None`` (keep the network's, 1.0 when unset) or ``"auto"``:
    ``1 / std`` of the posterior-mean latents of the first ``num_inputs`` items of ``data`` (a MONAI ``Dataset``
    or a sequence of items ``{"image": [C, D, H, W]}``), the convention of latent diffusion. The source is kept in
    ``network.scale_factor_source`` and written to every sidecar.
    """
    if scale_factor is None:
        network.scale_factor_source = "given" if network.scale_factor is not None else "none (1.0)"
        return network.effective_scale
    if isinstance(scale_factor, str) and scale_factor.strip().lower() == "auto":
        if data is None:
            raise OCTInputError("scale_factor", "--scale_factor auto applies to encoding; decoding uses the scale "
                                                "factor each latent's sidecar records")
        n = min(int(num_inputs), len(data))
        if n < 1:
            raise OCTInputError("scale_factor", "--scale_factor auto needs at least one input to measure")
        vols = []
        for i in range(n):
            x = data[i][image_key]
            x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
            vols.append(x.float()[None].to(next(network.parameters()).device))
        value = network.compute_scale_factor(vols)
        network.scale_factor_source = f"auto: 1/std of the mean latents of {n} input(s)"
        print(f"MAISI scale factor (auto, {n} input(s)): {value:.6g}")
        return value
    try:
        value = float(scale_factor)
    except (TypeError, ValueError):
        raise OCTInputError("scale_factor", f"{scale_factor!r} is neither a number nor 'auto'") from None
    if not (value > 0 and np.isfinite(value)):
        raise OCTInputError("scale_factor", f"{scale_factor!r} must be a positive number")
    network.scale_factor = value
    network.scale_factor_source = "given"
    return value


def latent_files(folder) -> list[str]:
    """The ``*_latent.pt`` / ``*_latent.npy`` files of an encode output folder (local or URL), sorted."""
    if not io.exists(folder):
        raise OCTInputError(folder, "latent folder not found")
    return [p for p in io.list_files(folder) if p.endswith(LATENT_SUFFIXES)]


def latent_id_map(folder) -> dict[str, str]:
    """``{latent file name: encode ID}`` so that decoded volumes keep the IDs of their latents."""
    out = {}
    for p in latent_files(folder):
        name = os.path.basename(p)
        out[name] = next(name[: -len(s)] for s in LATENT_SUFFIXES if name.endswith(s))
    return out


def write_reconstruction_summary(rows: Sequence[Mapping], output_dir, name: str = "metrics_summary") -> dict:
    """Write ``<name>.json`` (mean/std/median/min/max/n per metric) and ``<name>.csv``; returns the summary."""
    from oct_foundation.metrics.reconstruction import summarise_reconstruction

    ok = [r for r in rows if r.get("status", "done") in ("done", "skipped")]
    summary = summarise_reconstruction(ok)
    summary_doc = {"metrics": summary, "inputs": len(rows), "evaluated": summary["mse"]["n"],
                   "failed": sum(1 for r in rows if r.get("status") == "error")}
    io.save_json(summary_doc, io.join(output_dir, f"{name}.json"))
    io.write_csv([{"metric": m, **{k: f"{s[k]:.6g}" for k in ("mean", "std", "median", "min", "max")}, "n": s["n"]}
                  for m, s in summary.items()], io.join(output_dir, f"{name}.csv"))
    print(json.dumps(summary_doc, indent=1))
    return summary_doc
