"""Synthetic OCT cohort: OCT-like 3D volumes with retinal layer labels, three classes and two devices.

Every workflow of the package (pretraining, segmentation, classification, VAE, batch inference) must run
offline in minutes, so this module draws a small cohort of macular OCT cubes that have the structure a model
can learn and a reader must handle:

* smooth retinal layer surfaces (NFL, GCL+IPL, INL, OPL, ONL, RPE, choroid, sclera) that vary smoothly along
  the slice (D) and lateral (W) directions, with retinal curvature, tilt, a foveal pit (inner layers thin out
  around a centre, the ONL thickens) and superficial vessels that cast shadows;
* per-layer reflectivity, depth attenuation, textured choroid, a bright ellipsoid-zone line;
* multiplicative speckle (gamma-distributed intensity, as for a multi-look envelope) on a noise floor, log
  compression as in OCT displays, then device contrast / gain and additive noise;
* classes ``0 normal``, ``1 fluid`` (intraretinal cysts and/or subretinal fluid: dark pockets, extra label
  value ``FLUID_LABEL``), ``2 drusen`` (dome-shaped deposits elevating the RPE);
* devices ``"A"`` and ``"B"`` with different slice counts, fields of view (hence spacings), speckle, noise
  and contrast.

On disk (see ``docs/synthetic_cohort.md``)::

    OUT/images/case_0000.nii.gz    float32 [D, H, W] (slice, axial, lateral), affine diag(sd, sh, sw, 1) in mm
    OUT/labels/case_0000.nii.gz    uint8   [D, H, W] layer labels 0..9 (see ``LAYER_LABELS``)
    OUT/datalist.json              {"training": [...], "validation": [...], "test": [...], "labels": ..., ...}
    OUT/dicom/case_0000.dcm        with ``dicom=True``: DICOM Ophthalmic Tomography copies of the images
    OUT/datalist_dicom.json        with ``dicom=True``: the same splits pointing at the DICOM images

Command line: ``python -m oct_foundation.data.synthetic --out DIR --cases N --seed S [--size tiny|small|medium]``.
Everything is a deterministic function of ``(seed, case index)``: the same seed gives byte-identical files,
and case ``i`` does not depend on how many cases are drawn.
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from oct_foundation import io as oio
from oct_foundation.errors import OCTInputError

__all__ = [
    "CLASS_NAMES",
    "LAYER_LABELS",
    "FLUID_LABEL",
    "RPE_LABEL",
    "NUM_LABELS",
    "SIZES",
    "DEVICES",
    "DeviceProfile",
    "SyntheticVolume",
    "synthesize_volume",
    "case_design",
    "stratified_split",
    "generate_cohort",
    "main",
]

CLASS_NAMES: tuple[str, ...] = ("normal", "fluid", "drusen")

#: Label values of the layer maps, ordered by axial depth (``FLUID_LABEL`` is the only exception).
LAYER_LABELS: dict[int, str] = {
    0: "background (vitreous)",
    1: "NFL",
    2: "GCL+IPL",
    3: "INL",
    4: "OPL",
    5: "ONL (with photoreceptor segments)",
    6: "RPE (with drusen deposits)",
    7: "choroid",
    8: "sclera",
    9: "fluid",
}
FLUID_LABEL = 9
RPE_LABEL = 6
NUM_LABELS = len(LAYER_LABELS)

# Layers as rendered, top to bottom: (name, label value, linear reflectivity). Subretinal fluid and drusen
# deposits are layers of zero thickness in cases without them, so one renderer draws every class.
_RENDER_LAYERS: tuple[tuple[str, int, float], ...] = (
    ("vitreous", 0, 0.0),
    ("NFL", 1, 0.60),
    ("GCL+IPL", 2, 0.22),
    ("INL", 3, 0.09),
    ("OPL", 4, 0.28),
    ("ONL", 5, 0.05),
    ("subretinal fluid", FLUID_LABEL, 0.0),
    ("RPE", RPE_LABEL, 1.4),
    ("drusen", RPE_LABEL, 0.22),
    ("choroid", 7, 0.30),
    ("sclera", 8, 0.08),
)
_L_NFL, _L_GCL, _L_INL, _L_OPL, _L_ONL, _L_SRF, _L_RPE, _L_DRU, _L_CHO, _L_SCL = range(1, 11)
_LABEL_OF_LAYER = np.array([lab for _, lab, _ in _RENDER_LAYERS], dtype=np.uint8)
_REFLECTIVITY = np.array([r for _, _, r in _RENDER_LAYERS], dtype=np.float32)

# Layer thickness away from the fovea in mm (NFL .. drusen). Stylised: a little thicker relative to the
# field of view than in real eyes so that every layer spans at least one voxel even in "tiny" volumes.
_BASE_THICKNESS = {_L_NFL: 0.05, _L_GCL: 0.08, _L_INL: 0.06, _L_OPL: 0.05, _L_ONL: 0.09, _L_RPE: 0.06}
_CHOROID_MM = 0.20
_MAX_SWELLING_MM = 0.2  # cap on the retinal elevation by fluid, so the retina stays inside the window
_MARGIN_MM = 0.04  # vitreous kept above the retina and sclera below the choroid

#: Volume size presets: (H, W) in voxels; slice counts come from the device (``DeviceProfile.slices``).
SIZES: dict[str, tuple[int, int]] = {"tiny": (32, 32), "small": (64, 64), "medium": (128, 128)}


@dataclass(frozen=True)
class DeviceProfile:
    """Acquisition settings of one simulated OCT device.

    ``fov_mm`` is the scanned extent (slice direction D, axial H, lateral W); the voxel spacing is
    ``fov_mm / shape``, so devices differ in spacing as well as in slice count.
    """

    name: str
    slices: Mapping[str, int]
    fov_mm: tuple[float, float, float]
    looks: float  # speckle: gamma shape of the intensity (lower = stronger speckle)
    noise_floor: float  # mean linear intensity of the detector noise floor
    additive_noise: float  # std of Gaussian noise added after log compression
    gain: float  # linear signal gain
    contrast: float  # gamma exponent applied after log compression
    offset: float  # display offset
    scale: float  # display scale
    retina_position: float = 0.62  # depth of Bruch's membrane as a fraction of the axial window (auto-align)

    def shape(self, size: str = "small") -> tuple[int, int, int]:
        """Volume shape ``(D, H, W)`` for a size preset."""
        h, w = _size(size)
        return (int(self.slices[size]), h, w)

    def spacing(self, size: str = "small") -> tuple[float, float, float]:
        """Voxel spacing ``(sd, sh, sw)`` in mm for a size preset."""
        return tuple(float(f / n) for f, n in zip(self.fov_mm, self.shape(size)))


DEVICES: dict[str, DeviceProfile] = {
    "A": DeviceProfile(
        name="A", slices={"tiny": 12, "small": 32, "medium": 64}, fov_mm=(6.0, 1.0, 6.0), looks=4.0,
        noise_floor=0.008, additive_noise=0.03, gain=1.0, contrast=1.0, offset=0.0, scale=1.0,
    ),
    "B": DeviceProfile(
        name="B", slices={"tiny": 8, "small": 24, "medium": 48}, fov_mm=(6.0, 1.2, 7.0), looks=2.5,
        noise_floor=0.015, additive_noise=0.05, gain=0.75, contrast=1.25, offset=0.04, scale=0.9,
        retina_position=0.6,
    ),
}


def _size(size: str) -> tuple[int, int]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def _device(device: str | DeviceProfile) -> DeviceProfile:
    if isinstance(device, DeviceProfile):
        return device
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {sorted(DEVICES)} or pass a DeviceProfile")
    return DEVICES[device]


@dataclass
class SyntheticVolume:
    """One synthetic case. ``image`` float32 ``[D, H, W]``, ``label`` uint8 ``[D, H, W]``, spacing in mm."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    class_id: int
    device: str
    lesions: list[dict] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """``diag(sd, sh, sw, 1)``: the NIfTI affine of the package's on-disk convention."""
        return np.diag([*self.spacing, 1.0]).astype(np.float64)


