"""Measured performance of the package against named baselines in the same run.

Every figure is a ratio against a baseline measured by the same process on the same input, so a number means
something on any machine; absolute times are shown next to it for context only. Sections:

* **JEPA step** (:func:`bench_jepa`): one V-JEPA training step of :class:`~oct_foundation.networks.VJEPA3D`
  (target encoder on all tokens without gradient, context encoder on the kept tokens, predictor, L1 loss,
  backward, AdamW step, EMA update) against the same step built from Hugging Face transformers' ``VJEPA2Model``
  (random weights from a ``VJEPA2Config`` of the same width, depth, heads, patch, tubelet and input; never
  downloaded; a frozen copy of its encoder is the target encoder). The same masks go to both. Also our step at
  mask ratios 0 / 0.5 / 0.75 / 0.9 (time relative to ratio 0) and float32 against bfloat16 autocast.
* **Official encoder** (:func:`bench_official`, with ``--vjepa2-src PATH``, a local checkout of
  facebookresearch/vjepa2 that the user provides): encoder forward + backward of ours against the official
  ``VisionTransformer`` holding the same weights, float32 and bfloat16 autocast, all tokens and a quarter kept.
* **MAISI wrapper** (:func:`bench_maisi`): :class:`~oct_foundation.networks.maisi.StackedVideoVAE` ``encode``
  against one batched ``AutoencoderKlMaisi.encode`` call on the same stacks (overhead ratio, latents compared),
  and the peak memory of both at T = 16, 64, 256, 512 frames.
* **Data path** (:func:`bench_data`): the data layer's ``build_preprocessing`` chain (depth subsampling before
  resampling) per volume against the chain that resamples the full depth first and subsamples afterwards; and
  (:func:`bench_data_files`) from files in each format with partial reading, reading only the kept slices
  against reading every slice and subsampling afterwards.

Timing: ``warmup`` untimed calls, then the median of ``repeats`` timed calls (``time.perf_counter``, CUDA
synchronised); variants that are compared are timed round-robin (:func:`time_interleaved`). Peak memory on CPU: a fresh Python subprocess per measurement builds the case, calls it once,
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux) and reports the peak RSS of a second call
(``VmHWM``, the ``ru_maxrss`` of its own address space) minus the resident size before it; on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before.

``python scripts/benchmark.py [--quick] [--device cuda] [--vjepa2-src PATH] [--out docs/performance.md]`` is the
command line.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Table",
    "SIZES",
    "machine_info",
    "time_call",
    "time_interleaved",
    "profile_ops",
    "peak_memory_mb",
    "measure_peak_memory",
    "bench_jepa",
    "bench_official",
    "bench_compile",
    "official_vjepa2_encoder_class",
    "bench_maisi",
    "bench_large",
    "bench_large_maisi",
    "bench_data",
    "bench_data_files",
    "run_benchmarks",
    "summarize",
    "render_markdown",
    "main",
]

NOT_INSTALLED = "not installed"

# ------------------------------------------------------------------------------------------------ sizes
#: Problem sizes. ``tiny`` is for the test suite (seconds), ``quick`` for CI, ``default`` for a 2-core CPU
#: (finishes in a few minutes). Every section reads its own sub-dict.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "jepa": {"embed_dim": 32, "depth": 1, "num_heads": 2, "predictor_embed_dim": 16, "predictor_depth": 1,
                 "patch_size": 16, "tubelet_size": 2, "frames": 4, "size": 32, "batch": 1},
        "maisi": {"num_channels": (4, 4, 4), "frames": 8, "size": 16, "batch": 1, "stack_size": 4,
                  "chunk_size": 2, "memory_frames": (8, 16), "memory_size": 16},
        "data": {"depth": 8, "size": 16, "d_targets": (2, 4)},
        "large": {"preset": "vit_tiny_oct", "frames": 8, "size": 32},
        "large_maisi": {"frames": 8, "size": 16, "num_channels": (4, 4, 4), "chunk_size": 2},
        "warmup": 0, "repeats": 1,
    },
    "quick": {
        "jepa": {"embed_dim": 64, "depth": 2, "num_heads": 4, "predictor_embed_dim": 32, "predictor_depth": 1,
                 "patch_size": 16, "tubelet_size": 2, "frames": 8, "size": 64, "batch": 2},
        "maisi": {"num_channels": (8, 8, 8), "frames": 16, "size": 32, "batch": 2, "stack_size": 4,
                  "chunk_size": 4, "memory_frames": (16, 64, 256, 512), "memory_size": 32},
        "data": {"depth": 32, "size": 64, "d_targets": (4, 8, 16)},
        "large": {"preset": "vjepa2_vitl_256", "frames": 16, "size": 128},
        "large_maisi": {"frames": 16, "size": 128, "num_channels": None, "chunk_size": 8},
        "warmup": 1, "repeats": 5,
    },
    "default": {
        "jepa": {"embed_dim": 192, "depth": 4, "num_heads": 6, "predictor_embed_dim": 96, "predictor_depth": 2,
                 "patch_size": 16, "tubelet_size": 2, "frames": 16, "size": 128, "batch": 2},
        "maisi": {"num_channels": (16, 32, 32), "frames": 32, "size": 64, "batch": 2, "stack_size": 4,
                  "chunk_size": 8, "memory_frames": (16, 64, 256, 512), "memory_size": 32},
        "data": {"depth": 128, "size": 256, "d_targets": (8, 16, 32, 64)},
        "large": {"preset": "vjepa2_vitl_256", "frames": 64, "size": 256},
        "large_maisi": {"frames": 128, "size": 512, "num_channels": None, "chunk_size": 8},
        "warmup": 1, "repeats": 3,
    },
}

#: OCT-like voxel spacing (mm) of the synthetic volumes in the data-path section: slice, axial, lateral.
DATA_SPACING = (0.12, 0.004, 0.012)


# ------------------------------------------------------------------------------------------------ tables
@dataclass
class Table:
    """One Markdown table: ``columns`` names, ``rows`` of cells (numbers or strings), ``notes`` below it."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: row has {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.3f}"
        return f"{v:.2e}"
    return str(v)


# ------------------------------------------------------------------------------------------------ machine
def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU count, threads, library versions and the accelerator (if any)."""
    import monai

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "device": device,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = NOT_INSTALLED
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ------------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3, device: str | torch.device = "cpu") -> dict:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    Returns ``{"median_s", "min_s", "max_s", "times_s"}``.
    """
    device = torch.device(device)
    for _ in range(max(0, int(warmup))):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 1, repeats: int = 3,
                     device: str | torch.device = "cpu") -> dict[str, dict]:
    """:func:`time_call` for several variants at once, timed round-robin (the start rotates every round).

    Variants that are compared share the machine's state (other load, clock, caches) in every round, so their
    ratio is not skewed by a burst of outside load that hits only one of them.
    """
    device = torch.device(device)
    names = list(fns)
    for _ in range(max(0, int(warmup))):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, int(repeats))):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "times_s": v}
            for n, v in times.items()}


# ------------------------------------------------------------------------------------------------ profiles
def profile_ops(fns: dict[str, Callable[[], Any]], calls: int = 2, device: str | torch.device = "cpu",
                top: int = 8) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Self time per operator (``torch.profiler``, ms per call) of each variant after one untimed call,
    one profiled call per variant per round, round-robin.

    Returns the ``top`` operators by their largest self time over the variants, and ``{variant: {op: ms}}``
    (every operator, so a variant's total can be compared with the others').
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    calls = max(1, int(calls))
    names = list(fns)
    per: dict[str, dict[str, float]] = {n: {} for n in names}
    for n in names:
        fns[n]()
    _sync(device)
    # one profiled call per variant per round, round-robin (as time_interleaved), so drift hits all alike
    for r in range(calls):
        for n in names[r % len(names):] + names[:r % len(names)]:
            with profile(activities=activities) as prof:
                fns[n]()
                _sync(device)
            for ev in prof.key_averages():
                us = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
                if us > 0:
                    per[n][ev.key] = per[n].get(ev.key, 0.0) + us / 1000.0 / calls
    ops = sorted({op for v in per.values() for op in v}, key=lambda op: -max(v.get(op, 0.0) for v in per.values()))
    return ops[:top], per


# ------------------------------------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return _maxrss_bytes()


