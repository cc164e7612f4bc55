"""Reading only the slices depth subsampling keeps (``LoadOCTSlicesd``) gives exactly the read-all chain's output.

For every format with partial reading (NIfTI plain / gzip / scaled / reoriented / channels-last, DICOM
multi-frame, HEYEX ``.vol``, ``.npy`` local and URL) and every depth strategy, the chain of
``build_preprocessing(read_kept_slices=True)`` and that of ``read_kept_slices=False`` (read every slice, then
``DepthSubsampled``), seeded alike, give the same tensors, ``slice_indices``, affine and meta, item after item.
Hooks then show the partial chain decodes only ``d_target`` slices and never the whole volume.
"""
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from oct_foundation.data import readers as R
from oct_foundation.data.readers import LoadOCTd, LoadOCTSlicesd, write_dicom_oct, write_heyex_vol
from oct_foundation.data.transforms import DepthSubsampled, build_preprocessing
from oct_foundation.errors import OCTInputError

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
    return out


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
    """A format without partial reading (multi-page TIFF) is read whole and subsampled: same output."""
    import tifffile

    p = str(tmp_path / "a.tif")
    tifffile.imwrite(p, vol)
    from oct_foundation.data.video import TiffStackReader

    assert not TiffStackReader.partial_depth
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

    files = _files(tmp_path, memfs, vol)

    def whole(*a, **k):
        raise AssertionError("the whole volume was decoded")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", whole)  # np.asanyarray(img.dataobj)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(whole))
    monkeypatch.setattr(eyepy, "import_heyex_vol", whole)
    monkeypatch.setattr(np, "load", lambda *a, mmap_mode=None, **k: (
        whole() if mmap_mode is None else np.lib.format.open_memmap(a[0], mode="r")))
    lazy = Compose(build_preprocessing(d_target=D_TARGET, strategy="random", normalize=False))
    lazy.set_random_state(0)
    for name, path in files.items():
        decoded.clear()
        out = lazy({"image": path})["image"]
        assert out.shape[1] == D_TARGET, name
        assert decoded and all(DEPTH not in s for s in decoded), (name, decoded)  # only D_TARGET slices
        assert any(D_TARGET in s for s in decoded), (name, decoded)
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
