"""V-JEPA pretraining as MONAI engines: :class:`JEPATrainer` (a ``monai.engines.Trainer``) and
:class:`JEPAEvaluator` (validation JEPA loss with fixed masks), plus the network preparation helpers used by the
bundle (pretrained initialisation, freezing).

One iteration of :class:`JEPATrainer` on a batch ``image [B, C, D, H, W]``:

1. optional in-plane resize to the size of the current epoch (progressive resolution);
2. masks for the batch's token grid ``(D/t, H/p, W/p)`` from the mask generator, seeded from the iteration
   number (``mask_seed + iteration``, plus the rank under DDP) so that a resumed run draws the same masks;
3. ``pred, target = network.jepa_forward(x, ctx_idx, tgt_idx)``; ``loss = network.jepa_loss(pred, target)``
   under autocast when ``amp`` (bf16 works on CPU and GPU; fp16 uses a GradScaler on CUDA);
4. backward of the loss scaled for gradient accumulation; an optimizer step every ``grad_accumulation``
   iterations, or, with ``tokens_per_step``, as soon as the accumulated micro-batches hold that many tokens
   (so a step sees the same number of tokens whatever ``d_target`` or the image size is); always at the end of
   an epoch so that an epoch-end checkpoint holds no pending gradients;
5. after each optimizer step, the EMA update of the target encoder with the momentum of this iteration;
6. the LR and weight-decay schedulers step once per iteration.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import Evaluator, Trainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from oct_foundation.config import parse_amp_dtype
from oct_foundation.data.batch import prepare_batch_image
from oct_foundation.networks.freezing import encoder_units, freeze_encoder  # noqa: F401 (engines export them)
from oct_foundation.networks.vjepa3d import JEPAObjective

__all__ = [
    "batch_depth_positions",
    "JEPATrainer",
    "JEPAEvaluator",
    "prepare_batch_image",
    "size_for_epoch",
    "freeze_encoder",
    "encoder_units",
    "prepare_network",
    "mask_generator_for_depth",
    "draw_masks",
]

logger = logging.getLogger("oct_foundation.engines")


def batch_depth_positions(batchdata, network, x: torch.Tensor, image_key: str = "image") -> torch.Tensor:
    """Depth positions ``[B, T']`` of the token rows of a batch from the ``slice_indices`` that
    ``DepthSubsampled`` records in each item's meta (collated to ``[B, d]``), for ``slice_positions``."""
    from oct_foundation.networks.vit3d import slice_token_positions

    img = batchdata[image_key] if isinstance(batchdata, Mapping) else batchdata
    meta = getattr(img, "meta", None) or {}
    idx = meta.get("slice_indices")
    if idx is None:
        raise ValueError("slice_positions needs the slice indices of each volume: the batch meta has no "
                         "'slice_indices' (the transforms must include DepthSubsampled, i.e. set d_target)")
    idx = torch.as_tensor(idx)
    if idx.ndim == 1:
        idx = idx[None].expand(x.shape[0], -1)
    if idx.shape[0] != x.shape[0] or idx.shape[1] != x.shape[2]:
        raise ValueError(f"slice_indices {tuple(idx.shape)} do not match the batch [B={x.shape[0]}, D={x.shape[2]}]")
    return slice_token_positions(idx, int(network.encoder.tubelet_size)).to(x.device)


#: ``torch.compile`` modes accepted by ``compile_mode``
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: names of ``attention_backend`` -> ``torch.nn.attention.SDPBackend`` members (``auto``: no restriction)
ATTENTION_BACKENDS = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                      "cudnn": "CUDNN_ATTENTION"}


def attention_context(backend: str | None = "auto") -> Callable[[], Any]:
    """A factory of context managers restricting scaled-dot-product attention to ``backend`` (see
    :data:`ATTENTION_BACKENDS`; ``"auto"``/None: PyTorch's choice)."""
    name = "auto" if backend in (None, "") else str(backend).lower()
    if name == "auto":
        return contextlib.nullcontext
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be auto or one of {sorted(ATTENTION_BACKENDS)}, got {backend!r}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = getattr(SDPBackend, ATTENTION_BACKENDS[name])
    return lambda: sdpa_kernel([member])


def size_for_epoch(schedule: Mapping | None, epoch: int) -> tuple[int, int] | None:
    """In-plane size ``(H, W)`` for the 0-based ``epoch`` from ``{"0": [32, 32], "2": [64, 64]}``.

    The entry with the largest start epoch not after ``epoch`` wins; ``None`` (or an empty schedule, or an
    epoch before every entry) means no resize.
    """
    if not schedule:
        return None
    best = None
    for k, v in sorted(((int(k), v) for k, v in schedule.items()), key=lambda kv: kv[0]):
        if k <= epoch:
            best = v
    if best is None:
        return None
    if len(best) != 2:
        raise ValueError(f"resize schedule sizes must be [H, W], got {best!r}")
    return int(best[0]), int(best[1])