def _maxrss_bytes() -> int:
    """Peak resident size of this process.

    Linux: ``VmHWM`` of ``/proc/self/status``, the peak of this address space (reset by :func:`_reset_peak_rss`).
    ``ru_maxrss`` is the fallback elsewhere; on Linux it also keeps the peak of the parent that was forked
    before ``exec``, so a subprocess of a large process would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Peak memory (MiB) that ``fn()`` adds on top of what is held before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before. CPU: peak RSS (``VmHWM`` /
    ``ru_maxrss``) after minus
    the resident size before (after resetting the peak mark); meaningful only in a fresh process whose
    allocator returns freed blocks to the system, see :func:`measure_peak_memory`.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _reset_peak_rss()
    before = _rss_bytes()
    fn()
    return max(0, _maxrss_bytes() - before) / 2**20


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure_peak_memory(case: str, params: dict, device: str = "cpu", threads: int | None = None,
                        timeout: float = 600, with_time: bool = False):
    """Peak memory (MiB) of one benchmark ``case`` measured in a fresh Python subprocess.

    The subprocess builds the case (:data:`_CASES`), calls it once, then measures a second call with
    :func:`peak_memory_mb`, so imports, model construction, lazy initialisation and earlier measurements do not
    leak into the number. ``with_time``: return ``{"peak_mb", "seconds"}`` (wall time of the measured call).
    """
    spec = json.dumps({"case": case, "params": params, "device": device, "threads": threads})
    env = dict(os.environ)
    # glibc serves every block of 4 KiB or more by mmap and unmaps it on free, so the resident size follows
    # the live tensors instead of the heap's high-water mark (slower allocation, only in this subprocess)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "4096")
    env["PYTHONPATH"] = _repo_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from oct_foundation.experiments.benchmarks import _probe_main; _probe_main(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory probe {case} {params} failed: {tail[0]}")
    last = proc.stdout.strip().splitlines()[-1]
    return float(json.loads(last)["peak_mb"]) if not with_time else json.loads(last)


def _probe_main(spec_json: str) -> None:
    """Entry point of the memory subprocess: build the case, measure its work, print ``{"peak_mb": x}``."""
    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    work = _CASES[spec["case"]](spec["params"], device)
    # one untimed call first: lazy initialisation (kernels paged in, CUDA context, AdamW state) stays out of
    # the figure, which is the memory a steady-state call adds
    work()
    t0 = time.perf_counter()
    peak = peak_memory_mb(work, device)
    print(json.dumps({"peak_mb": peak, "seconds": time.perf_counter() - t0}))


# ------------------------------------------------------------------------------------------------ JEPA
def _jepa_net(p: dict):
    from oct_foundation.networks import VJEPA3D

    return VJEPA3D(
        in_chans=1, img_size=(p["frames"], p["size"], p["size"]), patch_size=p["patch_size"],
        tubelet_size=p["tubelet_size"], embed_dim=p["embed_dim"], depth=p["depth"], num_heads=p["num_heads"],
        predictor_embed_dim=p["predictor_embed_dim"], predictor_depth=p["predictor_depth"],
        predictor_num_heads=p["num_heads"], pos_embed="rope", use_sdpa=True,
    )


def _hf_config(p: dict):
    from transformers import VJEPA2Config

    return VJEPA2Config(
        patch_size=p["patch_size"], crop_size=p["size"], frames_per_clip=p["frames"],
        tubelet_size=p["tubelet_size"], hidden_size=p["embed_dim"], in_chans=1, num_attention_heads=p["num_heads"],
        num_hidden_layers=p["depth"], mlp_ratio=4.0, qkv_bias=True, pred_hidden_size=p["predictor_embed_dim"],
        pred_num_attention_heads=p["num_heads"], pred_num_hidden_layers=p["predictor_depth"], pred_mlp_ratio=4.0,
    )


def _jepa_input(p: dict, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(p["batch"], 1, p["frames"], p["size"], p["size"], generator=g).to(device)


def _grid(p: dict) -> tuple[int, int, int]:
    return (p["frames"] // p["tubelet_size"], p["size"] // p["patch_size"], p["size"] // p["patch_size"])


def _block_masks(p: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """V-JEPA 2's short-range multiblock masks (8 blocks x 0.15 of the plane, full depth), seeded."""
    from oct_foundation.networks import MultiBlockMask3D

    ctx, tgt = MultiBlockMask3D()(p["batch"], _grid(p), generator=torch.Generator().manual_seed(0))
    return ctx.to(device), tgt.to(device)