# ----------------------------------------------------------------------------------------------- geometry
def _smooth_field(rng: np.random.Generator, xd: np.ndarray, xw: np.ndarray, amplitude: float,
                  n_waves: int = 4, wavelength: tuple[float, float] = (3.0, 12.0)) -> np.ndarray:
    """A smooth random surface offset ``[D, W]`` (mm): sum of a few plane waves with long wavelengths.

    Hand-written instead of filtered noise because a sum of plane waves is smooth by construction in both
    directions whatever the grid size, so the same anatomy is drawn at every resolution.
    """
    out = np.zeros(np.broadcast_shapes(xd.shape, xw.shape))
    for _ in range(n_waves):
        theta = rng.uniform(0.0, np.pi)
        lam = rng.uniform(*wavelength)
        phase = rng.uniform(0.0, 2 * np.pi)
        out += np.cos(2 * np.pi * (np.cos(theta) * xd + np.sin(theta) * xw) / lam + phase)
    return amplitude * out / np.sqrt(n_waves / 2.0)


def _rho2(xd, xw, cd, cw, rd, rw, angle=0.0):
    """Squared normalised distance of an (optionally rotated) ellipse centred at (cd, cw)."""
    c, s = np.cos(angle), np.sin(angle)
    dd, dw = xd - cd, xw - cw
    return ((c * dd + s * dw) / rd) ** 2 + ((-s * dd + c * dw) / rw) ** 2


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _slice_centre(rng: np.random.Generator, xd: np.ndarray, around: float, spread: float) -> float:
    """A lesion centre along D placed on an acquired slice near ``around`` (so every lesion is visible)."""
    candidates = xd[np.abs(xd - around) <= spread]
    if candidates.size == 0:
        candidates = xd[[int(np.argmin(np.abs(xd - around)))]]
    return float(rng.choice(candidates))


