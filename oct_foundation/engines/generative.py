"""Generative training on 2D+time OCT: the MAISI autoencoder (from scratch or from pretrained weights) and a
latent diffusion U-Net on stacked latents.

Shapes (``cf`` = compression factor of the autoencoder, 4 for the MAISI zoo architecture):

* volumes: batch ``[B, 1, T, H, W]`` (T = B-scan index, the "time" of the 2D+time view), values in [0, 1];
* autoencoder training: every volume is cut into stacks of ``window`` frames every ``stride`` frames
  (:func:`video_to_stacks`, the same stacks :class:`~oct_foundation.networks.maisi.StackedVideoVAE` encodes),
  the autoencoder sees ``[B * n_stacks, 1, window, H_pad, W_pad]``;
* latents: ``[B, 4, T', H / cf, W / cf]`` (the stacked latent video of ``StackedVideoVAE.encode``);
* the diffusion U-Net works on "diffusion latents" = raw posterior-mean latents multiplied by the U-Net's
  ``scale_factor`` buffer (1 / std of the training latents unless set), so the scale factor travels with the
  weights (``models/model.pt``) and with every training checkpoint, as the model zoo's LDM checkpoints do.

Components: :class:`AutoencoderTrainer` (L1 + KL + optional patch-adversarial loss, bf16/fp16 autocast),
:class:`ReconstructionMetric` and :class:`ValidationHistory` (validation MSE/PSNR/SSIM per epoch, epochs to a
threshold), :class:`LatentDiffusionUNet` (MONAI ``DiffusionModelUNet`` with a stored scale factor),
:class:`LoadLatentd` / :func:`latent_datalist` (latents written by the ``oct_maisi_vae_encode`` bundle),
:class:`DiffusionTrainer` (DDPM epsilon / v-prediction or rectified flow through MONAI's ``DiffusionInferer``).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedTrainer

from oct_foundation import io
from oct_foundation.config import parse_amp_dtype
from oct_foundation.data.batch import prepare_batch_image
from oct_foundation.data.latents import LoadLatentd  # noqa: F401 (configs name it here too)
from oct_foundation.engines.runs import process_rank
from oct_foundation.networks.diffusion import LatentDiffusionUNet  # noqa: F401 (model files may name it here)
from oct_foundation.networks.maisi import video_to_stacks
from oct_foundation.errors import OCTInputError

__all__ = [
    "video_to_stacks",
    "kl_loss",
    "prepare_reconstruction_batch",
    "AutoencoderTrainer",
    "ReconstructionMetric",
    "ValidationHistory",
    "LatentDiffusionUNet",
    "LoadLatentd",
    "latent_datalist",
    "DiffusionTrainer",
    "diffusion_target",
]

logger = logging.getLogger("oct_foundation.generative")


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------- autoencoder
def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(z_mu, z_sigma^2)`` from ``N(0, 1)``, summed over latent voxels, mean over the batch."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1, dim=dims)
    return kl.mean()


def prepare_reconstruction_batch(batchdata, device, non_blocking: bool = False, image_key: str = "image",
                                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, image)`` of a collated batch: the target of a reconstruction is its input ``[B, C, T, H, W]``.
    (MONAI's default would pair the image with the item's ``label``, the layer map of the cohort.)"""
    x = prepare_batch_image(batchdata, device, non_blocking, image_key)
    return x, x