def _ratio_masks(p: dict, ratio: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random masks dropping ``round(ratio * N)`` tokens per sample from the context; they are the targets.

    At ratio 0 the context is every token and one token is predicted, so the predictor's load (context +
    targets) stays about N at every ratio and only the context encoder's share changes.
    """
    n = math.prod(_grid(p))
    n_mask = min(n - 1, int(round(ratio * n)))
    g = torch.Generator().manual_seed(1)
    ctx, tgt = [], []
    for _ in range(p["batch"]):
        perm = torch.randperm(n, generator=g)
        ctx.append(perm[n_mask:].sort().values)
        tgt.append(perm[:n_mask].sort().values if n_mask else perm[:1])
    return torch.stack(ctx).to(device), torch.stack(tgt).to(device)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    import contextlib

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _ours_step(p: dict, device: torch.device, ctx=None, tgt=None, amp: torch.dtype | None = None,
               compile_mode: str | None = None):
    """A closure running one training step of our VJEPA3D (see module doc); ``compile_mode``: the forward and
    loss under ``torch.compile(mode=compile_mode)`` (what the pretrain bundle's ``compile_mode`` compiles)."""
    torch.manual_seed(0)
    net = _jepa_net(p).to(device).train()
    x = _jepa_input(p, device)
    if ctx is None:
        ctx, tgt = _block_masks(p, device)
    opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-4)

    def forward(x, ctx, tgt):
        pred, target = net.jepa_forward(x, ctx, tgt)
        return net.jepa_loss(pred, target)

    fwd = forward if compile_mode is None else torch.compile(forward, mode=compile_mode)

    def step():
        with _autocast(device, amp):
            loss = fwd(x, ctx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.ema_update(0.999)
        return float(loss.detach())

    return step


def _hf_step(p: dict, device: torch.device, ctx=None, tgt=None, amp: torch.dtype | None = None):
    """The same step with transformers' ``VJEPA2Model`` (input ``[B, T, C, H, W]``) and a frozen encoder copy.

    ``VJEPA2Model`` has no masked context encoder: its encoder always sees every token and the context mask
    selects the encoder outputs passed to the predictor, as its ``forward`` documents.
    """
    from transformers import VJEPA2Model

    torch.manual_seed(0)
    model = VJEPA2Model(_hf_config(p)).to(device).train()
    target_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
    x = _jepa_input(p, device).permute(0, 2, 1, 3, 4).contiguous()
    if ctx is None:
        ctx, tgt = _block_masks(p, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t_params = list(target_encoder.parameters())
    c_params = list(model.encoder.parameters())

    def step():
        with _autocast(device, amp):
            with torch.no_grad():
                h = target_encoder(pixel_values_videos=x).last_hidden_state
                h = F.layer_norm(h, (h.shape[-1],))
                target = torch.gather(h, 1, tgt[..., None].expand(-1, -1, h.shape[-1]))
            out = model(pixel_values_videos=x, context_mask=[ctx], target_mask=[tgt])
            pred = out.predictor_output.last_hidden_state
            loss = (pred.float() - target.float()).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(t_params, 0.999)
            torch._foreach_add_(t_params, [q.detach() for q in c_params], alpha=0.001)
        return float(loss.detach())

    return step


def _ours_encoder_step(p: dict, device: torch.device):
    """Forward + backward of our encoder alone on every token (implementation comparison, no masking)."""
    torch.manual_seed(0)
    enc = _jepa_net(p).encoder.to(device).train()
    x = _jepa_input(p, device)

    def step():
        enc.zero_grad(set_to_none=True)
        enc(x).square().mean().backward()

    return step


def _hf_encoder_step(p: dict, device: torch.device):
    from transformers import VJEPA2Model

    torch.manual_seed(0)
    enc = VJEPA2Model(_hf_config(p)).encoder.to(device).train()
    x = _jepa_input(p, device).permute(0, 2, 1, 3, 4).contiguous()

    def step():
        enc.zero_grad(set_to_none=True)
        enc(pixel_values_videos=x).last_hidden_state.square().mean().backward()

    return step


def _sdpa_call(batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(batch, heads, length, head_dim, generator=g).to(device=device, dtype=dtype)
               .requires_grad_(True) for _ in range(3))

    def run():
        F.scaled_dot_product_attention(q, k, v).float().square().mean().backward()

    return run


def _hf_available() -> bool:
    try:
        import transformers  # noqa: F401
        from transformers import VJEPA2Config, VJEPA2Model  # noqa: F401
    except ImportError:
        return False
    return True


def bench_jepa(p: dict, device: str = "cpu", warmup: int = 1, repeats: int = 3, memory: bool = True,
               threads: int | None = None, ratios: Sequence[float] = (0.0, 0.5, 0.75, 0.9)) -> list[Table]:
    """JEPA step tables: ours against ``VJEPA2Model``, mask-ratio sweep, float32 against bfloat16 autocast."""
    dev = torch.device(device)
    grid = _grid(p)
    n = math.prod(grid)
    tokens = p["batch"] * n
    ctx, tgt = _block_masks(p, dev)
    shape = f"[{p['batch']}, 1, {p['frames']}, {p['size']}, {p['size']}]"
    hf_ok = _hf_available()

    def mem(case: str, extra: dict | None = None):
        if not memory:
            return "not measured"
        return measure_peak_memory(case, {**p, **(extra or {})}, device=device, threads=threads)

    # ours vs Hugging Face
    t = Table("JEPA training step: ours vs Hugging Face transformers VJEPA2Model",
              ["implementation", "step", "context tokens", "median step (s)", "tokens/s", "peak memory (MiB)",
               "ratio ours/HF (tokens/s)"])
    variants = {"ours": _ours_step(p, dev, ctx, tgt), "ours_enc": _ours_encoder_step(p, dev)}
    if hf_ok:
        variants.update({"hf": _hf_step(p, dev, ctx, tgt), "hf_enc": _hf_encoder_step(p, dev)})
    timed = time_interleaved(variants, warmup, repeats, dev)
    del variants
    ours, ours_enc = timed["ours"], timed["ours_enc"]
    ours_mem, ours_enc_mem = mem("jepa_ours"), mem("jepa_ours_encoder")
    nc = int(ctx.shape[1])
    if hf_ok:
        hf, hf_enc = timed["hf"], timed["hf_enc"]
        hf_mem, hf_enc_mem = mem("jepa_hf"), mem("jepa_hf_encoder")
        r_step = hf["median_s"] / ours["median_s"]
        r_enc = hf_enc["median_s"] / ours_enc["median_s"]
        t.add("HF VJEPA2Model", "JEPA step", n, hf["median_s"], tokens / hf["median_s"], hf_mem, 1.0)
        t.add("ours VJEPA3D", "JEPA step", nc, ours["median_s"], tokens / ours["median_s"], ours_mem, r_step)
        t.add("HF VJEPA2Model", "encoder fwd+bwd, all tokens", n, hf_enc["median_s"], tokens / hf_enc["median_s"],
              hf_enc_mem, 1.0)
        t.add("ours VJEPA3D", "encoder fwd+bwd, all tokens", n, ours_enc["median_s"],
              tokens / ours_enc["median_s"], ours_enc_mem, r_enc)
    else:
        t.add("HF VJEPA2Model", "JEPA step", n, NOT_INSTALLED, NOT_INSTALLED, NOT_INSTALLED, NOT_INSTALLED)
        t.add("ours VJEPA3D", "JEPA step", nc, ours["median_s"], tokens / ours["median_s"], ours_mem,
              NOT_INSTALLED)
        t.add("HF VJEPA2Model", "encoder fwd+bwd, all tokens", n, NOT_INSTALLED, NOT_INSTALLED, NOT_INSTALLED,
              NOT_INSTALLED)
        t.add("ours VJEPA3D", "encoder fwd+bwd, all tokens", n, ours_enc["median_s"],
              tokens / ours_enc["median_s"], ours_enc_mem, NOT_INSTALLED)
    t.notes += [
        f"Input {shape} (B, C, T, H, W), token grid {grid} = {n} tokens per sample; embed {p['embed_dim']}, depth "
        f"{p['depth']}, heads {p['num_heads']}, patch {p['patch_size']}, tubelet {p['tubelet_size']}; predictor "
        f"embed {p['predictor_embed_dim']}, depth {p['predictor_depth']}. Both models: random weights, in_chans 1, "
        "RoPE, SDPA attention, AdamW, EMA target encoder.",
        f"Same masks for both: V-JEPA 2 short-range multiblock (8 blocks x 0.15), {nc} context and "
        f"{int(tgt.shape[1])} target tokens per sample. VJEPA2Model's encoder always processes all tokens (its "
        "context mask only selects encoder outputs for the predictor); ours runs the context encoder on the "
        "context tokens only.",
        "tokens/s = B x N input tokens per second; ratio > 1 means ours is faster. The encoder-only rows "
        "compare the implementations without the masking advantage.",
    ]
    tables = [t]

    # mask-ratio sweep
    s = Table("JEPA step vs mask ratio (ours)",
              ["mask ratio", "context tokens", "target tokens", "median step (s)", "tokens/s",
               "time ratio vs mask 0"])
    masks = {float(r): _ratio_masks(p, r, dev) for r in ratios}
    timed = time_interleaved({r: _ours_step(p, dev, c, tg) for r, (c, tg) in masks.items()}, warmup, repeats, dev)
    base = timed[float(ratios[0])]["median_s"]
    for r, (c, tg) in masks.items():
        res = timed[r]
        s.add(r, int(c.shape[1]), int(tg.shape[1]), res["median_s"], tokens / res["median_s"],
              res["median_s"] / base)
    s.notes.append("Context = random tokens kept per sample, targets = the dropped ones (one token at ratio 0); "
                   "the target encoder always sees all tokens. Cost should fall as the context shrinks.")
    tables.append(s)

    # the attention kernel alone at this step's sequence lengths: where a bfloat16 step can lose time
    k = Table(f"Attention kernel alone: scaled_dot_product_attention forward + backward, bfloat16 vs float32 "
              f"({dev.type})",
              ["sequence length", "float32 (s)", "bfloat16 (s)", "time ratio bfloat16/float32"])
    head_dim = p["embed_dim"] // p["num_heads"]
    lengths = sorted({nc, n, 4 * n})
    kfns = {}
    for length in lengths:
        for dt in (torch.float32, torch.bfloat16):
            kfns[(length, dt)] = _sdpa_call(p["batch"], p["num_heads"], length, head_dim, dt, dev)
    ktimed = time_interleaved(kfns, warmup, repeats, dev)
    del kfns
    for length in lengths:
        f32, b16 = ktimed[(length, torch.float32)]["median_s"], ktimed[(length, torch.bfloat16)]["median_s"]
        k.add(length, f32, b16, b16 / f32)
    k.notes.append(f"Batch {p['batch']}, {p['num_heads']} heads of {head_dim} channels, random q, k, v with "
                   f"gradients; {nc} = this step's context length, {n} = all tokens, {4 * n} = four times that. "
                   "PyTorch's kernel, the same one both implementations call: a ratio > 1 at the step's lengths is "
                   "time a bfloat16 step loses in attention whatever the model code does.")
    tables.append(k)

    # precision: ours and VJEPA2Model, each at float32 and under bfloat16 autocast, timed round-robin
    a = Table(f"JEPA step: float32 vs bfloat16 autocast ({dev.type}), ours and Hugging Face VJEPA2Model",
              ["implementation", "precision", "median step (s)", "tokens/s", "time ratio vs own float32",
               "ratio ours/HF at equal precision (tokens/s)"])
    variants = {("ours", "fp32"): _ours_step(p, dev, ctx, tgt),
                ("ours", "bf16"): _ours_step(p, dev, ctx, tgt, amp=torch.bfloat16)}
    if hf_ok:
        variants.update({("hf", "fp32"): _hf_step(p, dev, ctx, tgt),
                         ("hf", "bf16"): _hf_step(p, dev, ctx, tgt, amp=torch.bfloat16)})
    timed = time_interleaved(variants, warmup, repeats, dev)
    del variants
    names = {"fp32": "float32", "bf16": "bfloat16 autocast"}
    for impl, label in (("hf", "HF VJEPA2Model"), ("ours", "ours VJEPA3D")):
        for prec in ("fp32", "bf16"):
            if (impl, prec) not in timed:
                a.add(label, names[prec], NOT_INSTALLED, NOT_INSTALLED, NOT_INSTALLED, NOT_INSTALLED)
                continue
            res = timed[(impl, prec)]
            own = res["median_s"] / timed[(impl, "fp32")]["median_s"]
            vs = (timed[("hf", prec)]["median_s"] / res["median_s"]) if ("hf", prec) in timed else NOT_INSTALLED
            a.add(label, names[prec], res["median_s"], tokens / res["median_s"], own, vs)
    a.notes += [
        "The step and masks of the first table. Time ratio < 1: autocast is faster than the same implementation "
        "in float32. The last column compares the two implementations at the same precision (> 1: ours faster).",
        "Under autocast our patch embedding is one bfloat16 matmul over the kept tubelets; VJEPA2Model's is a "
        "Conv3d over all of them, whose bfloat16 backward is slow on CPU (oneDNN).",
    ]
    tables.append(a)
    return tables


def bench_compile(p: dict, device: str = "cpu", warmup: int = 1, repeats: int = 3,
                  mode: str = "default") -> list[Table]:
    """Our JEPA step eager against ``torch.compile`` (forward and loss), float32 and bfloat16 autocast."""
    import tempfile

    import torch._dynamo
    import torch._inductor.config as inductor_config

    dev = torch.device(device)
    ctx, tgt = _block_masks(p, dev)
    tokens = p["batch"] * math.prod(_grid(p))
    steps, first, losses = {}, {}, {}
    # a cold compilation: an empty inductor cache folder and no FX-graph / autograd caches, so "first call" is
    # what a user's first run pays, not a hit in the caches of an earlier run
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="oct_bench_inductor_") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            torch._dynamo.reset()
            with inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False):
                for prec, amp in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):
                    for kind, m in (("eager", None), ("torch.compile", mode)):
                        fn = _ours_step(p, dev, ctx, tgt, amp, compile_mode=m)
                        t0 = time.perf_counter()
                        losses[(prec, kind)] = fn()
                        _sync(dev)
                        first[(prec, kind)] = time.perf_counter() - t0
                        steps[(prec, kind)] = fn
                timed = time_interleaved(steps, warmup, repeats, dev)
        finally:
            if saved is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
            torch._dynamo.reset()
    t = Table(f"JEPA step: eager vs torch.compile ({dev.type}, ours)",
              ["precision", "mode", "first call (s)", "median step (s)", "tokens/s", "ratio compiled/eager (tokens/s)",
               "first loss"])
    for prec in ("float32", "bfloat16 autocast"):
        eager = timed[(prec, "eager")]["median_s"]
        for kind in ("eager", "torch.compile"):
            med = timed[(prec, kind)]["median_s"]
            t.add(prec, kind if kind == "eager" else f"{kind} ({mode})", first[(prec, kind)], med, tokens / med,
                  eager / med, losses[(prec, kind)])
    t.notes += [
        "The step of the JEPA tables (same input, masks and seed); torch.compile wraps the forward and the loss "
        "(what the pretrain bundle's compile_mode compiles), the backward, AdamW and EMA run eagerly. First call = "
        "compilation from empty caches plus one step. The first losses of eager and compiled agree to float rounding (same weights, "
        "same batch).",
    ]
    return [t]