def synthesize_volume(class_id: int, device: str | DeviceProfile = "A", size: str = "small",
                      rng: np.random.Generator | int | None = None, lesion_scale: float = 1.0) -> SyntheticVolume:
    """Draw one OCT-like volume of a class on a device.

    Args:
        class_id: 0 normal, 1 fluid, 2 drusen.
        device: a name in ``DEVICES`` or a :class:`DeviceProfile`.
        size: a key of ``SIZES``.
        rng: a ``numpy.random.Generator`` or an integer seed.
        lesion_scale: multiplies the en-face extent (slice and lateral radii) of every lesion: 1 draws the default
            focal lesions; larger values give spatially extended disease (more slices and columns per lesion) for
            ablations. The random draws are the same for every value.

    Returns:
        :class:`SyntheticVolume` with ``image`` float32 ``[D, H, W]`` in about ``[0, 1]`` and ``label`` uint8
        ``[D, H, W]`` (values in ``LAYER_LABELS``).
    """
    if class_id not in range(len(CLASS_NAMES)):
        raise ValueError(f"class_id must be one of 0..{len(CLASS_NAMES) - 1}, got {class_id!r}")
    if not float(lesion_scale) > 0:
        raise ValueError(f"lesion_scale must be positive, got {lesion_scale!r}")
    ls = float(lesion_scale)
    dev = _device(device)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    D, H, W = dev.shape(size)
    sd, sh, sw = dev.spacing(size)

    # Voxel centres in mm: lateral coordinates centred on the scan, depth from the top of the window.
    xd = ((np.arange(D) + 0.5) * sd - dev.fov_mm[0] / 2)[:, None]  # [D, 1]
    xw = ((np.arange(W) + 0.5) * sw - dev.fov_mm[2] / 2)[None, :]  # [1, W]
    z = ((np.arange(H) + 0.5) * sh).astype(np.float32)[None, :, None]  # [1, H, 1]

    # Fovea and Bruch's membrane (top of the choroid): curved (concave eye wall), tilted, smoothly wavy.
    fd, fw = rng.uniform(-0.3, 0.3, size=2)
    r2 = (xd - fd) ** 2 + (xw - fw) ** 2  # [D, W]
    bm = (-rng.uniform(0.002, 0.006) * r2
          + rng.uniform(-0.015, 0.015) * xd + rng.uniform(-0.015, 0.015) * xw
          + _smooth_field(rng, xd, xw, 0.012))
    bm += dev.retina_position * dev.fov_mm[1] + rng.uniform(-0.03, 0.03) - np.median(bm)

    # Layer thicknesses [D, W] in mm, smoothly varying; a foveal pit thins the inner layers.
    sigma_pit = rng.uniform(0.45, 0.65)
    pit = np.exp(-r2 / (2 * sigma_pit**2))
    rim = np.exp(-((np.sqrt(r2) - 2.2 * sigma_pit) ** 2) / (2 * (0.8 * sigma_pit) ** 2))
    pit_depth = {_L_NFL: 0.97, _L_GCL: 0.95, _L_INL: 0.9, _L_OPL: 0.55, _L_ONL: -0.5, _L_RPE: 0.0}
    rim_gain = {_L_NFL: 0.2, _L_GCL: 0.35, _L_INL: 0.25, _L_OPL: 0.1, _L_ONL: 0.0, _L_RPE: 0.0}
    scale = rng.uniform(0.92, 1.08)
    nasal = rng.choice([-1.0, 1.0])  # side of the optic disc: NFL thickens towards it
    thick = np.zeros((_L_DRU - _L_NFL + 1, D, W))  # NFL .. drusen
    for layer, base in _BASE_THICKNESS.items():
        t = base * scale * (1.0 + _smooth_field(rng, xd, xw, 0.08))
        if layer == _L_NFL:
            t = t * (1.0 + 0.6 * _sigmoid(1.5 * nasal * xw))
        t = t * (1.0 - pit_depth[layer] * pit) * (1.0 + rim_gain[layer] * rim)
        thick[layer - _L_NFL] = np.maximum(t, 0.0)

    lesions: list[dict] = []
    cysts: list[tuple] = []
    if class_id == 1:  # fluid: subretinal dome and/or intraretinal cysts
        base_thick = thick[_L_INL - _L_NFL:_L_RPE - _L_NFL].copy()  # INL .. subretinal fluid
        srf = rng.random() < 0.6
        n_cysts = int(rng.integers(2, 5)) if srf else int(rng.integers(3, 7))
        if srf:
            cd = _slice_centre(rng, xd[:, 0], fd, 1.0)
            cw = fw + rng.uniform(-1.0, 1.0)
            rd, rw, h = rng.uniform(0.8, 1.6) * ls, rng.uniform(0.8, 1.6) * ls, rng.uniform(0.07, 0.14)
            dome = np.clip(1 - _rho2(xd, xw, cd, cw, rd, rw, rng.uniform(0, np.pi)), 0, None) ** 1.5
            thick[_L_SRF - _L_NFL] = h * dome
            lesions.append({"type": "subretinal_fluid", "centre_mm": [cd, float(cw)], "height_mm": h})
        for _ in range(n_cysts):
            host = _L_INL if rng.random() < 0.4 else _L_ONL
            cd = _slice_centre(rng, xd[:, 0], fd, 1.5)
            cw = fw + rng.uniform(-1.5, 1.5)
            rd, rw, ra = rng.uniform(0.35, 0.8) * ls, rng.uniform(0.35, 0.8) * ls, rng.uniform(0.04, 0.09)
            rho2 = _rho2(xd, xw, cd, cw, rd, rw, rng.uniform(0, np.pi))
            # The cyst swells its host layer so it always lies inside it; cysts that would lift the retina
            # more than _MAX_SWELLING_MM are left out (the first one is always kept).
            swell = 2.0 * ra * np.sqrt(np.clip(1 - rho2, 0, None))
            lifted = (thick[_L_INL - _L_NFL:_L_RPE - _L_NFL] - base_thick).sum(0)
            if cysts and (lifted + swell).max() > _MAX_SWELLING_MM:
                continue
            thick[host - _L_NFL] += swell
            cysts.append((host, rho2, ra))
            lesions.append({"type": "cyst", "layer": _RENDER_LAYERS[host][0], "centre_mm": [cd, float(cw)],
                            "axial_radius_mm": ra})
    elif class_id == 2:  # drusen: deposits under the RPE lift it; the photoreceptors above are compressed
        dru = np.zeros((D, W))
        for _ in range(int(rng.integers(3, 8))):
            cd = _slice_centre(rng, xd[:, 0], fd, 2.0)
            cw = fw + rng.uniform(-2.0, 2.0)
            rd = rng.uniform(0.25, 0.6) * ls
            rw = rd * rng.uniform(0.8, 1.25)
            h = rng.uniform(0.05, 0.12)
            dru = np.maximum(dru, h * np.clip(1 - _rho2(xd, xw, cd, cw, rd, rw), 0, None) ** 0.7)
            lesions.append({"type": "druse", "centre_mm": [cd, float(cw)], "height_mm": h})
        thick[_L_DRU - _L_NFL] = dru
        onl = thick[_L_ONL - _L_NFL]
        thick[_L_ONL - _L_NFL] = np.maximum(onl - 0.5 * dru, 0.35 * onl)

    # Surfaces: tops[k] = top of render layer k + 1 ([10, D, W]), stacked upwards from Bruch's membrane.
    above_bm = np.cumsum(thick[::-1], axis=0)[::-1]  # sum of thicknesses of layer k .. drusen
    choroid = _CHOROID_MM * rng.uniform(0.8, 1.2) * (1.0 + _smooth_field(rng, xd, xw, 0.1))
    tops = np.concatenate([bm - above_bm, bm[None], (bm + choroid)[None]])
    # Keep vitreous above and sclera below (a device re-centres the retina in its axial window).
    lo, hi = _MARGIN_MM - tops[0].min(), dev.fov_mm[1] - _MARGIN_MM - tops[-1].max()
    tops = (tops + (np.clip(0.0, lo, hi) if lo <= hi else 0.5 * (lo + hi))).astype(np.float32)

    # Labels: number of surfaces at or above each voxel gives the render layer.
    layer = (z[None] >= tops[:, :, None, :]).sum(0, dtype=np.uint8)  # [D, H, W]
    label = _LABEL_OF_LAYER[layer]

    # Reflectivity with soft layer edges (axial point-spread), then structure within layers.
    edge = max(0.006, 0.35 * sh)
    steps = np.diff(_REFLECTIVITY)[:, None, None, None]
    refl = _REFLECTIVITY[0] + (steps * _sigmoid((z[None] - tops[:, :, None, :]) / edge)).sum(0)
    ez_w = max(0.008, 0.5 * sh)  # ellipsoid zone: bright line just above the RPE / subretinal fluid
    refl += 0.25 * np.exp(-0.5 * ((z - (tops[_L_SRF - 1][:, None, :] - 0.018)) / ez_w) ** 2)
    chor = _sigmoid((z - tops[_L_CHO - 1][:, None, :]) / edge) - _sigmoid((z - tops[_L_SCL - 1][:, None, :]) / edge)
    refl *= 1.0 + chor * 0.6 * np.tanh(2.0 * _choroid_texture(rng, (D, H, W), (sd, sh, sw)))
    for host, rho2, ra in cysts:
        host_top, host_bot = tops[host - 1], tops[host]
        mid = 0.5 * (host_top + host_bot)[:, None, :]
        r = rho2[:, None, :] + ((z - mid) / ra) ** 2  # [D, H, W]
        inside = (r < 1.0) & (layer == host)
        label[inside] = FLUID_LABEL
        refl = refl * (1.0 - _sigmoid((1.0 - r) * 6.0))  # fluid reflects nothing; soft edge
    # Superficial vessels in the NFL shadow everything below them.
    shadow = np.zeros((D, W))
    for _ in range(int(rng.integers(2, 4))):
        a, b, c = rng.uniform(-2.5, 2.5), rng.uniform(-0.6, 0.6), rng.uniform(-0.08, 0.08)
        width = rng.uniform(0.05, 0.1)
        shadow = np.maximum(shadow, np.exp(-0.5 * ((xw - (a + b * xd + c * xd**2)) / width) ** 2))
    below_nfl = _sigmoid((z - tops[_L_GCL - 1][:, None, :]) / edge)
    refl *= 1.0 - 0.55 * shadow[:, None, :] * below_nfl
    ilm = tops[0][:, None, :]
    refl *= np.exp(-1.5 * np.clip(z - ilm, 0, None))  # attenuation with depth into tissue

    # Acquisition: gain, multiplicative speckle on a noise floor, log compression, display, additive noise.
    signal = refl * dev.gain * rng.uniform(0.85, 1.15)
    looks = dev.looks
    speckled = signal * rng.gamma(looks, 1.0 / looks, size=signal.shape)
    speckled += dev.noise_floor * rng.exponential(1.0, size=signal.shape)
    eps = 0.02  # about 34 dB of displayed dynamic range
    img = np.log10(1.0 + speckled / eps) / np.log10(1.0 + 1.0 / eps)
    img = dev.offset + dev.scale * np.clip(img, 0, None) ** dev.contrast
    img += rng.normal(0.0, dev.additive_noise, size=img.shape)
    image = np.clip(img, 0.0, 1.0).astype(np.float32)
    return SyntheticVolume(image=image, label=label.astype(np.uint8), spacing=(sd, sh, sw),
                           class_id=int(class_id), device=dev.name, lesions=lesions)


