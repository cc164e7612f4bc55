"""Depth subsampling properties over many draws, time-as-depth, input checks, preprocessing chain."""
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from oct_foundation.data.transforms import (
    CheckFinited,
    DepthSubsampled,
    MinDepthd,
    TimeAsDepth,
    TimeAsDepthd,
    build_preprocessing,
    input_error_from,
    sample_depth_indices,
    time_as_depth,
)
from oct_foundation.errors import OCTInputError

COMBOS = [(10, 3), (16, 8), (49, 16), (97, 32), (17, 16), (5, 2)]
DRAWS = 200
SD = 0.1


def _item(depth, name="vol.nii.gz"):
    """Image whose slice i holds the value i, label = 10 * i: outputs reveal which slices were taken."""
    ramp = torch.arange(depth, dtype=torch.float32).view(1, depth, 1, 1).expand(1, depth, 2, 3).clone()
    affine = torch.diag(torch.tensor([SD, 0.01, 0.02, 1.0], dtype=torch.float64))
    meta = {"filename_or_obj": name}
    return {"image": MetaTensor(ramp, affine=affine, meta=dict(meta)),
            "label": MetaTensor(ramp * 10, affine=affine, meta=dict(meta))}


def _draw(t, item):
    out = t(item)
    idx = out["image"].meta["slice_indices"].numpy()
    # the indices in meta are the slices actually taken, for image and label alike
    assert np.array_equal(out["image"].as_tensor()[0, :, 1, 2].numpy(), idx)
    assert np.array_equal(out["label"].as_tensor()[0, :, 0, 0].numpy(), idx * 10)
    assert np.array_equal(out["label"].meta["slice_indices"].numpy(), idx)
    assert out["image"].shape[1:] == (len(idx), 2, 3)
    return idx


def _basic(idx, depth, d):
    assert len(idx) == min(d, depth)
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert idx.min() >= 0 and idx.max() < depth


@pytest.mark.parametrize("strategy", ["uniform", "contiguous", "random"])
@pytest.mark.parametrize("preserve", [False, True])
def test_depth_subsample_properties(strategy, preserve):
    for depth, d in COMBOS:
        t = DepthSubsampled(["image", "label"], d, strategy=strategy, preserve_first_last=preserve)
        t.set_random_state(seed=depth * 31 + d)
        seen_first, seen_any = set(), set()
        item = _item(depth)  # transforms never modify their input, so one item serves every draw
        for _ in range(DRAWS):
            idx = _draw(t, item)
            _basic(idx, depth, d)
            seen_first.add(int(idx[0]))
            seen_any.update(idx.tolist())
            if preserve:
                assert idx[0] == 0 and idx[-1] == depth - 1
            if strategy == "uniform":
                gaps = np.diff(idx)
                assert gaps.max() - gaps.min() <= 1, idx  # evenly spaced
            if strategy == "contiguous":
                run = idx[1:-1] if preserve else idx
                assert np.all(np.diff(run) == 1), idx
        # randomness is really used: the start moves (uniform phase, contiguous offset, random draw)
        if not preserve and depth // d >= 2:
            assert len(seen_first) > 1
        if strategy == "random" and d < depth and (d > 2 or not preserve):
            assert seen_any == set(range(depth))  # every slice can be drawn


def test_uniform_without_random_phase_and_centred_contiguous_are_fixed():
    for depth, d in COMBOS:
        a = DepthSubsampled("image", d, "uniform", random_phase=False)
        b = DepthSubsampled("image", d, "contiguous", centred=True)
        ia = {tuple(a(_item(depth))["image"].meta["slice_indices"].tolist()) for _ in range(20)}
        ib = {tuple(b(_item(depth))["image"].meta["slice_indices"].tolist()) for _ in range(20)}
        assert len(ia) == 1 and len(ib) == 1
        (ib,) = ib
        assert ib[0] == (depth - d) // 2 and len(ib) == d
        (ia,) = ia
        _basic(np.array(ia), depth, d)
    c = DepthSubsampled("image", 4, "contiguous", centred=True, preserve_first_last=True)
    assert c(_item(12))["image"].meta["slice_indices"].tolist() == [0, 5, 6, 11]


