"""2D+time inputs (for the MAISI bundle): ``.mp4`` / ``.avi`` video, multi-page TIFF, a folder of PNG frames.

Each reader is a MONAI :class:`~monai.data.ImageReader` with the contract of
:mod:`oct_foundation.data.readers`: ``get_data`` gives ``[C, T, H, W]`` (T = frame index in the place of D,
H = image rows, W = columns) and meta with ``spacing = (1, 1, 1)`` (frames and pixels carry no physical size;
``spacing_source`` says so), ``n_frames``, ``channel`` and, for video, ``fps``. Colour frames become grey
(ITU-R BT.601 luma) by default, or one channel (``channel=0..``), or all of them (``channel="all"``).
Video is decoded frame by frame through imageio's ffmpeg plugin (imageio-ffmpeg's bundled binary), and each
frame is reduced to the chosen channel before the next is decoded, so an RGB video never sits in memory
as RGB. Anything unreadable raises a one-line :class:`~oct_foundation.errors.OCTInputError` naming the file.
"""
from __future__ import annotations

import contextlib
import posixpath
import re
from typing import Iterator

import numpy as np

from oct_foundation import io as oio
from oct_foundation.data.readers import OCTImage, _first_line, _OCTReaderBase, _subsample_image
from oct_foundation.errors import OCTInputError

__all__ = [
    "VideoReader",
    "TiffStackReader",
    "FrameFolderReader",
    "VIDEO_SUFFIXES",
    "TIFF_SUFFIXES",
    "FRAME_SUFFIXES",
    "to_channels",
    "frame_reader",
    "stream_frames",
    "video_fps",
    "write_frames",
    "WRITE_FORMATS",
]

VIDEO_SUFFIXES = (".mp4", ".avi")
TIFF_SUFFIXES = (".tif", ".tiff")
FRAME_SUFFIXES = (".png",)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_NO_SPACING = "frames: no physical spacing (1.0 per frame and pixel)"