def _seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (2**63 - 1))


def draw_masks(mask_generator, batch_size: int, grid, generator: torch.Generator, device):
    """``(ctx_idx, tgt_idx)`` from one generator (tensors ``[B, Nc]``, ``[B, Nt]``) or a list of generators
    (lists of tensors, one pair per mask configuration, as ``VJEPA3D.jepa_forward`` accepts), on ``device``."""
    if isinstance(mask_generator, (list, tuple)):
        pairs = [m(batch_size, grid, generator=generator) for m in mask_generator]
        return [c.to(device) for c, _ in pairs], [t.to(device) for _, t in pairs]
    c, t = mask_generator(batch_size, grid, generator=generator)
    return c.to(device), t.to(device)


def _numel(idx) -> int:
    return int(sum(i.numel() for i in idx)) if isinstance(idx, (list, tuple)) else int(idx.numel())


class JEPATrainer(Trainer):
    """Self-supervised V-JEPA training of a ``VJEPA3D`` on batches ``{"image": [B, C, D, H, W]}``.

    Args:
        device: training device.
        max_epochs: epochs to run.
        train_data_loader: loader of dict batches with ``image_key``.
        network: a ``VJEPA3D`` (``encoder``, ``target_encoder``, ``predictor``, ``jepa_forward``, ``jepa_loss``,
            ``ema_update``); stays unwrapped (checkpoints hold its plain state).
        optimizer: optimizer over the network's trainable parameters (see ``build_param_groups``).
        mask_generator: ``MultiBlockMask3D``-like ``(batch_size, grid, generator) -> (ctx_idx, tgt_idx)``.
        momentum_schedule: EMA momentum, a number or a callable ``iteration (0-based) -> momentum``.
        lr_scheduler: stepped once per iteration (e.g. ``WarmupCosineLR``).
        wd_scheduler: stepped once per iteration (e.g. ``WeightDecaySchedule``).
        epoch_length: iterations per epoch (default: ``len(train_data_loader)``).
        image_key: key of the image in the batch.
        amp: autocast the forward pass; ``amp_dtype`` bfloat16 (CPU and GPU) or float16 (GPU, with a GradScaler).
        grad_accumulation: micro-batches per optimizer step (ignored when ``tokens_per_step`` is set).
        tokens_per_step: if set, step once the accumulated micro-batches hold at least this many patch tokens;
            each micro-batch loss is weighted by ``its tokens / tokens_per_step``.
        resize_schedule: ``{"epoch": [H, W]}``: in-plane trilinear resize of the batch from that (0-based) epoch.
        mask_seed: base seed of the per-iteration mask generator.
        clip_grad: max gradient norm (None: no clipping).
        distributed: wrap the JEPA forward in ``DistributedDataParallel`` (rebuilt when the set of trainable
            parameters changes, e.g. after progressive unfreezing); needs an initialised process group.
        ddp_kwargs: extra ``DistributedDataParallel`` arguments.
        train_handlers: handlers attached to the trainer.
        slice_positions: token depth positions from each volume's kept slice indices
            (:func:`~oct_foundation.networks.vit3d.slice_token_positions`), so that a depth-subsampled training
            volume and a full volume at inference place each B-scan at the same depth position.
        compile_mode: ``torch.compile`` the JEPA forward (``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"``; ``None``/``"none"``: eager). The loss equals the eager one (tested on CPU).
        attention_backend: scaled-dot-product attention kernels allowed during the step: ``"auto"`` (PyTorch's
            choice), ``"math"``, ``"flash"``, ``"efficient"`` (memory-efficient, CUDA) or ``"cudnn"``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        mask_generator: Callable,
        momentum_schedule: Callable[[int], float] | float = 0.998,
        lr_scheduler: Any = None,
        wd_scheduler: Any = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        image_key: str = "image",
        amp: bool = False,
        amp_dtype: str | torch.dtype = "bfloat16",
        grad_accumulation: int = 1,
        tokens_per_step: int | None = None,
        resize_schedule: Mapping | None = None,
        mask_seed: int = 0,
        clip_grad: float | None = None,
        distributed: bool = False,
        ddp_kwargs: dict | None = None,
        train_handlers: Sequence | None = None,
        iteration_update: Callable | None = None,
        slice_positions: bool = False,
        compile_mode: str | None = None,
        attention_backend: str = "auto",
    ) -> None:
        if int(grad_accumulation) < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {grad_accumulation!r}")
        if tokens_per_step is not None and int(tokens_per_step) <= 0:
            tokens_per_step = None
        self.amp_dtype = parse_amp_dtype(amp_dtype)
        dev = torch.device(device)
        super().__init__(
            device=dev,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch_image,
            iteration_update=iteration_update,
            handlers=None,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.optimizer = optimizer
        self.mask_generator = mask_generator
        self.momentum_schedule = momentum_schedule
        self.lr_scheduler = lr_scheduler
        self.wd_scheduler = wd_scheduler
        self.image_key = image_key
        self.grad_accumulation = int(grad_accumulation)
        self.tokens_per_step = int(tokens_per_step) if tokens_per_step else None
        self.resize_schedule = dict(resize_schedule) if resize_schedule else None
        self.mask_seed = int(mask_seed)
        self.clip_grad = clip_grad
        self.distributed = bool(distributed)
        self.slice_positions = bool(slice_positions)
        self.compile_mode = None if compile_mode in (None, "", "none", "None", False) else str(compile_mode)
        if self.compile_mode not in (None,) + COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of none, {', '.join(COMPILE_MODES)}; got {compile_mode!r}")
        self._attention = attention_context(attention_backend)  # validates the name now
        self._compiled = None
        self.ddp_kwargs = dict(ddp_kwargs or {})
        # fp16 needs loss scaling; bf16 has the fp32 range and does not. Created here (not in run()) so that the
        # checkpoint dict can reference it before training starts.
        use_scaler = amp and self.amp_dtype == torch.float16 and dev.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self._objective = JEPAObjective(network)
        self._ddp = None
        self._ddp_signature: tuple | None = None
        self._acc_tokens = 0
        self._acc_micro = 0
        self.add_event_handler(Events.EPOCH_STARTED, self._reset_accumulation)
        if train_handlers:  # attached last: handlers may read the trainer's attributes (checkpoint_objects)
            self._register_handlers(train_handlers)

    # -- helpers -------------------------------------------------------------------------------------------------
    def run(self) -> None:  # type: ignore[override]
        """Train (continues from the current state when called again or after a checkpoint load)."""
        # Trainer.run() would replace the scaler by a fp16 CUDA one; keep ours (None for bf16 / CPU).
        super(Trainer, self).run()

    def checkpoint_objects(self) -> dict:
        """Everything needed to resume: network (encoder, target encoder, predictor), optimizer, schedulers,
        trainer state and the grad scaler when there is one."""
        objs = {"network": self.network, "optimizer": self.optimizer, "trainer": self}
        if self.lr_scheduler is not None:
            objs["lr_scheduler"] = self.lr_scheduler
        if self.wd_scheduler is not None:
            objs["wd_scheduler"] = self.wd_scheduler
        if self.scaler is not None:
            objs["scaler"] = self.scaler
        return objs

    def momentum(self, iteration: int) -> float:
        """EMA momentum for the 0-based ``iteration``."""
        m = self.momentum_schedule
        return float(m(iteration)) if callable(m) else float(m)

    def current_lr(self) -> float:
        """LR of the first parameter group (the reference group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _reset_accumulation(self, engine=None) -> None:
        self._acc_tokens = 0
        self._acc_micro = 0
        self.optimizer.zero_grad(set_to_none=True)

    def _forward_module(self) -> torch.nn.Module:
        module = self._eager_module()
        if self.compile_mode is None:
            return module
        if self._compiled is None or self._compiled[0] is not module:
            self._compiled = (module, torch.compile(module, mode=self.compile_mode))
        return self._compiled[1]

    def _eager_module(self) -> torch.nn.Module:
        if not self.distributed:
            return self._objective
        signature = tuple(p.requires_grad for p in self.network.parameters())
        if self._ddp is None or signature != self._ddp_signature:
            from oct_foundation.engines.runs import wrap_ddp

            self._ddp = wrap_ddp(self._objective, self.state.device, **self.ddp_kwargs)
            self._ddp_signature = signature
        return self._ddp

    def _resize(self, x: torch.Tensor, epoch0: int) -> torch.Tensor:
        size = size_for_epoch(self.resize_schedule, epoch0)
        if size is None or tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=(x.shape[2], *size), mode="trilinear", align_corners=False)

    def _should_step(self, engine, tokens: int) -> bool:
        epoch_length = engine.state.epoch_length
        last_in_epoch = epoch_length is not None and engine.state.iteration % epoch_length == 0
        self._acc_micro += 1
        self._acc_tokens += tokens
        if self.tokens_per_step:
            return self._acc_tokens >= self.tokens_per_step or last_in_epoch
        return self._acc_micro >= self.grad_accumulation or last_in_epoch

    # -- one iteration -------------------------------------------------------------------------------------------
    def _iteration(self, engine: "JEPATrainer", batchdata) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        x = prepare_batch_image(batchdata, device, engine.non_blocking, engine.image_key)
        x = engine._resize(x, engine.state.epoch - 1)
        b = x.shape[0]
        grid = tuple(int(g) for g in engine.network.encoder.grid_size(*x.shape[2:]))
        n_tokens = grid[0] * grid[1] * grid[2]
        rank = engine.state.rank or 0
        gen = _seeded_generator(engine.mask_seed + engine.state.iteration + 1_000_003 * rank)
        ctx_idx, tgt_idx = draw_masks(engine.mask_generator, b, grid, gen, device)

        tokens = b * n_tokens
        should_step = engine._should_step(engine, tokens)
        # token-weighted accumulation: a micro-batch counts for its share of the step's tokens (at most the whole
        # step when one micro-batch alone holds more than tokens_per_step)
        scale = (tokens / max(engine.tokens_per_step, tokens) if engine.tokens_per_step
                 else 1.0 / engine.grad_accumulation)

        engine.network.train()
        module = engine._forward_module()
        sync = contextlib.nullcontext() if (should_step or not hasattr(module, "no_sync")) else module.no_sync()
        autocast = (torch.autocast(device_type=device.type, dtype=engine.amp_dtype) if engine.amp
                    else contextlib.nullcontext())
        engine.state.output = {Keys.IMAGE: x}
        with sync, engine._attention():
            with autocast:
                depth = (batch_depth_positions(batchdata, engine.network, x, engine.image_key)
                         if engine.slice_positions else None)
                pred, target = module(x, ctx_idx, tgt_idx, depth)
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                loss = engine.network.jepa_loss(_float(pred), _float(target))
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            scaled = loss * scale
            if engine.scaler is not None:
                engine.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        momentum = engine.momentum(engine.state.iteration - 1)
        lr = engine.current_lr()
        stepped = False
        if should_step:
            if engine.scaler is not None:
                engine.scaler.unscale_(engine.optimizer)
            if engine.clip_grad:
                params = [p for g in engine.optimizer.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, float(engine.clip_grad))
            if engine.scaler is not None:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
            engine.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                engine.network.ema_update(momentum)
            engine._acc_tokens = 0
            engine._acc_micro = 0
            stepped = True
        if engine.lr_scheduler is not None:
            with warnings.catch_warnings():  # per-iteration schedule: the first iterations may accumulate only
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
                engine.lr_scheduler.step()
        if engine.wd_scheduler is not None:
            engine.wd_scheduler.step()

        engine.state.output.update({
            Keys.LOSS: loss.detach().float(),
            "lr": lr,
            "ema_momentum": momentum,
            "tokens": tokens,
            "context_tokens": _numel(ctx_idx),
            "target_tokens": _numel(tgt_idx),
            "grid": grid,
            "optimizer_step": stepped,
        })
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class JEPAEvaluator(Evaluator):
    """Validation JEPA loss: the same masks on every validation run (seeded from ``mask_seed`` and the batch
    number), no gradients. Key metric ``val_jepa_loss`` (lower is better) unless ``key_val_metric`` is given.

    Args:
        device: device.
        val_data_loader: loader of dict batches ``{"image": [B, C, D, H, W]}``.
        network: the ``VJEPA3D``.
        mask_generator: as for :class:`JEPATrainer`.
        mask_seed: base seed of the validation masks.
        amp, amp_dtype: autocast as for :class:`JEPATrainer`.
        key_val_metric: optional ``{name: ignite Metric}``; default averages the loss.
        val_handlers: handlers attached to the evaluator.
        slice_positions: as for :class:`JEPATrainer` (use the trainer's setting).
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        mask_generator: Callable,
        mask_seed: int = 12345,
        image_key: str = "image",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        amp: bool = False,
        amp_dtype: str | torch.dtype = "bfloat16",
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        val_handlers: Sequence | None = None,
        slice_positions: bool = False,
    ) -> None:
        from ignite.metrics import Average

        if key_val_metric is None:
            key_val_metric = {"val_jepa_loss": Average(output_transform=_loss_of)}
        super().__init__(
            device=torch.device(device),
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch_image,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=_lower_is_better,
            val_handlers=val_handlers,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.mask_generator = mask_generator
        self.mask_seed = int(mask_seed)
        self.image_key = image_key
        self.amp_dtype = parse_amp_dtype(amp_dtype)
        self.slice_positions = bool(slice_positions)

    def _iteration(self, engine: "JEPAEvaluator", batchdata) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        x = prepare_batch_image(batchdata, device, engine.non_blocking, engine.image_key)
        grid = tuple(int(g) for g in engine.network.encoder.grid_size(*x.shape[2:]))
        epoch_length = engine.state.epoch_length or 1
        it = (engine.state.iteration - 1) % epoch_length
        gen = _seeded_generator(engine.mask_seed + it)
        ctx_idx, tgt_idx = draw_masks(engine.mask_generator, x.shape[0], grid, gen, device)
        autocast = (torch.autocast(device_type=device.type, dtype=engine.amp_dtype) if engine.amp
                    else contextlib.nullcontext())
        engine.network.eval()
        with torch.no_grad(), autocast:
            depth = (batch_depth_positions(batchdata, engine.network, x, engine.image_key)
                     if engine.slice_positions else None)
            pred, target = engine.network.jepa_forward(x, ctx_idx, tgt_idx, depth_positions=depth)
            loss = engine.network.jepa_loss(_float(pred), _float(target))
        engine.state.output = {Keys.IMAGE: x, Keys.LOSS: loss.detach().float()}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _float(x):
    return [t.float() for t in x] if isinstance(x, (list, tuple)) else x.float()


def _loss_of(output) -> float:
    return float(output[Keys.LOSS])


def _lower_is_better(current, best) -> bool:
    return current < best


# -- network preparation -----------------------------------------------------------------------------------------
def prepare_network(
    network: torch.nn.Module,
    pretrained_path: str | None = None,
    freeze_first_n: int = 0,
    freeze_patch_embed: bool | None = None,
    pretrained_kwargs: dict | None = None,
) -> torch.nn.Module:
    """Initialise a ``VJEPA3D`` for pretraining and return it.

    * ``pretrained_path`` (empty = random init): loaded with
      ``oct_foundation.networks.weights.load_weights(network, path, source="vjepa2", **pretrained_kwargs)`` (which
      prints its load table and fills the target encoder too); the names of the parameters filled from the file (loaded as
      is or adapted) are stored as ``network.pretrained_param_names`` for the pretrained LR multiplier of
      ``build_param_groups``. Video checkpoints usually have no OCT predictor: allow it with
      ``pretrained_kwargs={"allow_missing": ["predictor.*"]}``.
    * ``freeze_first_n`` / ``freeze_patch_embed``: see :func:`freeze_encoder`.
    """
    names: list[str] = []
    if pretrained_path:
        from oct_foundation.networks.weights import load_weights

        report = load_weights(network, pretrained_path, source="vjepa2", **(pretrained_kwargs or {}))
        names = _loaded_names(report, network)
    network.pretrained_param_names = names
    freeze_encoder(network.encoder, freeze_first_n, freeze_patch_embed)
    return network


def _loaded_names(report, network: torch.nn.Module) -> list[str]:
    """Parameter names of ``network`` that a ``LoadReport`` says were filled from the file (loaded or adapted)."""
    params = {n for n, _ in network.named_parameters()}
    got = set(getattr(report, "loaded", ()) or ()) | set((getattr(report, "adapted", None) or {}).keys())
    return sorted(params & {str(k) for k in got})


def mask_generator_for_depth(mask_generator, d_full: int | None, d_target: int | None, rescale: bool = True):
    """Mask generator(s) for volumes subsampled from ``d_full`` to ``d_target`` slices.

    With ``rescale`` and both depths set, each generator is replaced by ``rescale_for_d_target(d_full, d_target)``
    (block depths keep the fraction they have at full depth); otherwise the input is returned unchanged. Accepts
    one generator or a list (V-JEPA's short- and long-range pair).
    """
    if not rescale or not d_target or not d_full:
        return mask_generator
    gens = mask_generator if isinstance(mask_generator, (list, tuple)) else [mask_generator]
    if int(d_full) != int(d_target) and all(tuple(m.temporal_scale) == (1.0, 1.0) for m in gens):
        # a block spanning the whole depth masks the same fraction at any depth: nothing to rescale
        logger.info("mask_rescale: every mask block spans the full depth (temporal_scale 1.0), so the masked "
                    "fraction is already the same at d_target=%s and d_full=%s; rescaling changes nothing "
                    "(it acts on temporal_scale < 1)", d_target, d_full)
    if isinstance(mask_generator, (list, tuple)):
        return [m.rescale_for_d_target(int(d_full), int(d_target)) for m in mask_generator]
    return mask_generator.rescale_for_d_target(int(d_full), int(d_target))
