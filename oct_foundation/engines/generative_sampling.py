"""Sampling from the latent diffusion U-Net and evaluation of the samples against real volumes.

* :class:`LatentDiffusionSampler`: Gaussian noise ``[N, 4, T', h, w]`` -> MONAI ``DiffusionInferer.sample``
  (DDPM / DDIM / rectified flow) -> divide by the U-Net's latent scale factor -> ``StackedVideoVAE.decode`` ->
  volumes ``[N, 1, T, H, W]`` in [0, 1] -> ``<output_dir>/sample_<i>.nii.gz`` (``[T, H, W]`` data, the package's
  NIfTI convention), ``samples.csv`` and ``samples_grid.png`` (middle B-scans of samples next to real ones).
  Sample ``i`` is drawn from noise seeded with ``seed + i``, so a rerun only generates the missing files and a
  finished file is never rewritten unless ``overwrite``.
* :class:`GenerativeEvaluation`: Frechet distance between pooled encoder features
  (``VJEPA3D.encode(x, pool="mean")`` or the mean token of a ``VisionTransformer3D``; random initialisation or
  a ``model.pt``) of real and generated volumes, reported next to the distance between two random halves of
  the real set (the floor the generated set can be compared with).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from oct_foundation import io
from oct_foundation.errors import OCTInputError

__all__ = ["sample_latents", "LatentDiffusionSampler", "pooled_features", "GenerativeEvaluation",
           "save_sample_grid"]

logger = logging.getLogger("oct_foundation.generative")


def _set_timesteps(scheduler, num_inference_steps: int, device, latent_shape: Sequence[int]) -> None:
    from monai.networks.schedulers import RFlowScheduler

    if isinstance(scheduler, RFlowScheduler):
        scheduler.set_timesteps(int(num_inference_steps), device=device,
                                input_img_size_numel=int(np.prod(latent_shape[1:])))
    else:
        scheduler.set_timesteps(int(num_inference_steps), device=device)


@torch.no_grad()
def sample_latents(network: torch.nn.Module, inferer, latent_shape: Sequence[int], indices: Sequence[int],
                   num_inference_steps: int = 50, seed: int = 0, device="cpu", batch_size: int = 1,
                   progress: bool = False) -> torch.Tensor:
    """Diffusion latents ``[len(indices), *latent_shape]``; sample ``i`` starts from noise seeded ``seed + i``."""
    device = torch.device(device)
    network = network.to(device).eval()
    out = []
    for start in range(0, len(indices), max(1, int(batch_size))):
        idx = list(indices)[start:start + max(1, int(batch_size))]
        noise = torch.stack([torch.randn(*latent_shape, generator=torch.Generator().manual_seed(int(seed) + i))
                             for i in idx]).to(device)
        _set_timesteps(inferer.scheduler, num_inference_steps, device, latent_shape)
        out.append(inferer.sample(input_noise=noise, diffusion_model=network, verbose=progress).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, *latent_shape)


def _middle_bscan(v) -> np.ndarray:
    v = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).float()
    v = v.reshape(-1, *v.shape[-3:])[0]  # [T, H, W]
    return v[v.shape[0] // 2].cpu().numpy()


def save_sample_grid(generated: Sequence, real: Sequence, path: str, title: str = "") -> None:
    """PNG: middle B-scans of generated volumes (top row) and of real volumes (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(generated), len(real), 1)
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.4), squeeze=False)
    for row, (vols, name) in enumerate([(generated, "generated"), (real, "real")]):
        for j in range(cols):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(vols):
                ax.imshow(_middle_bscan(vols[j]), cmap="gray", vmin=0, vmax=1, aspect="auto")
                ax.set_title(f"{name} {j}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


class LatentDiffusionSampler:
    """Generate ``num_samples`` volumes ``[1, T, H, W]`` with ``output_shape = (T, H, W)`` (see module docstring).

    Args:
        network: the trained :class:`~oct_foundation.networks.diffusion.LatentDiffusionUNet` (scale factor set).
        autoencoder: the ``StackedVideoVAE`` the latents belong to (same stack settings as in training).
        inferer: MONAI ``DiffusionInferer`` holding the scheduler the U-Net was trained with.
        output_dir: folder (local or URL) for the NIfTI files, ``samples.csv`` and the grid.
        real_dataset: optional MONAI ``Dataset`` of real volumes (``{"image": [1, T, H, W]}``) shown in the grid.
        spacing: voxel spacing written to the NIfTI affine.
    """

    def __init__(self, network, autoencoder, inferer, output_dir: str, output_shape: Sequence[int],
                 num_samples: int = 4, num_inference_steps: int = 50, seed: int = 0, batch_size: int = 1,
                 device="cpu", overwrite: bool = False, real_dataset=None, num_real: int = 4,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), progress: bool = True) -> None:
        if len(output_shape) != 3:
            raise ValueError(f"output_shape must be (T, H, W), got {list(output_shape)}")
        self.network, self.autoencoder, self.inferer = network, autoencoder, inferer
        self.output_dir = str(output_dir)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.num_samples = int(num_samples)
        self.num_inference_steps = int(num_inference_steps)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.device = torch.device(device)
        self.overwrite = bool(overwrite)
        self.real_dataset, self.num_real = real_dataset, int(num_real)
        self.spacing = tuple(float(s) for s in spacing)
        self.progress = bool(progress)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape(*self.output_shape))

    def sample_path(self, i: int) -> str:
        return io.join(self.output_dir, f"sample_{i:04d}.nii.gz")

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents ``[N, 4, T', h, w]`` -> volumes ``[N, 1, T, H, W]`` clamped to [0, 1]."""
        vae = self.autoencoder.to(self.device).eval()
        raw = z.to(self.device) / self.network.scale
        return vae.decode(raw, *self.output_shape, scale=False).clamp(0, 1).cpu()

    def run(self) -> list[dict]:
        from oct_foundation.engines.processors import save_volume_nifti

        io.makedirs(self.output_dir)
        todo = [i for i in range(self.num_samples) if self.overwrite or not io.exists(self.sample_path(i))]
        if len(todo) < self.num_samples:
            logger.info("%d of %d samples exist in %s and are kept (overwrite=False)",
                        self.num_samples - len(todo), self.num_samples, self.output_dir)
        for start in range(0, len(todo), max(1, self.batch_size)):
            idx = todo[start:start + max(1, self.batch_size)]
            z = sample_latents(self.network, self.inferer, self.latent_shape, idx, self.num_inference_steps,
                               self.seed, self.device, len(idx), self.progress)
            for i, vol in zip(idx, self.decode(z)):
                save_volume_nifti(vol, self.spacing, self.sample_path(i))
                logger.info("wrote %s", self.sample_path(i))
        rows = [{"index": i, "file": os.path.basename(self.sample_path(i)), "seed": self.seed + i,
                 "shape": "x".join(map(str, (1, *self.output_shape))),
                 "status": "generated" if i in todo else "kept"} for i in range(self.num_samples)]
        io.write_csv(rows, io.join(self.output_dir, "samples.csv"), columns=["index"])
        generated = [_read_volume(self.sample_path(i)) for i in range(min(self.num_samples, 6))]
        real = []
        if self.real_dataset is not None:
            for k in range(min(self.num_real, len(self.real_dataset))):
                real.append(self.real_dataset[k]["image"])
        save_sample_grid(generated, real, io.join(self.output_dir, "samples_grid.png"),
                         f"generated (top) vs real (bottom), {self.num_inference_steps} sampling steps")
        return rows


def _read_volume(path: str) -> torch.Tensor:
    from oct_foundation.data import LoadOCTd

    return torch.as_tensor(LoadOCTd(keys="image")({"image": path})["image"]).float()


@torch.no_grad()
def pooled_features(network: torch.nn.Module, volumes, device="cpu", batch_size: int = 2,
                    use_target_encoder: bool = True) -> torch.Tensor:
    """Mean-pooled encoder features ``[N, E]`` of volumes ``[1, T, H, W]`` (all the same shape).

    ``network``: a ``VJEPA3D`` (``encode(x, pool="mean", target=use_target_encoder)``) or a
    ``VisionTransformer3D`` (mean over its tokens)."""
    device = torch.device(device)
    network = network.to(device).eval()
    vols = [torch.as_tensor(v).float() for v in volumes]
    if not vols:
        raise ValueError("pooled_features: no volumes")
    feats = []
    for start in range(0, len(vols), max(1, int(batch_size))):
        x = torch.stack(vols[start:start + max(1, int(batch_size))]).to(device)
        if hasattr(network, "encode"):
            f = network.encode(x, pool="mean", target=use_target_encoder)
        else:
            f = network(x).mean(dim=1)
        feats.append(f.float().cpu())
    return torch.cat(feats)


class GenerativeEvaluation:
    """Frechet distance between encoder features of real and generated volumes, next to real vs real.

    The real set (``real_dataset``, items ``{"image": [1, T, H, W]}`` of the generated shape) is split into two
    seeded random halves A and B. Reported: ``fd_real_vs_real`` = FD(A, B) and ``fd_generated_vs_real`` =
    FD(generated, A) (both against the same reference half, so they are comparable), and
    ``fd_generated_vs_all_real``. Writes ``frechet.json`` and ``frechet.csv`` to ``output_dir``.
    """

    def __init__(self, real_dataset, sample_dir: str, feature_network: torch.nn.Module, output_dir: str,
                 feature_weights: str | None = "", device="cpu", batch_size: int = 2, seed: int = 0,
                 use_target_encoder: bool = True) -> None:
        self.real_dataset = real_dataset
        self.sample_dir = str(sample_dir)
        self.feature_network = feature_network
        self.output_dir = str(output_dir)
        self.feature_weights = feature_weights or ""
        self.device = device
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.use_target_encoder = bool(use_target_encoder)

    def generated_files(self) -> list[str]:
        if not io.exists(self.sample_dir):
            raise OCTInputError(self.sample_dir, "sample folder not found (run the sampling config first)")
        files = [p for p in io.list_files(self.sample_dir)
                 if os.path.basename(p).startswith("sample_") and p.endswith(".nii.gz")]
        if len(files) < 2:
            raise OCTInputError(self.sample_dir, f"needs at least 2 generated sample_*.nii.gz files, found {len(files)}")
        return files

    def run(self) -> dict:
        from oct_foundation.metrics.generative import frechet_distance, split_halves
        from oct_foundation.networks.weights import load_weights

        load_weights(self.feature_network, self.feature_weights, print_report=False)
        generated = [_read_volume(p) for p in self.generated_files()]
        real = [torch.as_tensor(self.real_dataset[i]["image"]).float() for i in range(len(self.real_dataset))]
        if len(real) < 4:
            raise ValueError(f"the real set needs at least 4 volumes (two halves of >= 2), got {len(real)}")
        shapes = {tuple(v.shape) for v in generated + real}
        if len(shapes) != 1:
            raise ValueError(f"real and generated volumes must share one shape, got {sorted(shapes)}")
        kw = dict(device=self.device, batch_size=self.batch_size, use_target_encoder=self.use_target_encoder)
        f_gen = pooled_features(self.feature_network, generated, **kw)
        f_real = pooled_features(self.feature_network, real, **kw)
        a, b = split_halves(len(real), self.seed)
        result = {
            "fd_real_vs_real": frechet_distance(f_real[a], f_real[b]),
            "fd_generated_vs_real": frechet_distance(f_gen, f_real[a]),
            "fd_generated_vs_all_real": frechet_distance(f_gen, f_real),
            "n_generated": len(generated),
            "n_real": len(real),
            "n_real_half": len(a),
            "feature_dim": int(f_real.shape[1]),
            "feature_weights": os.path.basename(self.feature_weights) if self.feature_weights else "random init",
            "volume_shape": list(next(iter(shapes))),
        }
        io.makedirs(self.output_dir)
        io.save_json(result, io.join(self.output_dir, "frechet.json"))
        fd_rows = [("real half A vs real half B", result["fd_real_vs_real"], len(a), len(b)),
                   ("generated vs real half A", result["fd_generated_vs_real"], len(generated), len(a)),
                   ("generated vs all real", result["fd_generated_vs_all_real"], len(generated), len(real))]
        io.write_csv([{"comparison": c, "frechet_distance": f"{fd:.6g}", "n_a": na, "n_b": nb}
                      for c, fd, na, nb in fd_rows], io.join(self.output_dir, "frechet.csv"))
        logger.info("Frechet distance: real vs real %.4g, generated vs real %.4g", result["fd_real_vs_real"],
                    result["fd_generated_vs_real"])
        print("\n".join(f"{c}: {fd:.6g} (n {na} vs {nb})" for c, fd, na, nb in fd_rows))
        return result