def _channel_shape(shape, channel, path) -> tuple:
    """The shape ``[C, H, W]`` :func:`to_channels` gives a frame of ``shape`` (and its errors), without the frame."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 2:
        if channel not in ("gray", "all", 0):
            raise OCTInputError(path, f"channel {channel!r} asked, but the frames are grey (one channel)")
        return (1,) + shape
    if len(shape) != 3:
        raise OCTInputError(path, f"expected frames [H, W] or [H, W, channels], got shape {shape}")
    h, w, k = shape
    if channel == "gray":
        return (1 if k in (3, 4) else min(k, 1), h, w)
    if channel == "all":
        return (k, h, w)
    if isinstance(channel, (int, np.integer)) and 0 <= int(channel) < k:
        return (1, h, w)
    raise OCTInputError(path, f"channel {channel!r} not available: frames have {k} channels")


def _channel_dtype(shape, dtype, channel) -> np.dtype:
    """The dtype :func:`to_channels` gives a frame of ``shape`` and ``dtype`` (grey from colour is float32)."""
    if channel == "gray" and len(shape) == 3 and shape[-1] in (3, 4):
        return np.dtype(np.float32)
    return np.dtype(dtype)


def to_channels(frame: np.ndarray, channel, path) -> np.ndarray:
    """One frame ``[H, W]`` / ``[H, W, K]`` -> ``[C, H, W]`` for ``channel`` (``"gray"``, an index or ``"all"``)."""
    f = np.asarray(frame)
    _channel_shape(f.shape, channel, path)  # the checks
    if f.ndim == 2:
        return f[None]
    k = f.shape[-1]
    if channel == "gray":
        if k in (3, 4):
            return (f[..., :3].astype(np.float32) @ _LUMA)[None]
        return f[..., :1].transpose(2, 0, 1)
    if channel == "all":
        return np.moveaxis(f, -1, 0)
    return f[..., int(channel)][None]


class _FramesBase(_OCTReaderBase):
    def __init__(self, channel="gray", sanitize_nan: bool = False, dtype=np.float32, **kwargs):
        """
        Args:
            channel: ``"gray"`` (default), a channel index, or ``"all"``.
        """
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        if not (channel in ("gray", "all") or (isinstance(channel, (int, np.integer)) and int(channel) >= 0)):
            raise ValueError(f"channel must be 'gray', 'all' or a channel index >= 0, got {channel!r}")
        self.channel = channel

    def _checked_frames(self, frames, path):
        """``frames`` (raw frames) -> ``[C, H, W]`` frames of the chosen channel, one at a time, same shape."""
        shape = None
        for i, frame in enumerate(frames):
            c = to_channels(frame, self.channel, path)
            if self.dtype is not None:
                c = c.astype(self.dtype, copy=False)
            if shape is None:
                shape = c.shape
            elif c.shape != shape:
                raise OCTInputError(path, f"frame {i} has shape {c.shape[1:]}, frame 0 has {shape[1:]}")
            yield c

    def _raw_frames(self, path: str):  # pragma: no cover - abstract
        raise NotImplementedError

    def iter_frames(self, path) -> Iterator[np.ndarray]:
        """The frames of ``path`` one at a time, ``[C, H, W]`` (the reader's channel and dtype), decoded lazily:
        a long video is never held whole (what :func:`stream_frames` and the MAISI encoder's streaming use)."""
        return self._checked_frames(self._raw_frames(str(path)), str(path))

    def _stack(self, frames, path, extra) -> OCTImage:
        """``frames`` (an iterable of frames) -> OCTImage ``[C, T, H, W]``; each frame reduced as it comes."""
        out = list(self._checked_frames(frames, path))
        if not out:
            raise OCTInputError(path, "no frames")
        if len(out) < 2:
            raise OCTInputError(path, "a single frame; expected a sequence of frames [T, H, W]")
        arr = self._finalise(np.stack(out, axis=1), path)
        extra = {"spacing_source": _NO_SPACING, "n_frames": int(arr.shape[1]), "channel": str(self.channel), **extra}
        return OCTImage(arr, (1.0, 1.0, 1.0), path, self.fmt, extra=extra)

    def _read_chosen(self, path, props, decode, choose, extra) -> OCTImage:
        """What :meth:`_stack` makes of all the frames, decoding only those ``choose`` picks.

        ``props`` is every frame's ``(shape, dtype)`` as the file's headers give it: the whole read's checks
        (each frame's channels, every frame the shape of frame 0, at least two frames) and the output dtype
        (``dtype=None``: what stacking all the frames would give) come from those. ``decode(i)`` gives frame
        ``i`` (raising :class:`OCTInputError` naming what failed). A decoded frame that is not what its header
        said sends the file to the whole read (with the same indices)."""
        shape, dtypes = None, set()
        for i, (s, dt) in enumerate(props):
            c = _channel_shape(s, self.channel, path)
            if shape is None:
                shape = c
            elif c != shape:
                raise OCTInputError(path, f"frame {i} has shape {c[1:]}, frame 0 has {shape[1:]}")
            dtypes.add(_channel_dtype(s, dt, self.channel))
        if not props:
            raise OCTInputError(path, "no frames")
        if len(props) < 2:
            raise OCTInputError(path, "a single frame; expected a sequence of frames [T, H, W]")
        n = len(props)
        idx = np.asarray(choose(n), dtype=np.int64)
        out_dtype = np.dtype(self.dtype) if self.dtype is not None else np.result_type(*sorted(dtypes, key=str))
        frames = {}
        for i in np.unique(idx):
            raw = np.asarray(decode(int(i)))
            if raw.shape != tuple(props[i][0]) or raw.dtype != np.dtype(props[i][1]):
                img = self._read_one(path)  # the headers and the pixels disagree: read every frame
                if img.array.shape[1] != n:
                    raise OCTInputError(path, f"the headers list {n} frames, the data holds {img.array.shape[1]}")
                return _subsample_image(img, lambda depth: idx)
            frames[int(i)] = to_channels(raw, self.channel, path).astype(out_dtype, copy=False)
        arr = self._finalise(np.stack([frames[int(i)] for i in idx], axis=1), path)
        extra = {"spacing_source": _NO_SPACING, "n_frames": n, "channel": str(self.channel), **extra}
        return OCTImage(arr, (1.0, 1.0, 1.0), path, self.fmt, extra=extra, depth=n, slice_indices=idx)


class VideoReader(_FramesBase):
    """``.mp4`` / ``.avi`` through imageio's ffmpeg plugin, decoded frame by frame; meta ``fps``."""

    suffixes = VIDEO_SUFFIXES
    fmt = "video"

    def _read_one(self, path: str) -> OCTImage:
        fps: list = []
        img = self._stack(self._raw_frames(path, fps), path, {})
        img.extra["fps"] = fps[0] if fps else float("nan")
        return img

    def _raw_frames(self, path: str, fps: list | None = None):
        import imageio.v3 as iio

        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        try:
            with oio.local_path(path) as local:
                try:
                    rate = float(iio.immeta(local, plugin="FFMPEG").get("fps", float("nan")))
                except Exception as e:
                    raise OCTInputError(path, f"cannot read video, not a video or corrupt ({_first_line(e)})") \
                        from None
                if fps is not None:
                    fps.append(rate)
                yield from iio.imiter(local, plugin="FFMPEG")
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot decode video, truncated or corrupt ({_first_line(e)})") from None


class TiffStackReader(_FramesBase):
    """Multi-page TIFF (pages = frames) through tifffile, page by page."""

    suffixes = TIFF_SUFFIXES
    fmt = "tiff"

    def _read_one(self, path: str) -> OCTImage:
        return self._stack(self._raw_frames(path), path, {})

    def _raw_frames(self, path: str):
        import tifffile

        try:
            with oio.local_path(path) as local, tifffile.TiffFile(local) as tif:
                pages = tif.pages
                if len(pages) == 1 and pages[0].ndim >= 3 and pages[0].shape[-1] not in (3, 4):
                    # one page holding [T, H, W] (tifffile's own writer for a 3D array with contiguous=True)
                    yield from pages[0].asarray()
                    return
                for p in pages:
                    yield p.asarray()
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot read TIFF, truncated or corrupt ({_first_line(e)})") from None

    partial_depth = True

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """Only the chosen pages: the page count and every page's shape and dtype come from the page headers
        (IFDs, no pixel data), then only the chosen pages are decoded. A single page holding ``[T, H, W]`` is
        decoded whole (one page). A URL is copied to a local file first, as :meth:`read` does."""
        import tifffile

        def failed(e):
            return OCTInputError(path, f"cannot read TIFF, truncated or corrupt ({_first_line(e)})")

        with contextlib.ExitStack() as stack:
            try:
                local = stack.enter_context(oio.local_path(path))
                tif = stack.enter_context(tifffile.TiffFile(local))
                pages = tif.pages
                first = pages[0] if len(pages) else None
                if len(pages) == 1 and first.ndim >= 3 and first.shape[-1] not in (3, 4):
                    props = [(tuple(first.shape[1:]), first.dtype)] * int(first.shape[0])
                    whole: list = []

                    def page(i):  # the frames of the one page [T, H, W]
                        if not whole:
                            whole.append(first.asarray())
                        return whole[0][i]
                else:
                    props = [(tuple(p.shape), p.dtype) for p in pages]

                    def page(i):
                        return pages[i].asarray()
            except OCTInputError:
                raise
            except Exception as e:
                raise failed(e) from None

            def decode(i):
                try:
                    return page(i)
                except Exception as e:
                    raise failed(e) from None

            return self._read_chosen(path, props, decode, choose, {})


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", posixpath.basename(name))]


class FrameFolderReader(_FramesBase):
    """A folder of ``.png`` frames (local or URL), in natural order of their names (``f2`` before ``f10``)."""

    suffixes = ()
    fmt = "frames"

    def verify_suffix(self, filename) -> bool:
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return all(is_frame_folder(n) for n in names)

    def _files(self, path: str) -> list[str]:
        if not oio.exists(path):
            raise OCTInputError(path, "folder not found")
        files = sorted(oio.list_files(path, FRAME_SUFFIXES), key=_natural_key)
        if not files:
            raise OCTInputError(path, "folder holds no .png frames")
        return files

    def _read_one(self, path: str) -> OCTImage:
        files = self._files(path)
        return self._stack(self._raw_frames(path), path, {"frame_files": [posixpath.basename(f) for f in files]})

    def _raw_frames(self, path: str):
        import imageio.v3 as iio

        for f in self._files(path):
            try:
                yield iio.imread(_read(f), extension=".png")
            except Exception as e:
                raise OCTInputError(f, f"cannot read PNG frame ({_first_line(e)})") from None

    partial_depth = True

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """Only the chosen frame files are read and decoded; every frame's shape and dtype (for the whole read's
        checks) come from its PNG header chunks (imageio's ``improps``: the first bytes of each file)."""
        import imageio.v3 as iio

        files = self._files(path)
        props = []
        for f in files:
            try:
                with oio.open_file(f, "rb") as fh:
                    p = iio.improps(fh, extension=".png")
            except OCTInputError:
                raise
            except Exception as e:
                raise OCTInputError(f, f"cannot read PNG frame ({_first_line(e)})") from None
            props.append((tuple(p.shape), p.dtype))

        def decode(i):
            try:
                return iio.imread(_read(files[i]), extension=".png")
            except Exception as e:
                raise OCTInputError(files[i], f"cannot read PNG frame ({_first_line(e)})") from None

        return self._read_chosen(path, props, decode, choose,
                                 {"frame_files": [posixpath.basename(f) for f in files]})


def frame_reader(path, channel="gray"):
    """The frame reader (:class:`VideoReader`, :class:`TiffStackReader`, :class:`FrameFolderReader`) for
    ``path``, or ``None`` when ``path`` is not a 2D+time input."""
    name = str(path).lower().rstrip("/")
    if name.endswith(VIDEO_SUFFIXES):
        return VideoReader(channel=channel)
    if name.endswith(TIFF_SUFFIXES):
        return TiffStackReader(channel=channel)
    if is_frame_folder(path):
        return FrameFolderReader(channel=channel)
    return None


def stream_frames(path, channel="gray") -> Iterator[np.ndarray]:
    """``[C, H, W]`` float32 frames of a video, multi-page TIFF or PNG folder, decoded one at a time."""
    reader = frame_reader(path, channel)
    if reader is None:
        raise OCTInputError(path, "not a video (.mp4/.avi), multi-page TIFF or folder of .png frames")
    return reader.iter_frames(path)


def video_fps(path) -> float:
    """Frames per second of an ``.mp4`` / ``.avi`` file (NaN where the container does not say)."""
    import imageio.v3 as iio

    try:
        with oio.local_path(path) as local:
            return float(iio.immeta(local, plugin="FFMPEG").get("fps", float("nan")))
    except OCTInputError:
        raise
    except Exception as e:
        raise OCTInputError(path, f"cannot read video, not a video or corrupt ({_first_line(e)})") from None


#: formats :func:`write_frames` writes (``[C, T, H, W]`` in [0, 1] -> 8-bit frames, or float32 TIFF pages)
WRITE_FORMATS = ("mp4", "avi", "tiff", "png")


def write_frames(volume: np.ndarray, path: str, fmt: str, fps: float | None = None) -> list[str]:
    """Write ``volume`` ``[C, T, H, W]`` (values in [0, 1]; C = 1 grey or 3 RGB) as a 2D+time file, atomically.

    ``fmt``: ``"mp4"`` (H.264, yuv444p so odd sizes work; lossy), ``"avi"`` (lossless PNG codec), ``"tiff"``
    (float32 pages, exact) or ``"png"`` (a folder ``path`` of 8-bit ``frame00000.png`` ...). ``fps`` defaults to
    10. Returns the written paths (local or URL).
    """
    import imageio.v3 as iio

    arr = np.asarray(volume, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected [C, T, H, W] with C 1 or 3, got shape {arr.shape}")
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"fmt must be one of {WRITE_FORMATS}, got {fmt!r}")
    frames = np.moveaxis(arr, 0, -1)  # [T, H, W, C]
    rate = 10.0 if fps is None or not np.isfinite(fps) or fps <= 0 else float(fps)
    if fmt == "tiff":
        import tifffile

        with oio.atomic_output(path) as tmp:
            tifffile.imwrite(tmp, frames[..., 0] if frames.shape[-1] == 1 else frames)
        return [path]
    u8 = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if fmt == "png":
        out = []
        for i, f in enumerate(u8):
            name = oio.join(path, f"frame{i:05d}.png")
            with oio.atomic_output(name) as tmp:
                iio.imwrite(tmp, f[..., 0] if f.shape[-1] == 1 else f, extension=".png")
            out.append(name)
        return out
    rgb = np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8
    opts = ({"codec": "libx264", "pixelformat": "yuv444p", "quality": 10} if fmt == "mp4"
            else {"codec": "png", "pixelformat": "rgb24"})
    with oio.atomic_output(path) as tmp:
        iio.imwrite(tmp, rgb, plugin="FFMPEG", extension=f".{fmt}", fps=rate, macro_block_size=1, **opts)
    return [path]


def _read(path) -> bytes:
    with oio.open_file(path, "rb") as f:
        return f.read()


def is_frame_folder(path) -> bool:
    """``path`` is an existing folder (local or URL)."""
    import os

    p = str(path).rstrip("/")
    if not oio.is_url(p):
        return os.path.isdir(p[len("file://"):] if p.startswith("file://") else p)
    fs, q = oio._fs(p)
    return fs.isdir(q)
