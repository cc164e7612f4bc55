"""Reading only the slices depth subsampling keeps (``LoadOCTSlicesd``) gives exactly the read-all chain's output.

For every format with partial reading (NIfTI plain / gzip / scaled / reoriented / channels-last, DICOM
multi-frame, HEYEX ``.vol``, ``.npy``, Zeiss ``.img``, Optovue ``.OCT``, multi-page TIFF, PNG frame folders,
local and URL) and every depth strategy, the chain of
``build_preprocessing(read_kept_slices=True)`` and that of ``read_kept_slices=False`` (read every slice, then
``DepthSubsampled``), seeded alike, give the same tensors, ``slice_indices``, affine and meta, item after item.
Hooks then show the partial chain decodes only ``d_target`` slices and never the whole volume.
"""
import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from oct_foundation.data import readers as R
from oct_foundation.data.readers import LoadOCTd, LoadOCTSlicesd, write_dicom_oct, write_heyex_vol
from oct_foundation.data.transforms import DepthSubsampled, build_preprocessing
from oct_foundation.data.vendor import OptovueOCTReader, ZeissImgReader
from oct_foundation.data.video import FrameFolderReader, TiffStackReader
from oct_foundation.errors import OCTInputError

from .test_vendor_readers import _optovue_pair, write_topcon

SPACING = (0.12, 0.0039, 0.0113)
DEPTH, H, W = 20, 12, 10
D_TARGET = 6


@pytest.fixture
def vol():
    return np.random.default_rng(7).integers(0, 256, size=(DEPTH, H, W), dtype=np.uint8)