# ------------------------------------------------------------------------------------------------ official V-JEPA 2
def official_vjepa2_encoder_class(src: str):
    """``VisionTransformer`` of a local checkout of facebookresearch/vjepa2 (the folder holding ``src/``).

    The official code is not part of this package and is never downloaded: the user points at a checkout. Its
    ``src/models/utils/modules.py`` imports timm only for ``drop_path``; where timm cannot be imported (its
    torchvision dependency does not load beside every torch build) a ``timm.models.layers`` module with the
    standard ``drop_path`` is registered first, and the benchmark runs with ``drop_path_rate=0`` (V-JEPA 2's
    default), where ``drop_path`` is the identity.
    """
    import importlib
    import types

    root = os.path.abspath(os.path.expanduser(src))
    target = os.path.join(root, "src", "models", "vision_transformer.py")
    if not os.path.isfile(target):
        raise FileNotFoundError(f"--vjepa2-src {src}: no src/models/vision_transformer.py there (expected a "
                                "checkout of facebookresearch/vjepa2)")
    try:
        import timm.models.layers  # noqa: F401
    except Exception:
        def drop_path(x, drop_prob: float = 0.0, training: bool = False):
            if drop_prob == 0.0 or not training:
                return x
            keep = 1.0 - drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

        layers = types.ModuleType("timm.models.layers")
        layers.drop_path = drop_path
        sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                            "timm.models.layers": layers})
    loaded = sys.modules.get("src.models.vision_transformer")
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "")) != target:
        raise RuntimeError(f"another package named 'src' is already imported ({loaded.__file__})")
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("src.models.vision_transformer").VisionTransformer


def _git_commit(folder: str) -> str:
    try:
        return subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip() or "unknown"
    except Exception:
        return "unknown (not a git checkout)"


def bench_official(p: dict, src: str, device: str = "cpu", warmup: int = 1, repeats: int = 3,
                   keep_fraction: float = 0.25) -> list[Table]:
    """Encoder forward + backward, ours against the official V-JEPA 2 ``VisionTransformer`` with the same
    weights (ours loaded into it strictly, outputs compared), at float32 and under bfloat16 autocast, on all
    tokens and on ``keep_fraction`` of them (both encoders take the kept-token indices)."""
    official_cls = official_vjepa2_encoder_class(src)
    dev = torch.device(device)
    grid = _grid(p)
    n = math.prod(grid)
    torch.manual_seed(0)
    ours = _jepa_net(p).encoder.to(dev).train()  # the encoder of the JEPA tables
    official = official_cls(img_size=(p["size"], p["size"]), patch_size=p["patch_size"], num_frames=p["frames"],
                            tubelet_size=p["tubelet_size"], in_chans=1, embed_dim=p["embed_dim"], depth=p["depth"],
                            num_heads=p["num_heads"], use_rope=True, use_sdpa=True).to(dev).train()
    official.load_state_dict(ours.state_dict(), strict=True)
    x = _jepa_input(p, dev)
    k = max(1, int(round(keep_fraction * n)))
    g = torch.Generator().manual_seed(2)
    keep = torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(p["batch"])]).to(dev)
    with torch.no_grad():
        diff_all = float((official(x) - ours(x)).abs().max())
        diff_kept = float((official(x, masks=[keep]) - ours(x, keep)).abs().max())

    def make(net, masks, amp):
        def step():
            net.zero_grad(set_to_none=True)
            with _autocast(dev, amp):
                if masks is None:
                    out = net(x)
                else:
                    out = net(x, masks=[masks]) if net is official else net(x, masks)
                loss = out.float().square().mean()
            loss.backward()
        return step

    cases = {}
    for prec, amp in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):
        for kept, masks in (("all", None), (f"{k} of {n} kept", keep)):
            cases[("official", prec, kept)] = make(official, masks, amp)
            cases[("ours", prec, kept)] = make(ours, masks, amp)
    timed = time_interleaved(cases, warmup, repeats, dev)
    t = Table("Encoder forward + backward: ours vs the official facebookresearch/vjepa2 VisionTransformer",
              ["precision", "tokens", "official median (s)", "ours median (s)", "ours tokens/s",
               "ratio ours/official (tokens/s)"])
    tokens = p["batch"] * n
    for prec in ("float32", "bfloat16 autocast"):
        for kept in ("all", f"{k} of {n} kept"):
            o, u = timed[("official", prec, kept)]["median_s"], timed[("ours", prec, kept)]["median_s"]
            t.add(prec, kept, o, u, tokens / u, o / u)
    t.notes += [
        f"Official code: {os.path.abspath(src)} at commit {_git_commit(src)} (a local checkout, run as is; "
        "`--vjepa2-src`). Same size as the JEPA tables: input "
        f"[{p['batch']}, 1, {p['frames']}, {p['size']}, {p['size']}], embed {p['embed_dim']}, depth {p['depth']}, "
        f"heads {p['num_heads']}, patch {p['patch_size']}, tubelet {p['tubelet_size']}, RoPE, SDPA, training "
        "mode, loss = mean square of the output tokens.",
        f"Same weights: ours loaded strictly into the official encoder; max |official - ours| of the output "
        f"tokens {diff_all:.1e} on all tokens, {diff_kept:.1e} on the kept ones (float32). The kept tokens: "
        f"{k} random indices per sample, passed to both as the context mask.",
        "Ratio > 1: ours is faster at the same precision.",
    ]
    return [t]


# ------------------------------------------------------------------------------------------------ MAISI
def _maisi_autoencoder(p: dict):
    from oct_foundation.networks.maisi import build_maisi_autoencoder, maisi_autoencoder_config

    torch.manual_seed(0)
    return build_maisi_autoencoder(maisi_autoencoder_config(num_channels=list(p["num_channels"]))).eval()


def _maisi_wrapper(p: dict, ae):
    from oct_foundation.networks.maisi import StackedVideoVAE

    return StackedVideoVAE(autoencoder=ae, strategy="stack", stack_size=p["stack_size"],
                           chunk_size=p["chunk_size"]).eval()