def test_reproducible_with_set_random_state():
    def run(seed):
        t = Compose([DepthSubsampled(["image", "label"], 8, strategy="random")])
        t.set_random_state(seed=seed)
        return [t(_item(40))["image"].meta["slice_indices"].tolist() for _ in range(10)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    # each transform instance has its own generator: seeding one does not touch another
    t1, t2 = DepthSubsampled("image", 5, "contiguous"), DepthSubsampled("image", 5, "contiguous")
    t1.set_random_state(seed=5)
    t2.set_random_state(seed=5)
    first = t1(_item(30))["image"].meta["slice_indices"].tolist()
    t2.R.uniform()  # advance only t2
    t1.set_random_state(seed=5)
    assert t1(_item(30))["image"].meta["slice_indices"].tolist() == first


def test_noop_and_eval_mode():
    for strategy in ("uniform", "contiguous", "random"):
        item = _item(6)
        out = DepthSubsampled(["image", "label"], 6, strategy=strategy)(item)
        assert out["image"].meta["slice_indices"].tolist() == list(range(6))
        torch.testing.assert_close(out["image"].as_tensor(), item["image"].as_tensor())
        torch.testing.assert_close(out["image"].affine, item["image"].affine)
        assert DepthSubsampled("image", 9, strategy=strategy)(_item(6))["image"].shape[1] == 6
        ev = DepthSubsampled(["image", "label"], 4, strategy=strategy, eval_mode=True)(_item(30))
        assert ev["image"].shape[1] == 30 and ev["label"].meta["slice_indices"].tolist() == list(range(30))


def test_affine_and_spacing_follow_kept_slices():
    out = DepthSubsampled("image", 5, "uniform", preserve_first_last=True)(_item(17))
    assert out["image"].meta["slice_indices"].tolist() == [0, 4, 8, 12, 16]
    np.testing.assert_allclose(out["image"].meta["spacing"], (4 * SD, 0.01, 0.02))
    out = DepthSubsampled("image", 4, "contiguous", centred=True)(_item(10))
    assert out["image"].meta["slice_indices"].tolist() == [3, 4, 5, 6]
    np.testing.assert_allclose(out["image"].affine[0, 0].item(), SD)
    np.testing.assert_allclose(out["image"].affine[0, 3].item(), 3 * SD)  # origin moved to slice 3
    assert out["image"].meta["original_depth"] == 10


def test_min_depth_and_mismatched_keys():
    with pytest.raises(OCTInputError, match=r"short\.nii\.gz: 3 slices, fewer than the 4"):
        DepthSubsampled("image", 2, min_depth=4)(_item(3, "short.nii.gz"))
    with pytest.raises(OCTInputError, match=r"short\.nii\.gz: 3 slices, fewer than the 4 needed"):
        MinDepthd(["image", "label"], 4)(_item(3, "short.nii.gz"))
    assert MinDepthd("image", 3)(_item(3))["image"].shape[1] == 3
    item = _item(8)
    item["label"] = item["label"][:, :6]
    with pytest.raises(OCTInputError, match="different slice counts"):
        DepthSubsampled(["image", "label"], 4)(item)
    with pytest.raises(ValueError):
        DepthSubsampled("image", 1, preserve_first_last=True)
    with pytest.raises(ValueError):
        sample_depth_indices(10, 3, "bogus")


def test_time_as_depth():
    x = torch.randn(2, 3, 5, 4, 6)
    y = time_as_depth(x)
    assert y.shape == (2, 5, 3, 4, 6)
    assert torch.equal(y[1, 4, 2], x[1, 2, 4])
    assert torch.equal(time_as_depth(y), x)
    v = torch.randn(1, 7, 4, 4)
    assert TimeAsDepth()(v).shape == (7, 1, 4, 4) and TimeAsDepth()(v).is_contiguous()
    assert TimeAsDepthd("image")({"image": v})["image"].shape == (7, 1, 4, 4)
    with pytest.raises(ValueError):
        time_as_depth(torch.zeros(3, 4, 4))


def test_check_finite():
    item = _item(4, "bad.nii.gz")
    item["image"][0, 1, 0, 0] = float("nan")
    with pytest.raises(OCTInputError, match=r"bad\.nii\.gz: 1 non-finite"):
        CheckFinited("image")(item)
    out = CheckFinited("image", sanitize=True)(item)["image"]
    assert torch.isfinite(out).all() and out[0, 1, 0, 0] == 0 and out[0, 2, 0, 0] == 2
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "bad.nii.gz"


@pytest.fixture
def nifti_pair(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(100, 20, size=(20, 48, 40)).astype(np.float32)
    lab = np.zeros((20, 48, 40), np.uint8)
    lab[:, 10:20] = 1
    lab[:, 20:30] = 2
    aff = np.diag([0.12, 0.004, 0.011, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "lab.nii.gz"))
    return {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}


def test_build_preprocessing_chain(nifti_pair):
    chain = build_preprocessing(
        label_key="label", d_target=8, strategy="random", target_spacing=(0.5, 0.008, 0.022), image_size=(24, 20)
    )
    names = [type(t).__name__ for t in chain]
    assert names.index("DepthSubsampled") < names.index("Spacingd") < names.index("Resized")
    t = Compose(chain)
    t.set_random_state(seed=0)
    out = t(dict(nifti_pair))
    img, lab = out["image"], out["label"]
    assert img.shape == (1, 8, 24, 20) and lab.shape == (1, 8, 24, 20)
    assert img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0
    assert set(torch.unique(lab).tolist()) <= {0.0, 1.0, 2.0} and len(torch.unique(lab)) == 3  # nearest
    idx = img.meta["slice_indices"].tolist()
    assert idx == lab.meta["slice_indices"].tolist() and len(idx) == 8
    # meta spacing matches the affine after spacing + resize; depth keeps the kept-slice spacing
    from monai.data.utils import affine_to_spacing

    np.testing.assert_allclose(img.meta["spacing"], affine_to_spacing(img.affine, r=3).numpy(), rtol=1e-6)
    np.testing.assert_allclose(img.meta["spacing"][0], 0.12 * (idx[-1] - idx[0]) / 7, rtol=1e-5)
    assert img.meta["spacing"][1] > 0.004 * 1.9  # resampled to coarser in-plane spacing


def test_build_preprocessing_eval_is_deterministic(nifti_pair):
    t = Compose(build_preprocessing(label_key="label", d_target=6, train=False, normalize="zscore"))
    a = t(dict(nifti_pair))
    b = t(dict(nifti_pair))
    assert a["image"].meta["slice_indices"].tolist() == b["image"].meta["slice_indices"].tolist()
    assert abs(float(a["image"].mean())) < 1e-3 and abs(float(a["image"].std()) - 1) < 1e-2
    full = Compose(build_preprocessing(d_target=6, train=False, eval_full_depth=True))(dict(nifti_pair))
    assert full["image"].shape[1] == 20
    with pytest.raises(RuntimeError) as e:  # Compose wraps errors; the OCTInputError is the cause
        Compose(build_preprocessing(min_depth=32), log_stats=False)(dict(nifti_pair))
    err = input_error_from(e.value)
    assert isinstance(err, OCTInputError)
    assert str(err) == f"{nifti_pair['image']}: 20 slices, fewer than the 32 needed"
    assert input_error_from(ValueError("x")) is None


def test_build_preprocessing_from_bundle_config(nifti_pair):
    from monai.bundle import ConfigParser

    parser = ConfigParser({
        "pre": {"_target_": "Compose", "transforms": {
            "_target_": "oct_foundation.data.build_preprocessing", "keys": ["image"], "d_target": 4,
            "image_size": [4, 16, 16]}},
    })
    out = parser.get_parsed_content("pre")(dict(nifti_pair))
    assert out["image"].shape == (1, 4, 16, 16)


def test_preprocessed_items_collate_into_batches(nifti_pair):
    from monai.data import DataLoader, Dataset, decollate_batch

    ds = Dataset([dict(nifti_pair)] * 2, Compose(build_preprocessing(label_key="label", d_target=5, image_size=(16, 16))))
    ds.transform.set_random_state(seed=1)
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 1, 5, 16, 16) and batch["label"].shape == (2, 1, 5, 16, 16)
    idx = batch["image"].meta["slice_indices"]
    assert idx.shape == (2, 5) and torch.equal(idx, batch["label"].meta["slice_indices"])
    assert batch["image"].meta["spacing"].shape == (2, 3)
    assert torch.equal(decollate_batch(batch)[1]["image"].meta["slice_indices"], idx[1])