class AutoencoderTrainer(SupervisedTrainer):
    """Train a :class:`~oct_foundation.networks.maisi.StackedVideoVAE`'s autoencoder on stacks of B-scans.

    Generator loss per iteration: ``recon_weight * L1(recon, stacks) + kl_weight * KL`` (+
    ``adv_weight * LSGAN generator loss`` once ``epoch > adv_start_epoch`` when a discriminator is given); the
    discriminator (MONAI ``PatchDiscriminator``; ``disc_spatial_dims=2`` judges single B-scans, 3 judges whole
    stacks) is then updated with the least-squares patch loss on real stacks and detached reconstructions.

    A ``SupervisedTrainer`` with its own iteration (MONAI's ``AdversarialTrainer`` has no KL term and only CUDA
    autocast). ``amp`` autocasts to ``amp_dtype`` on any device (bf16 on CPU); fp16 on CUDA uses a
    ``GradScaler``. :meth:`checkpoint_objects` lists everything to resume (for ``TrainingCheckpoint`` /
    ``ResumeCheckpoint``).

    ``autoencoder``: the module that runs the forward pass, by default ``network.autoencoder``; pass a wrapper of
    it (``engines.wrap_ddp(network.autoencoder, device)``) for multi-GPU training, so that ``network`` and the
    checkpoints keep their plain parameter names.

    Output of an iteration: ``{"image", "loss" (generator), "recon_loss", "kl_loss", "adv_loss", "d_loss"}``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        recon_weight: float = 1.0,
        kl_weight: float = 1e-6,
        discriminator: torch.nn.Module | None = None,
        d_optimizer: torch.optim.Optimizer | None = None,
        adv_weight: float = 0.0,
        adv_start_epoch: int = 0,
        disc_spatial_dims: int = 2,
        amp: bool = False,
        amp_dtype: str | torch.dtype = "bfloat16",
        clip_grad: float | None = None,
        image_key: str = "image",
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        autoencoder: torch.nn.Module | None = None,
    ) -> None:
        dev = torch.device(device)
        super().__init__(device=dev, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=torch.nn.L1Loss(), epoch_length=epoch_length,
                         prepare_batch=prepare_reconstruction_batch, train_handlers=None, amp=False,
                         decollate=False)
        if not hasattr(network, "autoencoder") or not hasattr(network, "window_and_stride"):
            raise TypeError("AutoencoderTrainer needs a StackedVideoVAE network")
        # the module that runs the forward pass: network.autoencoder itself, or a wrapper of it such as
        # the DDP wrap of it (engines.wrap_ddp) for multi-GPU training (checkpoints keep plain names)
        self.autoencoder = autoencoder if autoencoder is not None else network.autoencoder
        self.recon_weight, self.kl_weight = float(recon_weight), float(kl_weight)
        self.discriminator = discriminator
        self.d_optimizer = d_optimizer
        self.adv_weight = float(adv_weight)
        self.adv_start_epoch = int(adv_start_epoch)
        if disc_spatial_dims not in (2, 3):
            raise ValueError(f"disc_spatial_dims must be 2 or 3, got {disc_spatial_dims}")
        self.disc_spatial_dims = int(disc_spatial_dims)
        if self.use_adversarial and d_optimizer is None:
            raise ValueError("an adversarial term (discriminator, adv_weight > 0) needs d_optimizer")
        self.use_amp = bool(amp)
        self.amp_dtype = parse_amp_dtype(amp_dtype)
        self.clip_grad = clip_grad
        self.image_key = image_key
        use_scaler = self.use_amp and self.amp_dtype == torch.float16 and dev.type == "cuda"
        self.g_scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.d_scaler = torch.amp.GradScaler("cuda") if use_scaler and self.use_adversarial else None
        if self.use_adversarial:
            from monai.losses import PatchAdversarialLoss

            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        if train_handlers:  # attached last: they may read checkpoint_objects()
            self._register_handlers(train_handlers)

    @property
    def use_adversarial(self) -> bool:
        return self.discriminator is not None and self.adv_weight > 0

    def checkpoint_objects(self) -> dict:
        """Autoencoder, optimizer, trainer state, discriminator and its optimizer, grad scalers."""
        objs: dict[str, Any] = {"network": self.network, "optimizer": self.optimizer, "trainer": self}
        if self.discriminator is not None:
            objs["discriminator"] = self.discriminator
        if self.d_optimizer is not None:
            objs["d_optimizer"] = self.d_optimizer
        if self.g_scaler is not None:
            objs["g_scaler"] = self.g_scaler
        if self.d_scaler is not None:
            objs["d_scaler"] = self.d_scaler
        return objs

    def _disc_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.disc_spatial_dims == 2:  # every B-scan of every stack is one image
            x = x.transpose(1, 2).reshape(-1, x.shape[1], *x.shape[3:])
        return self.discriminator(x.contiguous())[-1]

    def _backward_step(self, loss, optimizer, params, scaler) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            if self.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
            optimizer.step()

    def _iteration(self, engine: "AutoencoderTrainer", batchdata) -> dict:
        x, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, image_key=self.image_key)
        vae = self.network
        win, stride = vae.window_and_stride
        stacks = video_to_stacks(x, win, stride, vae.compression)
        ae = self.autoencoder
        ae.train()
        adversarial = self.use_adversarial and engine.state.epoch > self.adv_start_epoch
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(stacks.device, self.use_amp, self.amp_dtype):
            recon, z_mu, z_sigma = ae(stacks)
        recon = recon.float()
        rec = F.l1_loss(recon, stacks)
        kl = kl_loss(z_mu.float(), z_sigma.float())
        g_loss = self.recon_weight * rec + self.kl_weight * kl
        adv = torch.zeros((), device=stacks.device)
        if adversarial:
            self.discriminator.eval()  # generator step: the discriminator is only a fixed critic here
            with _autocast(stacks.device, self.use_amp, self.amp_dtype):
                logits = self._disc_logits(recon)
            adv = self.adv_loss(logits.float(), target_is_real=True, for_discriminator=False)
            g_loss = g_loss + self.adv_weight * adv
        self._backward_step(g_loss, self.optimizer, ae.parameters(), self.g_scaler)

        d_loss = torch.zeros((), device=stacks.device)
        if adversarial:
            self.discriminator.train()
            self.d_optimizer.zero_grad(set_to_none=True)
            with _autocast(stacks.device, self.use_amp, self.amp_dtype):
                fake = self._disc_logits(recon.detach())
                real = self._disc_logits(stacks)
            d_loss = 0.5 * (self.adv_loss(fake.float(), target_is_real=False, for_discriminator=True)
                            + self.adv_loss(real.float(), target_is_real=True, for_discriminator=True))
            self._backward_step(self.adv_weight * d_loss, self.d_optimizer, self.discriminator.parameters(),
                                self.d_scaler)
        return {"image": x, "loss": g_loss.detach(), "recon_loss": rec.detach(), "kl_loss": kl.detach(),
                "adv_loss": adv.detach(), "d_loss": d_loss.detach()}


class ReconstructionMetric(Metric):
    """Mean of one reconstruction metric (``"mse"``, ``"psnr"`` or ``"ssim"`` of
    :mod:`oct_foundation.metrics.reconstruction`) over validation volumes, as an Ignite metric.

    ``output_transform`` must give ``(preds, references)``: lists of volumes ``[C, T, H, W]`` (decollated) or
    batches ``[B, C, T, H, W]``. Predictions are clamped to ``clamp`` (the data range) first, as the decoded
    volumes written by the bundles are.
    """

    def __init__(self, metric: str = "mse", data_range: float = 1.0, clamp: Sequence[float] | None = (0.0, 1.0),
                 output_transform: Callable = lambda x: x, device="cpu") -> None:
        from oct_foundation.metrics import reconstruction

        if metric not in reconstruction.METRICS:
            raise ValueError(f"metric must be one of {reconstruction.METRICS}, got {metric!r}")
        self.metric = metric
        self._fn = getattr(reconstruction, metric)
        self.data_range = float(data_range)
        self.clamp = tuple(clamp) if clamp is not None else None
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._sum, self._n = 0.0, 0

    def update(self, output) -> None:
        preds, refs = output
        for p, r in zip(preds, refs):
            p = torch.as_tensor(p).detach().float().cpu()
            r = torch.as_tensor(r).detach().float().cpu()
            if self.clamp is not None:
                p = p.clamp(*self.clamp)
            kwargs = {} if self.metric == "mse" else {"data_range": self.data_range}
            v = self._fn(p, r, **kwargs)
            if math.isfinite(v):
                self._sum += v
                self._n += 1

    def compute(self) -> float:
        return self._sum / self._n if self._n else float("nan")


class ValidationHistory:
    """Records the evaluator's metrics after every validation run (with the trainer's epoch), writes them as a CSV
    (atomically, rewritten each time) and a JSON summary with the epochs to a threshold. A run resumed from a
    checkpoint continues the CSV: rows of earlier epochs found in it are kept. Every rank of a distributed run
    records the history; only rank 0 logs and writes.

    Args:
        path: CSV path (``epoch,<metric>,...``), local or URL; None keeps the history in memory only.
        summary_path: JSON with the history, the best value and ``epochs_to_threshold``.
        threshold_metric, threshold, mode: the validation metric and the value to reach (``"min"``: at or below,
            ``"max"``: at or above) for ``epochs_to_threshold`` (:func:`oct_foundation.metrics.convergence.
            steps_to_threshold`); None when not reached.
    """

    def __init__(self, path: str | None = None, summary_path: str | None = None, threshold_metric: str = "val_mse",
                 threshold: float | None = None, mode: str = "min") -> None:
        self.path = path
        self.summary_path = summary_path
        self.threshold_metric = threshold_metric
        self.threshold = threshold
        self.mode = mode
        self.history: list[dict] = []
        self._continued = False

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        row = {"epoch": int(engine.state.epoch)}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        if not self._continued and self.path and io.exists(self.path):
            # after a resume, keep the earlier epochs of the same run (a fresh run at epoch 1 keeps none)
            with io.open_file(self.path, "r") as f:
                old = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
            self.history = [{**r, "epoch": int(r["epoch"])} for r in old if "epoch" in r and r["epoch"] < row["epoch"]]
        self._continued = True
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        if process_rank() != 0:  # every rank keeps the history (the same numbers); rank 0 logs and writes
            return
        logger.info("validation epoch %d: %s", row["epoch"],
                    ", ".join(f"{k} {v:.5g}" for k, v in row.items() if k != "epoch"))
        if self.path:
            io.write_csv(self.history, self.path)
        if self.summary_path:
            io.save_json(self.summary(), self.summary_path)

    def summary(self) -> dict:
        from oct_foundation.metrics.convergence import best_value, steps_to_threshold

        series = [(r["epoch"], r[self.threshold_metric]) for r in self.history if self.threshold_metric in r]
        best = best_value(series, self.mode) if series else None
        return {
            "metric": self.threshold_metric,
            "threshold": self.threshold,
            "mode": self.mode,
            "epochs_to_threshold": (steps_to_threshold(series, self.threshold, self.mode)
                                    if series and self.threshold is not None else None),
            "best_epoch": best[0] if best else None,
            "best_value": best[1] if best else None,
            "history": self.history,
        }


# ------------------------------------------------------------------------------------------------ diffusion
def latent_datalist(latent_dir: str, key: str = "latent") -> list[dict]:
    """``[{key: path}]`` for every latent file of an encode output folder (local or URL)."""
    from oct_foundation.engines.maisi_inference import latent_files

    files = latent_files(latent_dir)
    if not files:
        raise OCTInputError(latent_dir, "no *_latent.pt / *_latent.npy files (run the oct_maisi_vae_encode bundle)")
    return [{key: p} for p in files]


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to predict: the velocity ``latents - noise`` for ``RFlowScheduler``; for DDPM-type
    schedulers the noise (``prediction_type="epsilon"``) or ``scheduler.get_velocity`` (``"v_prediction"``)."""
    from monai.networks.schedulers import RFlowScheduler

    if isinstance(scheduler, RFlowScheduler):
        return latents - noise
    kind = getattr(scheduler, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported for training (use epsilon or v_prediction)")


def sample_timesteps(scheduler, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps ``[B]``: the scheduler's own sampler for rectified flow, uniform integers otherwise."""
    from monai.networks.schedulers import RFlowScheduler

    if isinstance(scheduler, RFlowScheduler):
        return scheduler.sample_timesteps(latents)
    return torch.randint(0, scheduler.num_train_timesteps, (latents.shape[0],), device=latents.device,
                         generator=generator).long()


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else the module itself."""
    return getattr(module, "module", module)


class DiffusionTrainer(SupervisedTrainer):
    """Train a :class:`LatentDiffusionUNet` on latent videos with MONAI's ``DiffusionInferer``.

    Batches hold either ``latent_key`` (raw latents ``[B, 4, T', h, w]``, e.g. from :class:`LoadLatentd`) or
    ``image_key`` (volumes ``[B, 1, T, H, W]`` encoded on the fly by ``autoencoder``, a frozen
    ``StackedVideoVAE``, posterior means). Latents are multiplied by the U-Net's ``scale_factor`` buffer; when it
    is unset (0) it is set to 1 / std of the raw latents of the first ``scale_batches`` training batches (the
    model zoo's rule), unless given. Loss: MSE between the prediction and :func:`diffusion_target`. ``network``
    may be a ``DistributedDataParallel`` wrapper of the U-Net (the buffer is read from the wrapped module).

    Output of an iteration: ``{"latent", "loss"}``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: LatentDiffusionUNet,
        optimizer: torch.optim.Optimizer,
        inferer,
        autoencoder: torch.nn.Module | None = None,
        scale_factor: float | str | None = "auto",
        scale_batches: int = 1,
        latent_key: str = "latent",
        image_key: str = "image",
        amp: bool = False,
        amp_dtype: str | torch.dtype = "bfloat16",
        clip_grad: float | None = 1.0,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
    ) -> None:
        dev = torch.device(device)
        super().__init__(device=dev, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=torch.nn.MSELoss(), epoch_length=epoch_length,
                         inferer=inferer, prepare_batch=self._prepare_latents, train_handlers=None, amp=False,
                         decollate=False)
        self.autoencoder = autoencoder
        if autoencoder is not None:
            autoencoder.eval().requires_grad_(False)
        if scale_factor not in (None, "auto", ""):
            _unwrap(network).scale_factor.fill_(float(scale_factor))
        self.scale_batches = max(1, int(scale_batches))
        self.latent_key, self.image_key = latent_key, image_key
        self.use_amp = bool(amp)
        self.amp_dtype = parse_amp_dtype(amp_dtype)
        self.clip_grad = clip_grad
        use_scaler = self.use_amp and self.amp_dtype == torch.float16 and dev.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        if train_handlers:
            self._register_handlers(train_handlers)

    def checkpoint_objects(self) -> dict:
        """U-Net (with its scale factor), optimizer, trainer state, grad scaler."""
        objs: dict[str, Any] = {"network": self.network, "optimizer": self.optimizer, "trainer": self}
        if self.scaler is not None:
            objs["scaler"] = self.scaler
        return objs

    def _prepare_latents(self, batchdata, device, non_blocking: bool = False, **kwargs) -> torch.Tensor:
        """Raw latents ``[B, 4, T', h, w]`` of a batch (read from files or encoded)."""
        if isinstance(batchdata, Mapping) and self.latent_key in batchdata:
            z = batchdata[self.latent_key]
            z = z.as_tensor() if hasattr(z, "as_tensor") else torch.as_tensor(z)
            if z.ndim != 5:
                raise ValueError(f"expected latents [B, C, T', h, w], got shape {tuple(z.shape)}")
            return z.to(device=device, non_blocking=non_blocking, dtype=torch.float32)
        if self.autoencoder is None:
            raise ValueError(f"batch has no '{self.latent_key}' and no autoencoder is given to encode '{self.image_key}'")
        x = prepare_batch_image(batchdata, device, non_blocking, self.image_key)
        with torch.no_grad():
            return self.autoencoder.encode(x, sample=False) / self.autoencoder.effective_scale

    @torch.no_grad()
    def compute_scale_factor(self) -> float:
        """Set the U-Net's ``scale_factor`` to 1 / std of the raw latents of the first ``scale_batches`` batches."""
        n, s, ss = 0, 0.0, 0.0
        for i, batch in enumerate(self.data_loader):
            if i >= self.scale_batches:
                break
            z = self._prepare_latents(batch, self.state.device).double()
            n, s, ss = n + z.numel(), s + float(z.sum()), ss + float((z * z).sum())
        var = (ss - s * s / n) / max(n - 1, 1) if n else 0.0
        if var <= 0:
            raise ValueError("latent scale factor: the training latents have zero variance")
        value = 1.0 / math.sqrt(var)
        _unwrap(self.network).scale_factor.fill_(value)
        logger.info("latent scale factor 1/std = %.5g (from %d batches)", value, min(self.scale_batches, i + 1))
        return value

    def _iteration(self, engine: "DiffusionTrainer", batchdata) -> dict:
        scale = _unwrap(self.network).scale_factor
        if float(scale) <= 0:
            self.compute_scale_factor()
        z = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking) * float(scale)
        scheduler = self.inferer.scheduler
        noise = torch.randn_like(z)
        timesteps = sample_timesteps(scheduler, z)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(z.device, self.use_amp, self.amp_dtype):
            pred = self.inferer(inputs=z, diffusion_model=self.network, noise=noise, timesteps=timesteps)
        loss = F.mse_loss(pred.float(), diffusion_target(scheduler, z, noise, timesteps).float())
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.clip_grad)
            self.optimizer.step()
        return {"latent": z, "loss": loss.detach()}