def _maisi_input(p: dict, frames: int, size: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(p["batch"], 1, frames, size, size, generator=g).to(device)


def _to_stacks(x: torch.Tensor, s: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` (T a multiple of ``s``) -> ``[B * T/s, C, s, H, W]``, stacks of consecutive frames."""
    b, c, t, h, w = x.shape
    return x.reshape(b, c, t // s, s, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b * (t // s), c, s, h, w)


def _from_stacks(z: torch.Tensor, b: int) -> torch.Tensor:
    """Inverse of :func:`_to_stacks` for latents: ``[B * n, L, s', H', W']`` -> ``[B, L, n * s', H', W']``."""
    n = z.shape[0] // b
    _, lc, s, h, w = z.shape
    return z.reshape(b, n, lc, s, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, lc, n * s, h, w)


def _maisi_raw_call(p: dict, device, frames: int, size: int):
    ae = _maisi_autoencoder(p).to(device)
    x = _maisi_input(p, frames, size, device)

    def run():
        with torch.no_grad():
            return ae.encode(_to_stacks(x, p["stack_size"]))[0]

    return run


def _maisi_wrapper_call(p: dict, device, frames: int, size: int):
    vae = _maisi_wrapper(p, _maisi_autoencoder(p)).to(device)
    x = _maisi_input(p, frames, size, device)

    def run():
        with torch.no_grad():
            return vae.encode(x)

    return run


def bench_maisi(p: dict, device: str = "cpu", warmup: int = 1, repeats: int = 3, memory: bool = True,
                threads: int | None = None) -> list[Table]:
    """StackedVideoVAE encode overhead over raw batched ``AutoencoderKlMaisi.encode``; peak memory against T."""
    dev = torch.device(device)
    frames, size = p["frames"], p["size"]
    raw_fn = _maisi_raw_call(p, dev, frames, size)
    wrap_fn = _maisi_wrapper_call(p, dev, frames, size)
    z_raw = _from_stacks(raw_fn(), p["batch"])
    z_wrap = wrap_fn()
    diff = float((z_raw - z_wrap).abs().max()) if z_raw.shape == z_wrap.shape else float("nan")
    timed = time_interleaved({"raw": raw_fn, "wrap": wrap_fn}, warmup, repeats, dev)
    raw, wrap = timed["raw"], timed["wrap"]
    vols = p["batch"]
    t = Table("MAISI encode: StackedVideoVAE vs raw batched AutoencoderKlMaisi.encode",
              ["implementation", "median (s)", "volumes/s", "frames/s", "overhead vs raw (%)"])
    t.add("raw AutoencoderKlMaisi.encode (all stacks in one batch)", raw["median_s"], vols / raw["median_s"],
          vols * frames / raw["median_s"], 0.0)
    t.add(f"StackedVideoVAE.encode (chunk_size {p['chunk_size']})", wrap["median_s"], vols / wrap["median_s"],
          vols * frames / wrap["median_s"], 100.0 * (wrap["median_s"] / raw["median_s"] - 1.0))
    t.notes += [
        f"Volumes [{p['batch']}, 1, {frames}, {size}, {size}], stacks of {p['stack_size']} frames, autoencoder "
        f"num_channels {list(p['num_channels'])} (zoo layout otherwise), random weights, no_grad. Target: "
        "overhead under 5%.",
        f"Same latents: max |wrapper - raw| = {diff:.2e} (shape {tuple(z_wrap.shape)}).",
    ]
    tables = [t]

    ops, per = profile_ops({"raw": raw_fn, "wrap": wrap_fn}, calls=max(3, repeats), device=dev)
    pr = Table("MAISI encode profile: self time per operator, wrapper vs raw",
               ["operator", "raw (ms per call)", "StackedVideoVAE (ms per call)", "wrapper - raw (ms)"])
    for op in ops:
        a, b = per["raw"].get(op, 0.0), per["wrap"].get(op, 0.0)
        pr.add(op, a, b, b - a)
    tot_raw, tot_wrap = sum(per["raw"].values()), sum(per["wrap"].values())
    rest_raw = tot_raw - sum(per["raw"].get(op, 0.0) for op in ops)
    rest_wrap = tot_wrap - sum(per["wrap"].get(op, 0.0) for op in ops)
    pr.add("all other operators", rest_raw, rest_wrap, rest_wrap - rest_raw)
    pr.add("total (profiled)", tot_raw, tot_wrap, tot_wrap - tot_raw)
    pr.notes.append(f"`torch.profiler`, {max(3, repeats)} calls of each encode of the table above, one at a time "
                    "round-robin (after one untimed call), self time averaged per call; "
                    "the operators with the largest self time. The wrapper's own work (padding, stacking, "
                    "chunking, copying the latents out) is what it adds beyond the convolutions both run; the "
                    "profiler's own cost inflates small operators alike in both columns.")
    tables.append(pr)

    m = Table("MAISI encode peak memory vs frames T",
              ["T (frames)", "StackedVideoVAE peak (MiB)", "raw one-batch peak (MiB)", "wrapper / raw"])
    msize = p["memory_size"]
    if memory:
        peaks = []
        for tf in p["memory_frames"]:
            q = {**p, "frames": int(tf), "size": msize, "batch": 1}
            pw = measure_peak_memory("maisi_wrapper", q, device=device, threads=threads)
            pr = measure_peak_memory("maisi_raw", q, device=device, threads=threads)
            peaks.append(pw)
            m.add(int(tf), pw, pr, pw / pr if pr > 0 else float("nan"))
        chunk_frames = p["chunk_size"] * p["stack_size"]
        full = [(tf, pk) for tf, pk in zip(p["memory_frames"], peaks) if tf >= chunk_frames] or \
            list(zip(p["memory_frames"], peaks))
        m.notes.append(f"Growth of the wrapper's peak from T={full[0][0]} (the first T that fills a chunk of "
                       f"{chunk_frames} frames) to T={full[-1][0]}: {full[-1][1] / max(full[0][1], 1e-9):.2f}x "
                       "(target: flat).")
    else:
        for tf in p["memory_frames"]:
            m.add(int(tf), "not measured", "not measured", "not measured")
    m.notes.append(f"One volume [1, 1, T, {msize}, {msize}] per fresh subprocess; the wrapper encodes "
                   f"{p['chunk_size']} stacks of {p['stack_size']} frames per call, the raw baseline all "
                   "T / stack stacks at once. Peak = resident memory added by the encode call.")
    tables.append(m)

    v = Table("MAISI encode of a video file (multi-page TIFF): streamed vs loaded whole, peak memory vs T",
              ["T (frames)", "streamed (MiB)", "loaded whole (MiB)", "streamed / loaded"])
    if memory:
        streamed = []
        for tf in p["memory_frames"]:
            q = {**p, "frames": int(tf), "size": msize, "batch": 1}
            ps = measure_peak_memory("maisi_file_stream", q, device=device, threads=threads)
            pl = measure_peak_memory("maisi_file_loaded", q, device=device, threads=threads)
            streamed.append(ps)
            v.add(int(tf), ps, pl, ps / pl if pl > 0 else float("nan"))
        v.notes.append(f"Growth of the streamed peak from T={p['memory_frames'][0]} to T={p['memory_frames'][-1]}: "
                       f"{streamed[-1] / max(streamed[0], 1e-9):.2f}x (target: flat; the latents, 1/16 of the "
                       "input's voxels in float32, still grow with T).")
    else:
        for tf in p["memory_frames"]:
            v.add(int(tf), "not measured", "not measured", "not measured")
    v.notes.append("MaisiEncodeProcessor on a uint8 TIFF of T frames of "
                   f"{msize}x{msize}: streamed = frames decoded {p['chunk_size'] * p['stack_size']} at a time "
                   "(range pass, then encode pass; the bundle's default), loaded = the default transforms read "
                   "the whole video first (--stream_video false). One fresh subprocess per figure.")
    tables.append(v)
    return tables


# ------------------------------------------------------------------------------------------------ data path
def _data_volume(p: dict):
    from monai.data import MetaTensor

    g = torch.Generator().manual_seed(0)
    d, s = p["depth"], p["size"]
    x = torch.rand(1, d, s, s, generator=g)
    affine = torch.diag(torch.tensor([*DATA_SPACING, 1.0], dtype=torch.float64))
    return MetaTensor(x, affine=affine, meta={"filename_or_obj": "benchmark_volume"})


def _data_chains(p: dict, d_target: int):
    """(ours, baseline) Compose: subsample then resample, and resample full depth then subsample."""
    from monai.transforms import Compose

    from oct_foundation.data import DepthSubsampled, build_preprocessing

    spacing = (DATA_SPACING[0], DATA_SPACING[1] * 2, DATA_SPACING[2] * 2)  # halve H and W
    ours = Compose(build_preprocessing(keys=("image",), d_target=d_target, target_spacing=spacing, load=False,
                                       train=True))
    full = build_preprocessing(keys=("image",), d_target=None, target_spacing=spacing, load=False, train=True)
    base = Compose(full[:-1] + [DepthSubsampled(("image",), d_target)] + full[-1:])
    ours.set_random_state(0)
    base.set_random_state(0)
    return ours, base


#: file formats of the data-path table from files (each has partial reading, see docs/data_formats.md)
DATA_FORMATS = ("nii.gz", "nii", "dcm", "vol", "npy", "img", "tif")


def _data_files(p: dict, folder: str) -> dict[str, str]:
    """One uint8 volume ``[D, S, S]`` written in every format of :data:`DATA_FORMATS`; ``{format: path}``."""
    import numpy as np

    from oct_foundation.data.readers import write_dicom_oct, write_heyex_vol
    from oct_foundation.data.synthetic import _nifti_bytes

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, size=(p["depth"], p["size"], p["size"]), dtype=np.uint8)
    out = {}
    for fmt in DATA_FORMATS:
        # a Zeiss Cirrus raw export states its geometry (A-scans x B-scans) in its name only
        path = os.path.join(folder, f"volume {p['size']}x{p['depth']}.img" if fmt == "img" else f"volume.{fmt}")
        if fmt == "nii.gz":  # what the synthetic cohort writes (gzip level 1)
            with open(path, "wb") as f:
                f.write(_nifti_bytes(vol, DATA_SPACING))
        elif fmt == "nii":
            import gzip

            with open(path, "wb") as f:
                f.write(gzip.decompress(_nifti_bytes(vol, DATA_SPACING)))
        elif fmt == "dcm":
            write_dicom_oct(path, vol, spacing=DATA_SPACING)
        elif fmt == "vol":
            write_heyex_vol(path, vol, spacing=DATA_SPACING)
        elif fmt == "img":  # per B-scan, A-scans of H bytes each
            with open(path, "wb") as f:
                f.write(np.ascontiguousarray(vol.transpose(0, 2, 1)).tobytes())
        elif fmt == "tif":  # one page per B-scan
            import tifffile

            tifffile.imwrite(path, vol)
        else:
            np.save(path, vol)
        out[fmt] = path
    return out


def _file_chains(p: dict, d_target: int):
    """(kept slices, read all) Compose over files: ``build_preprocessing(read_kept_slices=True / False)``, in-plane
    size halved as the pretrain bundle does (``image_size``; ``.npy`` files state no spacing to resample from)."""
    from monai.transforms import Compose

    from oct_foundation.data import build_preprocessing

    size = (p["size"] // 2, p["size"] // 2)
    kept, full = (Compose(build_preprocessing(keys=("image",), d_target=d_target, image_size=size, train=True,
                                              read_kept_slices=flag)) for flag in (True, False))
    kept.set_random_state(0)
    full.set_random_state(0)
    return kept, full


def bench_data_files(p: dict, warmup: int = 1, repeats: int = 3, formats: Sequence[str] = DATA_FORMATS) -> Table:
    """Per-volume time of reading a file and preprocessing it against ``d_target``: reading only the kept slices
    (``LoadOCTSlicesd``) against the read-all baseline (``LoadOCTd`` then ``DepthSubsampled``), same seed."""
    import tempfile

    from monai.transforms import Compose

    t = Table("Data path from files: read + preprocess per volume vs d_target",
              ["format", "d_target", "read: kept slices (s)", "read: all, then subsample (s)", "read ratio kept/all",
               "chain: kept slices (s)", "chain: all (s)", "chain ratio kept/all", "output shape"])
    with tempfile.TemporaryDirectory() as folder:
        files = _data_files(p, folder)
        sizes = {f: os.path.getsize(path) for f, path in files.items()}
        for fmt in formats:
            item = {"image": files[fmt]}
            for d in p["d_targets"]:
                kept, full = _file_chains(p, int(d))
                a, b = kept(dict(item))["image"], full(dict(item))["image"]
                if not (torch.equal(a.as_tensor(), b.as_tensor())
                        and torch.equal(a.meta["slice_indices"], b.meta["slice_indices"])):
                    raise RuntimeError(f"{fmt}: reading the kept slices changed the output at d_target {d}")
                # reading alone: the loader, EnsureTyped and DepthSubsampled (a pass-through after LoadOCTSlicesd)
                read_kept, read_full = Compose(kept.transforms[:3]), Compose(full.transforms[:3])
                timed = time_interleaved({"read_kept": lambda: read_kept(dict(item)),
                                          "read_full": lambda: read_full(dict(item)),
                                          "kept": lambda: kept(dict(item)), "full": lambda: full(dict(item))},
                                         warmup, repeats)
                rk, rf = timed["read_kept"]["median_s"], timed["read_full"]["median_s"]
                tk, tf = timed["kept"]["median_s"], timed["full"]["median_s"]
                t.add(fmt, int(d), rk, rf, rk / rf, tk, tf, tk / tf, str(tuple(a.shape)))
    t.notes.append(f"One uint8 volume [{p['depth']}, {p['size']}, {p['size']}] (spacing {DATA_SPACING} mm) written "
                   "as " + ", ".join(f"{f} ({sizes[f] / 2**20:.1f} MiB)" for f in formats) + " to a temporary "
                   "folder (in the page cache: file-system reads, no disk), then build_preprocessing(image_size "
                   "halving H and W as the pretrain bundle's in-plane resize, uniform depth subsampling with random phase, percentile normalisation) from "
                   "the path. Kept = read_kept_slices=True (only the d_target slices are decoded), all = "
                   "read_kept_slices=False (every slice decoded, then subsampled). Both give the same tensor and "
                   "slice_indices (checked before timing). read = the loader, EnsureTyped and DepthSubsampled alone; chain = "
                   "the whole preprocessing (its percentile step switches from torch.quantile to numpy.percentile, "
                   "which is faster here, above 1e6 voxels, i.e. between d_target 32 and 64). The .nii.gz is still inflated whole (gzip has no "
                   "random access); a NIfTI B-scan index is the fastest-varying file axis, so its slices are "
                   "strided in the file. img = a Zeiss Cirrus raw export (geometry in the file name, no spacing: 1.0 "
                   "mm, so the in-plane resize works from that), tif = a multi-page TIFF (one page per B-scan, "
                   "no spacing either).")
    return t


def bench_data(p: dict, warmup: int = 1, repeats: int = 3) -> list[Table]:
    """Per-volume preprocessing time against ``d_target`` (subsample first) and the resample-first baseline, in
    memory, then from files: reading only the kept slices against reading every slice (:func:`bench_data_files`)."""
    vol = _data_volume(p)
    t = Table("Data path: preprocessing time per volume vs d_target",
              ["d_target", "subsample then resample (s)", "resample full depth then subsample (s)",
               "ratio ours/baseline", "output shape"])
    for d in p["d_targets"]:
        ours, base = _data_chains(p, int(d))
        out = ours({"image": vol.clone()})["image"]
        ref = base({"image": vol.clone()})["image"]
        if tuple(out.shape) != tuple(ref.shape):
            raise RuntimeError(f"data chains disagree on the output shape: {tuple(out.shape)} vs {tuple(ref.shape)}")
        timed = time_interleaved({"ours": lambda: ours({"image": vol.clone()}),
                                  "base": lambda: base({"image": vol.clone()})}, warmup, repeats)
        to, tb = timed["ours"], timed["base"]
        t.add(int(d), to["median_s"], tb["median_s"], to["median_s"] / tb["median_s"], str(tuple(out.shape)))
    t.notes.append(f"Volume [1, {p['depth']}, {p['size']}, {p['size']}] in memory (spacing {DATA_SPACING} mm), "
                   "chain = build_preprocessing(load=False, target_spacing halving H and W, percentile "
                   "normalisation); ours keeps d_target slices first, the baseline resamples and normalises "
                   "all slices, then subsamples. Ours should grow with d_target, the baseline stays flat.")
    return [t, bench_data_files(p, warmup, repeats)]


# ------------------------------------------------------------------------------------------------ cases
def _case_jepa_ours(params, device):
    return _ours_step(params, device)


def _case_jepa_hf(params, device):
    return _hf_step(params, device)


def _case_maisi(kind):
    def build(params, device):
        f = _maisi_wrapper_call if kind == "wrapper" else _maisi_raw_call
        return f(params, device, int(params["frames"]), int(params["size"]))

    return build


def _case_maisi_file(stream: bool):
    """Encode a multi-page TIFF of ``frames`` uint8 frames through :class:`MaisiEncodeProcessor`, streamed
    (``stream_video``) or loaded whole by the default transforms: the memory a user's long video costs."""

    def build(params, device):
        import tempfile

        import numpy as np
        import tifffile

        from oct_foundation.engines.maisi_inference import MaisiEncodeProcessor

        tmp = tempfile.mkdtemp(prefix="oct_bench_video_")
        path = os.path.join(tmp, "video.tif")
        rng = np.random.default_rng(0)
        t, size = int(params["frames"]), int(params["size"])
        tifffile.imwrite(path, rng.integers(0, 255, size=(t, size, size), dtype=np.uint8))
        proc = MaisiEncodeProcessor(_maisi_wrapper(params, _maisi_autoencoder(params)), device=device,
                                    frame_chunk=int(params["chunk_size"]) * int(params["stack_size"]),
                                    stream_video=stream)
        stem = os.path.join(tmp, "out")
        return lambda: proc({"image": path}, stem)

    return build


def _official_layout_file(preset: str, folder: str) -> str:
    """A checkpoint in the public V-JEPA 2 release layout (``encoder`` / ``target_encoder`` with
    ``module.backbone.`` keys, an RGB tubelet embedding) of ``preset``'s encoder, random weights; returns its path."""
    from oct_foundation.networks.presets import get_preset
    from oct_foundation.networks.vit3d import VisionTransformer3D

    kw = _encoder_kwargs(get_preset(preset))
    torch.manual_seed(0)
    rgb = VisionTransformer3D(**{**kw, "in_chans": 3})
    sd = {f"module.backbone.{k}": v for k, v in rgb.state_dict().items()}
    path = os.path.join(folder, f"{preset}_official_layout.pt")
    torch.save({"encoder": sd, "target_encoder": sd}, path)
    return path


def _encoder_kwargs(preset_kwargs: dict) -> dict:
    """``VisionTransformer3D`` arguments of a ``VJEPA3D`` preset (the encoder only)."""
    from oct_foundation.networks.vit3d import VisionTransformer3D
    import inspect

    names = set(inspect.signature(VisionTransformer3D.__init__).parameters) - {"self"}
    kw = {k: v for k, v in preset_kwargs.items() if k in names}
    kw.update(preset_kwargs.get("encoder_kwargs") or {})
    return kw


def _case_large_embed(params, device):
    """A public-size encoder (``params["preset"]``) built, loaded strictly from an official-layout file (one
    channel adapted, ImageNet normalisation folded) and embedding one ``[1, 1, frames, size, size]`` volume in
    bf16 autocast, no gradients: the work measured is the embedding."""
    import tempfile

    from oct_foundation.networks.presets import get_preset
    from oct_foundation.networks.pretrained import load_pretrained
    from oct_foundation.networks.vit3d import VisionTransformer3D

    kw = _encoder_kwargs(get_preset(params["preset"]))
    with tempfile.TemporaryDirectory(prefix="oct_bench_large_") as tmp:
        path = _official_layout_file(params["preset"], tmp)
        enc = VisionTransformer3D(**{**kw, "in_chans": 1}).eval()
        report = load_pretrained(enc, path, print_report=False)
    if not report.ok:
        raise RuntimeError(f"strict load failed: {report}")
    enc = enc.to(device)
    x = torch.rand(1, 1, int(params["frames"]), int(params["size"]), int(params["size"]), device=device)

    def run():
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return enc(x).mean(1)

    return run


def bench_large(p: dict, device: str = "cpu", threads: int | None = None) -> list[Table]:
    """Peak memory and time of embedding one full-size volume with a public-size encoder (issue: real sizes)."""
    from oct_foundation.networks.presets import get_preset

    kw = _encoder_kwargs(get_preset(p["preset"]))
    grid = (int(p["frames"]) // int(kw.get("tubelet_size", 2)), int(p["size"]) // int(kw.get("patch_size", 16)),
            int(p["size"]) // int(kw.get("patch_size", 16)))
    t = Table(f"Public-size encoder: {p['preset']} embedding one volume, bf16 autocast",
              ["encoder", "volume", "tokens", "peak (MiB)", "seconds", "parameters (M)"])
    got = measure_peak_memory("large_embed", p, device=device, threads=threads, timeout=1800, with_time=True)
    from oct_foundation.networks.vit3d import VisionTransformer3D

    with torch.device("meta"):
        n_params = sum(q.numel() for q in VisionTransformer3D(**{**kw, "in_chans": 1}).parameters()) / 1e6
    t.add(p["preset"], f"1x1x{p['frames']}x{p['size']}x{p['size']}", grid[0] * grid[1] * grid[2], got["peak_mb"],
          got["seconds"], n_params)
    t.notes.append("Built from the preset, loaded strictly from a checkpoint written in the public release layout "
                   "(random weights; RGB patch embedding adapted to one channel), then the embedding measured in a "
                   "fresh subprocess (second call; peak = resident memory the call adds on top of the loaded "
                   "weights; SDPA attention, no gradients).")
    return [t]


def _case_large_maisi(params, device):
    """The MAISI encode bundle's network at its defaults (the zoo autoencoder unless ``num_channels`` is given;
    stacks of 4, ``chunk_size`` stacks per call, no splitting, ``norm_float16`` off) encoding one
    ``[1, 1, frames, size, size]`` video, no gradients."""
    from oct_foundation.networks.maisi import StackedVideoVAE, build_maisi_autoencoder, maisi_autoencoder_config

    torch.manual_seed(0)
    ch = params.get("num_channels")
    ae = build_maisi_autoencoder(maisi_autoencoder_config(num_channels=list(ch) if ch else None))
    vae = StackedVideoVAE(autoencoder=ae, strategy="stack", stack_size=4,
                          chunk_size=int(params["chunk_size"])).to(device).eval()
    x = torch.rand(1, 1, int(params["frames"]), int(params["size"]), int(params["size"]), device=device)

    def run():
        with torch.no_grad():
            return vae.encode(x)

    return run


def bench_large_maisi(p: dict, device: str = "cpu", threads: int | None = None) -> list[Table]:
    """Peak memory and time of the MAISI encode bundle's network on one full-size stack video."""
    from oct_foundation.networks.maisi import maisi_autoencoder_config

    ch = list(p["num_channels"]) if p.get("num_channels") else maisi_autoencoder_config()["num_channels"]
    t = Table("MAISI encode at full size: one stack video, the encode bundle's network",
              ["autoencoder num_channels", "video (frames x H x W)", "chunk (stacks)", "latents", "peak (MiB)",
               "seconds", "frames/s"])
    got = measure_peak_memory("large_maisi", {**p, "num_channels": ch}, device=device, threads=threads,
                              timeout=3600, with_time=True)
    f, sz = int(p["frames"]), int(p["size"])
    t.add(str(ch), f"{f} x {sz} x {sz}", int(p["chunk_size"]), f"[1, 4, {f // 4}, {sz // 4}, {sz // 4}]",
          got["peak_mb"], got["seconds"], f / got["seconds"])
    t.notes.append("StackedVideoVAE (stack 4, the bundle's chunk size, no splitting, float32, norm_float16 off) "
                   "around AutoencoderKlMaisi with random weights, encoding a random video without gradients, in a "
                   "fresh subprocess (second call; peak = memory the call adds on top of the loaded weights).")
    return [t]


#: Cases a memory subprocess can build: name -> ``(params, device) -> work`` closure.
_CASES: dict[str, Callable[[dict, torch.device], Callable[[], Any]]] = {
    "jepa_ours": _case_jepa_ours,
    "jepa_hf": _case_jepa_hf,
    "jepa_ours_encoder": lambda params, device: _ours_encoder_step(params, device),
    "jepa_hf_encoder": lambda params, device: _hf_encoder_step(params, device),
    "maisi_wrapper": _case_maisi("wrapper"),
    "maisi_raw": _case_maisi("raw"),
    "maisi_file_stream": _case_maisi_file(True),
    "maisi_file_loaded": _case_maisi_file(False),
    "large_embed": _case_large_embed,
    "large_maisi": _case_large_maisi,
}


# ------------------------------------------------------------------------------------------------ driver
SECTIONS = ("jepa", "official", "compile", "maisi", "data", "large", "large_maisi")
#: sections run when none are named (``large`` builds a public-size encoder and ``large_maisi`` encodes a
#: 128 x 512 x 512 video with the zoo autoencoder: minutes to an hour on a CPU, ask for them; ``compile``
#: spends about a minute per variant compiling;
#: ``official`` needs a checkout of the official code, ``vjepa2_src``, and runs by default when one is given)
DEFAULT_SECTIONS = ("jepa", "maisi", "data")


def run_benchmarks(size: str = "default", device: str = "cpu", sections: Sequence[str] | None = None,
                   memory: bool = True, threads: int | None = None, progress: bool = True,
                   vjepa2_src: str | None = None) -> dict:
    """Run the chosen sections (default :data:`DEFAULT_SECTIONS`, plus ``official`` when ``vjepa2_src`` is
    given) at a preset of :data:`SIZES`; returns ``{"machine", "size", "tables", "seconds"}``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if sections is None:
        sections = DEFAULT_SECTIONS[:1] + (("official",) if vjepa2_src else ()) + DEFAULT_SECTIONS[1:]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown sections {bad}; choose from {SECTIONS}")
    if "official" in sections and not vjepa2_src:
        raise ValueError("section 'official' needs --vjepa2-src PATH, a local checkout of facebookresearch/vjepa2")
    if vjepa2_src:
        official_vjepa2_encoder_class(vjepa2_src)  # a wrong path fails now, not after the other sections
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if threads:
        torch.set_num_threads(int(threads))
    cfg = SIZES[size]
    w, r = cfg["warmup"], cfg["repeats"]
    tables: list[Table] = []
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else "n/a"
    t0 = time.perf_counter()
    seconds = {}
    for sec in sections:
        if progress:
            print(f"[benchmark] {sec} ({size}, {device}) ...", file=sys.stderr, flush=True)
        s0 = time.perf_counter()
        if sec == "jepa":
            tables += bench_jepa(cfg["jepa"], device, w, r, memory, threads=torch.get_num_threads())
        elif sec == "compile":
            tables += bench_compile(cfg["jepa"], device, w, r)
        elif sec == "official":
            tables += bench_official(cfg["jepa"], vjepa2_src, device, w, r)
        elif sec == "maisi":
            tables += bench_maisi(cfg["maisi"], device, w, r, memory, threads=torch.get_num_threads())
        elif sec == "large":
            tables += bench_large(cfg["large"], device, threads=torch.get_num_threads())
        elif sec == "large_maisi":
            tables += bench_large_maisi(cfg["large_maisi"], device, threads=torch.get_num_threads())
        else:
            tables += bench_data(cfg["data"], w, r)
        seconds[sec] = time.perf_counter() - s0
    seconds["total"] = time.perf_counter() - t0
    info = machine_info(device)
    info["load average (1 min) at start"] = load_start
    info["load average (1 min) at end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else "n/a"
    return {"machine": info, "size": size, "tables": tables, "seconds": seconds,
            "warmup": w, "repeats": r}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def summarize(tables: Sequence[Table]) -> list[str]:
    """One line per claim, computed from the tables (nothing is asserted that the tables do not show)."""
    by = {t.title: t for t in tables}
    out: list[str] = []
    for title, t in by.items():
        if title.startswith("JEPA training step"):
            rows = {(r[0], r[1]): r for r in t.rows}
            step = _num(rows.get(("ours VJEPA3D", "JEPA step"), [None] * 7)[6])
            enc = _num(rows.get(("ours VJEPA3D", "encoder fwd+bwd, all tokens"), [None] * 7)[6])
            if step is None:
                out.append("JEPA step vs Hugging Face: not measured (transformers not installed).")
            else:
                out.append(f"JEPA step: ours processes {step:.2f}x the tokens/s of the VJEPA2Model step on the same "
                           f"input and masks; encoder alone on all tokens (no masking advantage): {enc:.2f}x.")
                mo = _num(rows[("ours VJEPA3D", "JEPA step")][5])
                mh = _num(rows[("HF VJEPA2Model", "JEPA step")][5])
                if mo is not None and mh is not None and mh > 0:
                    out.append(f"JEPA step peak memory: ours {mo:.0f} MiB vs VJEPA2Model {mh:.0f} MiB "
                               f"({mo / mh:.2f}x).")
        elif title.startswith("JEPA step vs mask ratio"):
            ratios = [_num(v) for v in t.column("time ratio vs mask 0")]
            masks = t.column("mask ratio")
            falling = all(a is not None and b is not None and b <= a for a, b in zip(ratios, ratios[1:]))
            out.append("Mask ratio: step time relative to ratio 0 is "
                       + ", ".join(f"{m:g} -> {r:.2f}" for m, r in zip(masks, ratios))
                       + (" (falls monotonically as the context shrinks)." if falling
                          else " (NOT monotonic in this run)."))
        elif title.startswith("JEPA step: float32 vs bfloat16"):
            rows = {(r[0], r[1]): r for r in t.rows}
            own = _num(rows[("ours VJEPA3D", "bfloat16 autocast")][4])
            line = f"bfloat16 autocast JEPA step (ours) = {own:.2f}x the float32 step time " + (
                "(faster)" if own is not None and own < 1 else "(slower on this device)")
            vs16 = _num(rows[("ours VJEPA3D", "bfloat16 autocast")][5])
            vs32 = _num(rows[("ours VJEPA3D", "float32")][5])
            if vs16 is not None and vs32 is not None:
                line += (f"; at equal precision ours processes {vs16:.2f}x the tokens/s of the VJEPA2Model step in "
                         f"bfloat16 and {vs32:.2f}x in float32")
            out.append(line + ".")
        elif title.startswith("Attention kernel alone"):
            parts = [f"{r[0]} tokens {_num(r[3]):.2f}x" for r in t.rows if _num(r[3]) is not None]
            if parts:
                out.append("Attention kernel alone (fwd+bwd), bfloat16 time / float32 time: " + ", ".join(parts)
                           + ".")
        elif title.startswith("MAISI encode profile"):
            tot = [r for r in t.rows if r[0] == "total (profiled)"]
            top = max((r for r in t.rows if r[0] not in ("total (profiled)", "all other operators")),
                      key=lambda r: _num(r[1]) or 0.0, default=None)
            if tot and top is not None and _num(tot[0][1]):
                out.append(f"MAISI encode profile: {top[0]} takes {_num(top[1]) / _num(tot[0][1]):.0%} of the raw "
                           f"encode's self time; the wrapper's profiled total is {_num(tot[0][2]):.1f} ms against "
                           f"{_num(tot[0][1]):.1f} ms raw.")
        elif title.startswith("Public-size encoder"):
            for r in t.rows:
                if _num(r[3]) is not None:
                    out.append(f"Public-size encoder {r[0]} embedding a {r[1]} volume ({r[2]} tokens, bf16 autocast): "
                               f"peak {_num(r[3]):,.0f} MiB above the weights, {_num(r[4]):.1f} s.")
        elif title.startswith("MAISI encode at full size"):
            for r in t.rows:
                if _num(r[4]) is not None:
                    out.append(f"MAISI encode of a {r[1]} video (num_channels {r[0]}): peak {_num(r[4]):,.0f} MiB "
                               f"above the weights, {_num(r[6]):.1f} frames/s.")
        elif title.startswith("JEPA step: eager vs torch.compile"):
            parts = [f"{r[0]} {_num(r[5]):.2f}x (compiling {_num(r[2]):.0f} s)" for r in t.rows
                     if r[1] != "eager" and _num(r[5]) is not None]
            if parts:
                out.append("torch.compile of the JEPA step, tokens/s relative to eager: " + "; ".join(parts) + ".")
        elif title.startswith("Encoder forward + backward: ours vs the official"):
            parts = [f"{r[0]}, {r[1]}: {_num(r[5]):.2f}x" for r in t.rows if _num(r[5]) is not None]
            if parts:
                out.append("Encoder fwd+bwd against the official facebookresearch/vjepa2 VisionTransformer (same "
                           "weights), ours/official tokens/s: " + "; ".join(parts) + ".")
        elif title.startswith("MAISI encode: StackedVideoVAE"):
            ov = _num(t.rows[1][4])
            out.append(f"MAISI wrapper overhead over raw batched encode: {ov:+.1f}% "
                       + ("(within the 5% target)." if ov is not None and ov < 5 else "(above the 5% target)."))
        elif title.startswith("MAISI encode peak memory"):
            w = [_num(v) for v in t.column("StackedVideoVAE peak (MiB)")]
            r = [_num(v) for v in t.column("raw one-batch peak (MiB)")]
            tt = t.column("T (frames)")
            if all(v is not None for v in w + r) and w and w[0] > 0 and r[0] > 0:
                out.append(f"MAISI peak memory from T={tt[0]} to T={tt[-1]}: wrapper {w[0]:.0f} -> {w[-1]:.0f} MiB "
                           f"({w[-1] / w[0]:.2f}x), raw one-batch {r[0]:.0f} -> {r[-1]:.0f} MiB "
                           f"({r[-1] / r[0]:.2f}x).")
        elif title.startswith("Data path from files"):
            parts = []
            for fmt in dict.fromkeys(t.column("format")):
                rows = [r for r in t.rows if r[0] == fmt]
                k, f = [_num(r[2]) for r in rows], [_num(r[3]) for r in rows]
                chain = [_num(r[7]) for r in rows]
                if rows and all(v is not None for v in k + f + chain):
                    parts.append(f"{fmt} {k[0]:.3f} -> {k[-1]:.3f} s (all slices {f[0]:.3f} -> {f[-1]:.3f} s; "
                                 f"whole chain {chain[0]:.2f}x -> {chain[-1]:.2f}x of reading every slice)")
            if parts:
                d = t.column("d_target")
                out.append(f"Data path from files, reading only the kept slices, d_target {d[0]} -> {max(d)}: "
                           + "; ".join(parts) + ".")
        elif title.startswith("Data path"):
            d = t.column("d_target")
            ours = [_num(v) for v in t.column("subsample then resample (s)")]
            ratio = [_num(v) for v in t.column("ratio ours/baseline")]
            if all(v is not None for v in ours + ratio):
                out.append(f"Data path: from d_target {d[0]} to {d[-1]} the chain takes {ours[0]:.3f} -> "
                           f"{ours[-1]:.3f} s per volume ({ours[-1] / ours[0]:.1f}x); relative to resampling the "
                           f"full depth first: {ratio[0]:.2f}x -> {ratio[-1]:.2f}x.")
    return out


def render_markdown(report: dict, command: str) -> str:
    """The report as Markdown: command, machine, method, then every table."""
    m = report["machine"]
    lines = [
        "# Performance",
        "",
        "Measured ratios against a named baseline run in the same process on the same input. Absolute times "
        "depend on the machine (and on anything else it runs at the time); the ratios are the claims.",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        "| item | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    lines += [
        "",
        "## Method",
        "",
        f"- Timing: {report['warmup']} warm-up call(s), then the median of {report['repeats']} timed calls "
        "(`time.perf_counter`, CUDA synchronised); the variants of one table are timed round-robin, so outside "
        "load hits them alike; `torch.set_num_threads` as in the machine table.",
        "- Peak memory on CPU: a fresh Python subprocess per measurement builds the case, resets the peak-RSS "
        "mark (`/proc/self/clear_refs`) and reports the peak RSS (`VmHWM`, the `ru_maxrss` of its own address "
        "space; plain `ru_maxrss` would also carry the peak of the forked parent) after the work minus the "
        "resident size before it, on the second call (the first initialises kernels and the AdamW state), with "
        "glibc told to unmap freed blocks (`MALLOC_MMAP_THRESHOLD_=4096`) so that resident size follows live "
        "tensors. On CUDA: `torch.cuda.max_memory_allocated` minus the allocation before.",
        f"- Sizes: preset `{report['size']}` of `oct_foundation.experiments.benchmarks.SIZES`; wall time per section (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()) + ".",
        "",
        "## Summary (computed from the tables below)",
        "",
    ]
    lines += [f"- {line}" for line in summarize(report["tables"])]
    lines += [
        "",
        "## Results",
        "",
    ]
    for t in report["tables"]:
        lines += [t.to_markdown(), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark oct-foundation against named baselines.")
    parser.add_argument("--quick", action="store_true", help="CI-friendly sizes (about a minute on 2 CPU cores)")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="size preset (overrides --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--sections", default=None,
                        help="comma list of " + ",".join(SECTIONS) + " (default " + ",".join(DEFAULT_SECTIONS)
                        + ", and official when --vjepa2-src is given)")
    parser.add_argument("--vjepa2-src", default=None, metavar="PATH",
                        help="a local checkout of facebookresearch/vjepa2: adds the encoder comparison against the "
                             "official VisionTransformer (section official)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default=None, help="write the Markdown report here (atomically)")
    args = parser.parse_args(argv)
    size = args.size or ("quick" if args.quick else "default")
    sections = None if args.sections is None else [s for s in args.sections.split(",") if s]
    try:
        report = run_benchmarks(size, args.device, sections, not args.no_memory, args.threads,
                                vjepa2_src=args.vjepa2_src)
    except (ValueError, FileNotFoundError) as e:  # a bad option or path: a usage error, not a traceback
        parser.error(str(e))
    command = "python scripts/benchmark.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                               if (argv if argv is not None else sys.argv[1:]) else "")
    text = render_markdown(report, command.strip())
    if args.out:
        from oct_foundation.io import atomic_write

        atomic_write(args.out, text + "\n")
        print(f"[benchmark] wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0