def _nifti(path, data, affine=None, slope=None):
    affine = np.diag(list(SPACING) + [1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, 3.0)
    nib.save(img, str(path))
    return str(path)


def _files(tmp_path, memfs, vol):
    """name -> path, one per partial-reading case."""
    out = {
        "nii": _nifti(tmp_path / "a.nii", vol),
        "nii.gz scaled int16": _nifti(tmp_path / "b.nii.gz", vol.astype(np.int16) * 3, slope=0.5),
        "nii.gz channels last": _nifti(tmp_path / "c.nii.gz", np.stack([vol, 255 - vol], axis=-1).astype(np.float32)),
    }
    # stored as [W, H, D] with D flipped (axis codes ASL-like): reoriented to [D, H, W] by the reader
    stored = np.ascontiguousarray(np.transpose(vol[::-1], (2, 1, 0)))
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 1], aff[2, 0], aff[3, 3] = -SPACING[0], SPACING[1], SPACING[2], 1.0
    out["nii reoriented"] = _nifti(tmp_path / "d.nii", stored, affine=aff)
    out["dicom uint8"] = write_dicom_oct(str(tmp_path / "e.dcm"), vol, spacing=SPACING)
    out["dicom uint16"] = write_dicom_oct(str(tmp_path / "f.dcm"), vol.astype(np.uint16) * 200, spacing=SPACING)
    out["vol"] = write_heyex_vol(str(tmp_path / "g.vol"), vol, spacing=SPACING)
    np.save(tmp_path / "h.npy", vol.astype(np.float32))
    out["npy"] = str(tmp_path / "h.npy")
    np.save(tmp_path / "i.npy", np.stack([vol, vol // 2]).astype(np.int16))
    out["npy 4D"] = str(tmp_path / "i.npy")
    memfs.pipe("/b/j.npy", (tmp_path / "h.npy").read_bytes())
    out["npy URL"] = "memory://b/j.npy"
    zeiss = _zeiss(tmp_path, vol)
    out["zeiss img"] = str(zeiss)
    memfs.pipe(f"/b/{zeiss.name}", zeiss.read_bytes())
    out["zeiss img URL"] = f"memory://b/{zeiss.name}"
    opto, _ = _optovue_pair(tmp_path, [(H, W, DEPTH)])
    out["optovue"] = str(opto)
    memfs.pipe("/b/scan_1.OCT", opto.read_bytes())
    memfs.pipe("/b/scan_1.txt", (tmp_path / "scan_1.txt").read_bytes())
    out["optovue URL"] = "memory://b/scan_1.OCT"
    tifffile.imwrite(tmp_path / "k.tif", vol)  # one page per frame
    out["tiff"] = str(tmp_path / "k.tif")
    memfs.pipe("/b/k.tif", (tmp_path / "k.tif").read_bytes())
    out["tiff URL"] = "memory://b/k.tif"
    out["png frames"] = _png_folder(tmp_path / "frames", vol)
    for f in (tmp_path / "frames").iterdir():
        memfs.pipe(f"/b/frames/{f.name}", f.read_bytes())
    out["png frames URL"] = "memory://b/frames"
    return out


def _zeiss(folder, vol, name=None):
    """A Zeiss Cirrus raw export of ``vol [D, H, W]``: per B-scan, W A-scans of H bytes each; geometry in the name."""
    d, h, w = vol.shape
    path = folder / (name or f"P1_Macular_Cube_{w}x{d}_5-6-2024_7-8-9_OD_sn42_cube_z.img")
    path.write_bytes(np.ascontiguousarray(vol.transpose(0, 2, 1)).tobytes())
    return path


def _png_folder(folder, frames):
    folder.mkdir()
    for i, f in enumerate(frames):  # natural order: f2 before f10
        iio.imwrite(folder / f"f{i}.png", f)
    return str(folder)


def _assert_same(a: MetaTensor, b: MetaTensor):
    assert torch.equal(a.as_tensor(), b.as_tensor())
    assert torch.equal(a.affine, b.affine)
    assert set(a.meta) == set(b.meta), set(a.meta) ^ set(b.meta)
    for k in a.meta:
        va, vb = a.meta[k], b.meta[k]
        if isinstance(va, (torch.Tensor, np.ndarray)):
            assert np.array_equal(np.asarray(va), np.asarray(vb)), k
        else:
            assert va == vb, k
    assert len(a.applied_operations) == len(b.applied_operations)


def _chains(partial_too=True, **kw):
    eager = Compose(build_preprocessing(read_kept_slices=False, **kw))
    lazy = Compose(build_preprocessing(read_kept_slices=True, **kw))
    eager.set_random_state(11)
    lazy.set_random_state(11)
    return eager, lazy


CASES = [
    dict(strategy="uniform", train=True),
    dict(strategy="contiguous", train=True),
    dict(strategy="random", train=True),
    dict(strategy="random", train=True, preserve_first_last=True),
    dict(strategy="uniform", train=False),
    dict(strategy="contiguous", train=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_partial_read_equals_read_all_for_every_format(tmp_path, memfs, vol, case):
    files = _files(tmp_path, memfs, vol)
    eager, lazy = _chains(d_target=D_TARGET, image_size=(8, 8), min_depth=2, **case)
    assert type(lazy.transforms[0]) is LoadOCTSlicesd and type(eager.transforms[0]) is LoadOCTd
    seen = set()
    for _ in range(2):  # item after item: both chains draw the same stream of random indices
        for name, path in files.items():
            a = eager({"image": path})["image"]
            b = lazy({"image": path})["image"]
            _assert_same(a, b)
            assert b.shape[1] == D_TARGET and b.meta["original_depth"] == DEPTH, name
            assert R.READ_SUBSAMPLED not in b.meta
            seen.add(tuple(b.meta["slice_indices"].tolist()))
    if case["train"] and case["strategy"] != "uniform" or case.get("preserve_first_last"):
        assert len(seen) > 1  # the draws really are random (and still equal in both chains)


def test_image_and_label_get_the_same_slices_and_tensor_values_stay_subsampled(tmp_path, memfs, vol):
    img = _nifti(tmp_path / "img.nii.gz", vol)
    lab = write_dicom_oct(str(tmp_path / "lab.dcm"), (vol > 128).astype(np.uint8), spacing=SPACING)
    kw = dict(label_key="label", d_target=D_TARGET, strategy="random", train=True)
    eager, lazy = _chains(**kw)
    for item in ({"image": img, "label": lab},
                 {"image": img, "label": torch.as_tensor((vol[None] > 128).astype(np.float32))}):
        a, b = eager(dict(item)), lazy(dict(item))
        for k in ("image", "label"):
            assert torch.equal(a[k].as_tensor(), b[k].as_tensor()), k
            assert torch.equal(a[k].meta["slice_indices"], b[k].meta["slice_indices"])
        assert torch.equal(b["image"].meta["slice_indices"], b["label"].meta["slice_indices"])


def test_different_depths_and_short_volumes_refused_as_before(tmp_path, vol):
    a = _nifti(tmp_path / "a.nii", vol)
    b = _nifti(tmp_path / "b.nii", vol[:10])
    _, lazy = _chains(label_key="label", d_target=4)
    with pytest.raises(RuntimeError) as e:
        lazy({"image": a, "label": b})
    assert "different slice counts" in str(e.value.__cause__)
    _, lazy = _chains(d_target=4, min_depth=12)
    with pytest.raises(RuntimeError) as e:
        lazy({"image": b})
    assert isinstance(e.value.__cause__, OCTInputError) and "10 slices, fewer than the 12 needed" in str(e.value.__cause__)


def test_fallback_formats_read_whole_and_match(tmp_path, vol):
    """A format without partial reading (Topcon ``.fds``) is read whole and subsampled: same output."""
    from oct_foundation.data.vendor import TopconOCTReader

    p = str(write_topcon(tmp_path / "a.fds", vol.astype(np.uint16)))
    assert not TopconOCTReader.partial_depth
    eager, lazy = _chains(d_target=D_TARGET, strategy="random")
    for _ in range(3):
        _assert_same(eager({"image": p})["image"], lazy({"image": p})["image"])


def test_reader_without_read_depth_reads_whole(tmp_path, vol):
    """A reader with only MONAI's read/get_data (no read_depth) is read whole, then subsampled: same output."""

    class PlainReader:
        def __init__(self):
            self.inner = R.OCTVolumeReader()

        def read(self, data):
            return self.inner.read(data)

        def get_data(self, img):
            return self.inner.get_data(img)

    p = _nifti(tmp_path / "a.nii", vol)
    sub = DepthSubsampled("image", D_TARGET, strategy="random")
    lazy = Compose([LoadOCTSlicesd("image", sub, reader=PlainReader()), sub])
    eager = Compose([LoadOCTd("image"), DepthSubsampled("image", D_TARGET, strategy="random")])
    lazy.set_random_state(3)
    eager.set_random_state(3)
    for _ in range(3):
        _assert_same(eager({"image": p})["image"], lazy({"image": p})["image"])


# ------------------------------------------------------------------------------------------ hooks
@pytest.fixture
def decoded(monkeypatch):
    """Shapes of every array a format reader decoded (all pass through readers._finalise)."""
    shapes = []
    real = R._finalise

    def spy(array, *a, **k):
        shapes.append(tuple(np.shape(array)))
        return real(array, *a, **k)

    monkeypatch.setattr(R, "_finalise", spy)
    return shapes


def test_partial_chain_never_decodes_the_whole_volume(tmp_path, memfs, vol, monkeypatch, decoded):
    import eyepy
    import pydicom
    from oct_converter.readers import IMG

    files = _files(tmp_path, memfs, vol)

    def whole(*a, **k):
        raise AssertionError("the whole volume was decoded")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", whole)  # np.asanyarray(img.dataobj)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(whole))
    monkeypatch.setattr(eyepy, "import_heyex_vol", whole)
    monkeypatch.setattr(np, "load", lambda *a, mmap_mode=None, **k: (
        whole() if mmap_mode is None else np.lib.format.open_memmap(a[0], mode="r")))
    monkeypatch.setattr(IMG, "read_oct_volume", whole)
    for reader in (ZeissImgReader, OptovueOCTReader, TiffStackReader, FrameFolderReader):
        monkeypatch.setattr(reader, "_read_one", whole)
    pages, pngs = [], []  # frames decoded
    real_page, real_png = tifffile.TiffPage.asarray, iio.imread
    monkeypatch.setattr(tifffile.TiffPage, "asarray",
                        lambda self, *a, **k: (pages.append(1), real_page(self, *a, **k))[1])
    monkeypatch.setattr(iio, "imread", lambda *a, **k: (pngs.append(1), real_png(*a, **k))[1])
    lazy = Compose(build_preprocessing(d_target=D_TARGET, strategy="random", normalize=False))
    lazy.set_random_state(0)
    for name, path in files.items():
        decoded.clear()
        pages.clear()
        pngs.clear()
        out = lazy({"image": path})["image"]
        assert out.shape[1] == D_TARGET, name
        assert decoded and all(DEPTH not in s for s in decoded), (name, decoded)  # only D_TARGET slices
        assert any(D_TARGET in s for s in decoded), (name, decoded)
        assert len(pages) == (D_TARGET if name.startswith("tiff") else 0), name
        assert len(pngs) == (D_TARGET if name.startswith("png") else 0), name
    # the read-all chain does decode every slice (so the hooks above would have caught it)
    monkeypatch.undo()
    decoded_all = []
    real = R._finalise
    monkeypatch.setattr(R, "_finalise", lambda a, *x, **k: (decoded_all.append(np.shape(a)), real(a, *x, **k))[1])
    Compose(build_preprocessing(d_target=D_TARGET, read_kept_slices=False))({"image": files["nii"]})
    assert any(DEPTH in s for s in decoded_all)


def test_npy_url_reads_only_the_kept_byte_ranges(memfs, tmp_path, vol, monkeypatch):
    np.save(tmp_path / "a.npy", vol.astype(np.float32))
    memfs.pipe("/b/a.npy", (tmp_path / "a.npy").read_bytes())
    read = []
    depth = []  # one guard for every wrapper (the memory filesystem may hand out the same file object again)
    real_open = R.oio.open_file

    def counting_open(path, mode="rb"):
        f = real_open(path, mode)
        real_read = f.read

        def r(n=-1):  # count the outermost call only (the file's own read may call read again)
            depth.append(1)
            try:
                out = real_read(n)
            finally:
                depth.pop()
            if not depth:
                read.append(len(out))
            return out

        f.read = r
        return f

    monkeypatch.setattr(R.oio, "open_file", counting_open)
    lazy = Compose(build_preprocessing(d_target=3, strategy="contiguous"))
    lazy.set_random_state(0)
    lazy({"image": "memory://b/a.npy"})
    slice_bytes = H * W * 4
    assert sum(read) < 4 * slice_bytes + 1024  # header + one run of 3 slices, not the 20 of the file
    assert sum(read) >= 3 * slice_bytes


def test_dataloader_workers_draw_the_same_slices(tmp_path):
    """In DataLoader workers the loader and the chain's DepthSubsampled stay one object (pickled together)."""
    from monai.data import DataLoader, Dataset
    from monai.utils import set_determinism

    items = []
    for i in range(4):
        np.save(tmp_path / f"{i}.npy", np.random.default_rng(i).integers(0, 255, (DEPTH, H, W)).astype(np.float32))
        items.append({"image": str(tmp_path / f"{i}.npy")})
    outs = {}
    for flag in (True, False):
        set_determinism(0)
        chain = Compose(build_preprocessing(d_target=5, strategy="random", read_kept_slices=flag))
        loader = DataLoader(Dataset(items, chain), batch_size=2, num_workers=2)
        outs[flag] = [(b["image"].as_tensor().clone(), b["image"].meta["slice_indices"].clone()) for b in loader]
    set_determinism(None)
    assert len(outs[True]) == 2
    for (a, ia), (b, ib) in zip(outs[True], outs[False]):
        assert torch.equal(a, b) and torch.equal(ia, ib)


# ------------------------------------------------------------------------------------------ vendor and frame readers
def _read_both(reader, path, idx):
    """(read-all then indexing, read_depth) of ``path`` with the indices ``idx``, compared field by field."""
    idx = np.asarray(idx, dtype=np.int64)
    calls = []
    whole = R._subsample_image(reader.read(path), lambda d: idx)
    part = reader.read_depth(path, lambda d: (calls.append(d), idx)[1])
    assert calls == [whole.depth]  # choose is called once, with the file's slice count
    assert part.array.dtype == whole.array.dtype and part.array.shape == whole.array.shape
    assert np.array_equal(part.array, whole.array)
    assert part.spacing == whole.spacing and part.fmt == whole.fmt and part.filename == whole.filename
    assert part.depth == whole.depth and np.array_equal(part.slice_indices, whole.slice_indices)
    assert part.extra == whole.extra
    (_, ma), (_, mb) = reader.get_data(whole), reader.get_data(part)
    assert set(ma) == set(mb) and all(np.array_equal(np.asarray(ma[k]), np.asarray(mb[k])) for k in ma)
    return part


INDICES = [[0], [1, 2, 3], [0, 4, 5, 9, 10, 19], [19], list(range(DEPTH)), [2, 2, 7]]


@pytest.mark.parametrize("dtype", [np.float32, None])
def test_zeiss_img_plain_and_interlaced(tmp_path, memfs, vol, dtype):
    p = _zeiss(tmp_path, vol)
    for idx in INDICES:
        part = _read_both(ZeissImgReader(dtype=dtype), str(p), idx)
        assert np.array_equal(part.array[0], vol[idx])  # stored A-scan by A-scan, read back as [D, H, W]
        assert part.extra["laterality"] == "R" and part.array.dtype == (dtype or np.uint8)
    # de-interlaced: 2 x 5 B-scans of 8 x 8 from 5 stored B-scans of 8 A-scans of 16 bytes
    stored = np.random.default_rng(3).integers(0, 256, size=(5, 16, 8), dtype=np.uint8)
    q = _zeiss(tmp_path, stored, name="scan_8x5_OS.img")
    memfs.pipe("/b/scan_8x5_OS.img", q.read_bytes())
    for path in (str(q), "memory://b/scan_8x5_OS.img"):
        for idx in ([0], [1], [0, 1, 2, 7, 8, 9], list(range(10)), [3, 6]):
            part = _read_both(ZeissImgReader(interlaced=True, dtype=dtype), path, idx)
            assert part.array.shape == (1, len(idx), 8, 8) and part.depth == 10
            assert part.array.dtype == (dtype or np.float64)  # as oct-converter de-interlaces
    # geometry oct-converter cannot de-interlace: the same error both ways; other errors name the file as before
    with pytest.raises(OCTInputError) as whole:
        ZeissImgReader(interlaced=True).read(str(p))
    with pytest.raises(OCTInputError) as part:
        ZeissImgReader(interlaced=True).read_depth(str(p), lambda d: np.arange(2))
    assert str(whole.value) == str(part.value) and "cannot read Zeiss .img" in str(part.value)
    for reader, message in [(ZeissImgReader(geometry=(7, 5)), r"whole number of 7x5 B-scans"),
                            (ZeissImgReader(), r"bare.img: Zeiss .img holds no geometry"),
                            (ZeissImgReader(max_voxels=100), r"exceeds max_voxels=100")]:
        path = str(p) if "max" in message else str(_zeiss(tmp_path, vol, name="bare.img"))
        with pytest.raises(OCTInputError, match=message):
            reader.read_depth(path, lambda d: np.arange(2))
    (tmp_path / "P1_Macular_Cube_10x20_5-6-2024_7-8-9_OD_sn42_cube_z.hdr").write_bytes(b"")
    with pytest.raises(OCTInputError, match="Analyze image"):
        ZeissImgReader().read_depth(str(p), lambda d: np.arange(2))


def _counting_reads(monkeypatch, module):
    """Bytes returned by the outermost ``read`` of every file ``module.oio.open_file`` opens (as for .npy URLs)."""
    read, depth = [], []
    real_open = module.oio.open_file

    def counting_open(path, mode="rb"):
        f = real_open(path, mode)
        real_read = f.read

        def r(n=-1):
            depth.append(1)
            try:
                out = real_read(n)
            finally:
                depth.pop()
            if not depth and str(path).lower().endswith((".oct", ".img")):
                read.append(len(out))
            return out

        f.read = r
        return f

    monkeypatch.setattr(module.oio, "open_file", counting_open)
    return read


def test_optovue_every_volume_and_only_the_kept_bytes(tmp_path, memfs, monkeypatch, caplog):
    from oct_foundation.data import vendor

    path, expected = _optovue_pair(tmp_path, [(12, 10, 7), (8, 6, 9)])
    memfs.pipe("/b/scan_1.OCT", path.read_bytes())
    memfs.pipe("/b/scan_1.txt", (tmp_path / "scan_1.txt").read_bytes())
    for p in (str(path), "memory://b/scan_1.OCT"):
        for idx in ([0], [0, 1, 2, 6], list(range(7)), [3, 3]):
            part = _read_both(OptovueOCTReader(), p, idx)
            assert np.array_equal(part.array[0], expected[0][idx])
        for idx in ([8], [1, 2, 5]):
            part = _read_both(OptovueOCTReader(volume_index=1, spacing=(0.1, 0.003, 0.02)), p, idx)
            assert np.array_equal(part.array[0], expected[1][idx]) and part.extra["volume_index"] == 1
    assert "holds 2 volumes; reading volume 0" in caplog.text
    read = _counting_reads(monkeypatch, vendor)
    OptovueOCTReader(volume_index=1).read_depth("memory://b/scan_1.OCT", lambda d: np.array([2, 3, 7]))
    assert sum(read) == 3 * 8 * 6 * 4  # the three B-scans, not the file
    read.clear()
    ZeissImgReader(geometry=(6, 8)).read_depth("memory://b/scan_1.OCT", lambda d: np.array([4]))
    assert len(read) == 1 and sum(read) == (12 * 10 * 7 + 8 * 6 * 9) * 4 // 8  # one Zeiss B-scan of 8
    monkeypatch.undo()
    # the whole read's errors, before any B-scan is read
    with pytest.raises(OCTInputError, match="volume_index 2 out of range"):
        OptovueOCTReader(volume_index=2).read_depth(str(path), lambda d: np.arange(2))
    path.write_bytes(path.read_bytes()[:-40])
    truncated = r"scan_1.OCT: Optovue .OCT truncated: 1262 voxels, the spec needs 1272"
    for read_ in (OptovueOCTReader().read, lambda p: OptovueOCTReader().read_depth(p, lambda d: np.arange(2))):
        with pytest.raises(OCTInputError, match=truncated):
            read_(str(path))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(OCTInputError, match=r"not a whole number of float32 voxels"):
        OptovueOCTReader().read_depth(str(path), lambda d: np.arange(2))


@pytest.mark.parametrize("channel", ["gray", "all", 1])
def test_tiff_pages_rgb_and_single_page_stack(tmp_path, memfs, channel):
    rgb = np.random.default_rng(1).integers(0, 255, size=(7, 9, 11, 3), dtype=np.uint8)
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rgb, photometric="rgb")
    memfs.pipe("/b/rgb.tif", p.read_bytes())
    for path in (str(p), "memory://b/rgb.tif"):
        for idx in ([0, 1], [2, 5, 6], list(range(7))):
            for dtype in (np.float32, None):
                _read_both(TiffStackReader(channel=channel, dtype=dtype), path, idx)
    if channel == "gray":  # one page holding [T, H, W] (its T planes): decoded whole, same output
        one = tmp_path / "one.tif"
        tifffile.imwrite(one, rgb[..., 0], photometric="minisblack", planarconfig="separate")
        assert len(tifffile.TiffFile(one).pages) == 1
        part = _read_both(TiffStackReader(), str(one), [1, 4])
        assert np.array_equal(part.array[0], rgb[[1, 4], ..., 0]) and part.extra["n_frames"] == 7


def test_frames_check_every_frame_without_decoding_it(tmp_path, memfs, monkeypatch):
    """The whole read's checks run on frames that are not decoded: their headers give their shape and dtype."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 255, size=(5, 8, 6), dtype=np.uint8)
    # a last frame of another size: refused although only frame 0 is read
    folder = _png_folder(tmp_path / "mixed", list(frames[:4]) + [frames[4, :5]])
    tif = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(tif) as w:
        for f in list(frames[:4]) + [frames[4, :5]]:
            w.write(f)
    for reader, path in ((FrameFolderReader(), folder), (TiffStackReader(), str(tif))):
        with pytest.raises(OCTInputError, match=r"frame 4 has shape \(5, 6\), frame 0 has \(8, 6\)"):
            reader.read(path)
        with pytest.raises(OCTInputError, match=r"frame 4 has shape \(5, 6\), frame 0 has \(8, 6\)"):
            reader.read_depth(path, lambda d: np.array([0]))
        with pytest.raises(OCTInputError, match=r"channel 2 asked, but the frames are grey"):
            type(reader)(channel=2).read_depth(path, lambda d: np.array([0]))
    # grey and 16-bit frames, kept as they are (dtype=None): the output dtype is that of stacking every frame
    mixed = tmp_path / "dtypes"
    _png_folder(mixed, [frames[0], frames[1].astype(np.uint16) * 200, frames[2], frames[3]])
    part = _read_both(FrameFolderReader(dtype=None), str(mixed), [0, 2])
    assert part.array.dtype == np.uint16 and part.extra["n_frames"] == 4
    assert part.extra["frame_files"] == ["f0.png", "f1.png", "f2.png", "f3.png"]
    # a header that is not what its pixels decode to: the file is read whole, with the same indices
    real = iio.improps

    def lying(*a, **k):
        props = real(*a, **k)
        return type(props)(shape=props.shape, dtype=np.dtype(np.int32), n_images=props.n_images,
                           is_batch=props.is_batch, spacing=props.spacing)

    monkeypatch.setattr(iio, "improps", lying)
    _read_both(FrameFolderReader(dtype=None), str(mixed), [1, 3])
    monkeypatch.undo()
    # a broken frame file that is decoded is named; one of a single frame is refused as before
    (tmp_path / "mixed" / "f2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(OCTInputError, match=r"f2.png: cannot read PNG frame"):
        FrameFolderReader().read_depth(folder, lambda d: np.array([0]))
    single = _png_folder(tmp_path / "single", frames[:1])
    with pytest.raises(OCTInputError, match=r"single: a single frame"):
        FrameFolderReader().read_depth(single, lambda d: np.array([0]))