def _choroid_texture(rng: np.random.Generator, shape, spacing) -> np.ndarray:
    """Vessel-like texture ``[D, H, W]`` (zero mean, unit std): Gaussian-filtered white noise."""
    from scipy.ndimage import gaussian_filter

    sigma = [max(0.5, s_mm / s) for s_mm, s in zip((0.15, 0.025, 0.12), spacing)]
    tex = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return (tex - tex.mean()) / (tex.std() + 1e-8)


# ----------------------------------------------------------------------------------------------- cohort
def case_design(index: int, devices: Sequence) -> tuple[int, "str | DeviceProfile"]:
    """Class and device of case ``index``: classes cycle fastest, then devices, so any run of
    ``3 * len(devices)`` consecutive cases is balanced."""
    return index % len(CLASS_NAMES), devices[(index // len(CLASS_NAMES)) % len(devices)]


def stratified_split(strata: Sequence, fractions: Sequence[float], seed: int = 0) -> list[int]:
    """Assign each item to a split (index into ``fractions``), stratified by ``strata``.

    Split sizes follow ``fractions`` (largest remainder, every split with a positive fraction gets at least one
    item when there are enough items); within the sequence ordered by stratum, items go to the split that
    lags furthest behind its share, so each stratum is spread over the splits in proportion.
    """
    n = len(strata)
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be non-negative and sum to a positive number, got {fractions}")
    f = f / f.sum()
    quota = f * n
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= int((f > 0).sum()):
        for i in np.flatnonzero((f > 0) & (counts == 0)):
            counts[i] += 1
            counts[int(np.argmax(counts))] -= 1
    rng = np.random.default_rng([seed, 7919])
    keys = [str(s) for s in strata]
    order = sorted(range(n), key=lambda i: (keys[i], rng.random()))
    assigned = np.zeros(len(f), dtype=int)
    out = [0] * n
    for step, i in enumerate(order, start=1):
        lag = counts * step / max(n, 1) - assigned
        lag[assigned >= counts] = -np.inf
        k = int(np.argmax(lag))
        out[i] = k
        assigned[k] += 1
    return out


def _nifti_bytes(array: np.ndarray, spacing) -> bytes:
    """A gzipped NIfTI-1 file in memory (gzip header without name or time, so bytes are reproducible)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, np.diag([*map(float, spacing), 1.0]))
    img.header.set_xyzt_units("mm")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _non_empty(path: str) -> bool:
    if not oio.exists(path):
        return False
    if not oio.is_url(path):
        p = path[len("file://"):] if path.startswith("file://") else path
        if not os.path.isdir(p):
            raise OCTInputError(path, "output path exists and is not a folder")
        return bool(os.listdir(p))
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return bool(fs.ls(p, detail=False)) if fs.isdir(p) else True


def generate_cohort(out: str, cases: int = 60, seed: int = 0, devices: Sequence[str] = ("A", "B"),
                    size: str = "small", dicom: bool = False, overwrite: bool = False, progress: bool = True,
                    split: Sequence[float] = (0.6, 0.2, 0.2), lesion_scale: float = 1.0) -> str:
    """Write a synthetic cohort to ``out`` (local folder or fsspec URL) and return the datalist path.

    Args:
        out: output folder; refused if it exists and is not empty, unless ``overwrite``.
        cases: number of cases (classes and devices are balanced, see :func:`case_design`).
        seed: random seed; the same seed gives byte-identical files.
        devices: device names from ``DEVICES`` (or :class:`DeviceProfile` objects).
        size: ``"tiny"`` (H = W = 32, 8-12 slices), ``"small"`` (64, 24-32 slices) or ``"medium"`` (128, 48-64).
        dicom: also write each image as DICOM Ophthalmic Tomography and a ``datalist_dicom.json``.
        overwrite: write into a non-empty folder, replacing files of the same names.
        progress: show a progress bar over cases.
        split: fractions of training / validation / test (stratified by class and device).
        lesion_scale: en-face extent multiplier of the lesions (see :func:`synthesize_volume`); stored in the
            datalist's metadata.

    Returns:
        Path of ``datalist.json`` (``{"training", "validation", "test"}`` lists of items
        ``{"image", "label", "class", "class_name", "device", "case_id"}`` with paths relative to ``out``).
    """
    from tqdm.auto import tqdm

    if int(cases) < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if len(split) != 3:
        raise ValueError(f"split needs three fractions (training, validation, test), got {list(split)}")
    profiles = [_device(d) for d in devices]
    if not profiles:
        raise ValueError("devices must name at least one device")
    _size(size)
    out = str(out)
    if _non_empty(out) and not overwrite:
        raise OCTInputError(out, "output folder exists and is not empty; choose another folder or pass "
                                  "overwrite=True (--overwrite) to write into it")
    write_dicom = None
    if dicom:
        try:
            from oct_foundation.data.readers import write_dicom_oct as write_dicom
        except ImportError as e:
            raise RuntimeError(f"dicom=True needs oct_foundation.data.readers.write_dicom_oct ({e})") from None
    oio.makedirs(out)

    items, dicom_items = [], []
    for index in tqdm(range(int(cases)), desc="synthetic OCT cases", unit="case", disable=not progress):
        cls, dev = case_design(index, profiles)
        vol = synthesize_volume(cls, dev, size, np.random.default_rng([int(seed), index]), lesion_scale=lesion_scale)
        case_id = f"case_{index:04d}"
        image_rel, label_rel = f"images/{case_id}.nii.gz", f"labels/{case_id}.nii.gz"
        oio.atomic_write(oio.join(out, image_rel), _nifti_bytes(vol.image, vol.spacing))
        oio.atomic_write(oio.join(out, label_rel), _nifti_bytes(vol.label, vol.spacing))
        item = {"image": image_rel, "label": label_rel, "class": cls, "class_name": CLASS_NAMES[cls],
                "device": vol.device, "case_id": case_id}
        items.append(item)
        if write_dicom is not None:
            dicom_rel = f"dicom/{case_id}.dcm"
            # DICOM OPT stores integer pixels: the image is quantised to 8 bits (0..255 for 0..1).
            pixels = np.round(vol.image * 255.0).astype(np.uint8)
            write_dicom(oio.join(out, dicom_rel), pixels, spacing=vol.spacing, patient_id=case_id,
                        Manufacturer="oct-foundation synthetic", ManufacturerModelName=f"device {vol.device}")
            dicom_items.append({**item, "image": dicom_rel})

    assignment = stratified_split([(it["class"], it["device"]) for it in items], split, seed=int(seed))
    keys = ("training", "validation", "test")
    meta = {
        "labels": {str(k): v for k, v in LAYER_LABELS.items()},
        "classes": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "metadata": {
            "generator": "oct_foundation.data.synthetic",
            "seed": int(seed), "cases": int(cases), "size": size, "split_fractions": [float(s) for s in split],
            "lesion_scale": float(lesion_scale),
            "array_order": "[D, H, W] = (slice, axial, lateral); affine diag(sd, sh, sw, 1) in mm",
            "devices": {p.name: {"shape": list(p.shape(size)), "spacing_mm": list(p.spacing(size))}
                        for p in profiles},
        },
    }

    def datalist(rows):
        lists = {k: [] for k in keys}
        for row, s in zip(rows, assignment):
            lists[keys[s]].append(row)
        return {**lists, **meta}

    if dicom_items:
        oio.save_json(datalist(dicom_items), oio.join(out, "datalist_dicom.json"))
    path = oio.join(out, "datalist.json")
    oio.save_json(datalist(items), path)  # written last: a folder with a datalist is complete
    return path


def main(argv: Iterable[str] | None = None) -> int:
    """Command-line entry point (``python -m oct_foundation.data.synthetic``)."""
    parser = argparse.ArgumentParser(
        prog="python -m oct_foundation.data.synthetic",
        description="Write a synthetic OCT cohort: NIfTI volumes [D, H, W] with retinal layer labels, classes "
                    "normal / fluid / drusen, devices A / B, and a datalist.json with training / validation / "
                    "test splits.",
    )
    parser.add_argument("--out", required=True, help="output folder (local path or fsspec URL)")
    parser.add_argument("--cases", type=int, default=60, help="number of cases (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="volume size: tiny (32x32, 8-12 slices), small (64x64, 24-32 slices, default), "
                             "medium (128x128, 48-64 slices)")
    parser.add_argument("--devices", nargs="+", default=["A", "B"], choices=sorted(DEVICES),
                        help="devices to simulate (default A B)")
    parser.add_argument("--split", nargs=3, type=float, default=[0.6, 0.2, 0.2],
                        metavar=("TRAIN", "VAL", "TEST"), help="split fractions (default 0.6 0.2 0.2)")
    parser.add_argument("--lesion-scale", type=float, default=1.0,
                        help="en-face extent multiplier of the lesions (default 1: focal lesions; e.g. 2.5 for "
                             "spatially extended disease in ablations)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write DICOM Ophthalmic Tomography files and datalist_dicom.json")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        path = generate_cohort(args.out, cases=args.cases, seed=args.seed, devices=args.devices,
                               size=args.size, dicom=args.dicom, overwrite=args.overwrite,
                               progress=not args.quiet, split=args.split,
                               lesion_scale=args.lesion_scale)
    except (OCTInputError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
