"""2D+time inputs read as [C, T, H, W]: video (.avi lossless, .mp4 lossy), multi-page TIFF, a PNG folder."""
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from oct_foundation.data.readers import LoadOCTd, load_oct
from oct_foundation.data.video import FrameFolderReader, TiffStackReader, VideoReader
from oct_foundation.errors import OCTInputError

T, H, W = 6, 32, 48


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 255, size=(T, H, W, 3)).astype(np.uint8)


def _luma(rgb):
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_avi_lossless_gray_channel_and_all(tmp_path, rgb):
    p = tmp_path / "clip.avi"
    iio.imwrite(p, rgb, plugin="FFMPEG", fps=12, codec="png", pixelformat="rgb24", macro_block_size=1)
    x = load_oct(p)
    assert tuple(x.shape) == (1, T, H, W) and x.meta["format"] == "video"
    np.testing.assert_allclose(x[0].numpy(), _luma(rgb), rtol=1e-6, atol=1e-4)
    assert x.meta["fps"] == pytest.approx(12.0) and x.meta["n_frames"] == T
    np.testing.assert_array_equal(x.meta["spacing"], (1.0, 1.0, 1.0))
    assert "no physical spacing" in x.meta["spacing_source"]
    g = load_oct(p, VideoReader(channel=1))
    np.testing.assert_array_equal(g[0].numpy(), rgb[..., 1].astype(np.float32))
    a = load_oct(p, VideoReader(channel="all"))
    np.testing.assert_array_equal(a.numpy(), np.moveaxis(rgb, -1, 0).astype(np.float32))
    with pytest.raises(OCTInputError, match=r"clip.avi: channel 5 not available: frames have 3 channels"):
        load_oct(p, VideoReader(channel=5))


def test_mp4_reads_all_frames_close_to_the_input(tmp_path):
    ramp = np.repeat(np.linspace(0, 255, W)[None, None, :, None], H, 1).repeat(T, 0).repeat(3, 3).astype(np.uint8)
    p = tmp_path / "clip.mp4"
    iio.imwrite(p, ramp, plugin="FFMPEG", fps=10, macro_block_size=16)
    x = load_oct(p)
    assert tuple(x.shape) == (1, T, H, W)
    assert np.abs(x[0].numpy() - ramp[..., 0].astype(np.float32)).max() <= 8  # lossy codec


def test_multipage_tiff_and_png_folder(tmp_path, rgb):
    gray = rgb[..., 0]
    t = tmp_path / "stack.tif"
    tifffile.imwrite(t, gray)  # [T, H, W] as T pages
    assert len(tifffile.TiffFile(t).pages) == T
    x = load_oct(t)
    assert x.meta["format"] == "tiff"
    np.testing.assert_array_equal(x[0].numpy(), gray.astype(np.float32))
    t2 = tmp_path / "stack_rgb.tiff"
    tifffile.imwrite(t2, rgb, photometric="rgb")
    np.testing.assert_allclose(load_oct(t2, TiffStackReader())[0].numpy(), _luma(rgb), atol=1e-4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(T):  # natural order: f2 before f10
        iio.imwrite(folder / f"f{i * 4}.png", gray[i])
    (folder / "notes.txt").write_text("not a frame")
    y = LoadOCTd(["image"])({"image": str(folder)})["image"]
    assert y.meta["format"] == "frames" and y.meta["frame_files"][:3] == ["f0.png", "f4.png", "f8.png"]
    np.testing.assert_array_equal(y[0].numpy(), gray.astype(np.float32))


def test_png_folder_on_memory_url(memfs, rgb):
    for i in range(T):
        memfs.pipe(f"/bucket/vid/{i:03d}.png", iio.imwrite("<bytes>", rgb[i], extension=".png"))
    x = load_oct("memory://bucket/vid", FrameFolderReader())
    np.testing.assert_allclose(x[0].numpy(), _luma(rgb), atol=1e-4)


def test_video_bad_input_names_the_file(tmp_path, rgb):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 500)
    with pytest.raises(OCTInputError, match=r"broken.mp4: cannot (read|decode) video"):
        load_oct(bad)
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, rgb[0, ..., 0])
    with pytest.raises(OCTInputError, match=r"one.tif: a single frame"):
        load_oct(one)
    folder = tmp_path / "mixed"
    folder.mkdir()
    iio.imwrite(folder / "a1.png", rgb[0, ..., 0])
    iio.imwrite(folder / "a2.png", rgb[1, :16, :, 0])
    with pytest.raises(OCTInputError, match=r"mixed: frame 1 has shape \(16, 48\), frame 0 has \(32, 48\)"):
        load_oct(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OCTInputError, match=r"empty: folder holds no .png frames"):
        load_oct(tmp_path / "empty")


@pytest.mark.parametrize("fmt", ["mp4", "avi", "tiff", "png"])
def test_write_frames_round_trip(tmp_path, fmt):
    """write_frames output reads back through the package's readers with the same frames and size."""
    from oct_foundation.data import LoadOCTd
    from oct_foundation.data.video import write_frames

    rng = np.random.default_rng(0)
    vol = np.clip(rng.random((1, 5, 15, 17)) * 0.2 + np.linspace(0, 0.8, 17), 0, 1).astype(np.float32)
    path = str(tmp_path / {"mp4": "v.mp4", "avi": "v.avi", "tiff": "v.tif", "png": "frames"}[fmt])
    written = write_frames(vol, path, fmt, fps=7)
    assert len(written) == (5 if fmt == "png" else 1)
    back = LoadOCTd(keys=["image"])({"image": path})["image"]
    assert tuple(back.shape) == vol.shape
    back = back.numpy() / (1.0 if fmt == "tiff" else 255.0)
    tol = {"tiff": 1e-7, "avi": 1 / 255, "png": 1 / 255, "mp4": 0.08}[fmt]  # mp4 is lossy (H.264)
    assert np.abs(back - vol).mean() <= tol, np.abs(back - vol).mean()
    if fmt in ("mp4", "avi"):
        from oct_foundation.data.video import video_fps

        assert video_fps(path) == 7.0
