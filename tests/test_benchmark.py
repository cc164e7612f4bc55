"""The benchmark code runs at the tiniest sizes and produces complete, finite tables (no timed assertions)."""
import math
import sys
from pathlib import Path

import pytest
import torch

from oct_foundation.experiments import benchmarks as B

TINY = B.SIZES["tiny"]


def _numbers(table: B.Table) -> list[float]:
    return [c for row in table.rows for c in row if isinstance(c, (int, float)) and not isinstance(c, bool)]


def _check_complete(table: B.Table, allow_text=()) -> None:
    assert table.rows, table.title
    for row in table.rows:
        assert len(row) == len(table.columns), table.title
        for cell in row:
            assert cell is not None and cell != "", table.title
            if isinstance(cell, str):
                assert cell in allow_text or not cell.replace(".", "").isdigit(), (table.title, cell)
    assert all(math.isfinite(v) for v in _numbers(table)), table.title
    md = table.to_markdown()
    assert md.count("\n|") == len(table.rows) + 2  # header separator + rows (the header is the first "| " line)


def test_jepa_tables_complete_and_consistent():
    p = TINY["jepa"]
    tables = B.bench_jepa(p, warmup=0, repeats=1, memory=False, ratios=(0.0, 0.5, 0.9))
    assert [t.title.split(":")[0] for t in tables] == ["JEPA training step", "JEPA step vs mask ratio (ours)",
                                                       "Attention kernel alone", "JEPA step"]
    vs_hf, sweep, kernel, prec = tables
    for t in tables:
        _check_complete(t, allow_text=("not measured",))
    n = math.prod(B._grid(p))
    # the HF baseline and ours: rows for both steps, ratios positive, ours runs on fewer context tokens
    assert vs_hf.column("implementation") == ["HF VJEPA2Model", "ours VJEPA3D"] * 2
    ctx = vs_hf.column("context tokens")
    assert ctx[0] == n and 0 < ctx[1] < n and ctx[2] == ctx[3] == n
    assert all(r > 0 for r in vs_hf.column("ratio ours/HF (tokens/s)"))
    # the sweep shrinks the context as the ratio grows and is relative to ratio 0
    assert sweep.column("context tokens") == [n, n - round(0.5 * n), n - round(0.9 * n)]
    assert sweep.column("time ratio vs mask 0")[0] == 1.0
    # the attention kernel at the step's context length, all tokens and four times that
    assert kernel.column("sequence length") == sorted({ctx[1], n, 4 * n})
    assert any(line.startswith("Attention kernel alone") for line in B.summarize(tables))
    assert prec.column("implementation") == ["HF VJEPA2Model"] * 2 + ["ours VJEPA3D"] * 2
    assert prec.column("precision") == ["float32", "bfloat16 autocast"] * 2
    assert prec.column("time ratio vs own float32")[0::2] == [1.0, 1.0]
    assert all(r > 0 for r in prec.column("ratio ours/HF at equal precision (tokens/s)"))


def test_jepa_without_transformers_still_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    assert not B._hf_available()
    tables = B.bench_jepa(TINY["jepa"], warmup=0, repeats=1, memory=False, ratios=(0.0, 0.5))
    vs_hf = tables[0]
    hf_rows = [r for r in vs_hf.rows if r[0].startswith("HF")]
    assert hf_rows and all(B.NOT_INSTALLED in r for r in hf_rows)
    ours = [r for r in vs_hf.rows if r[0].startswith("ours")]
    assert all(isinstance(r[3], float) and math.isfinite(r[3]) for r in ours)
    assert len(tables) == 4


def test_same_step_same_masks_for_both_models():
    """Both steps train: the loss of each implementation falls over a few steps on a fixed input."""
    p = TINY["jepa"]
    dev = torch.device("cpu")
    for make in (B._ours_step, B._hf_step):
        step = make(p, dev)
        losses = [step() for _ in range(4)]
        assert all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0], (make.__name__, losses)


def test_maisi_and_data_tables_and_memory_probe():
    m = TINY["maisi"]
    tables = B.bench_maisi(m, warmup=0, repeats=1, memory=False)  # the probe has its own test below
    enc, prof, mem, video = tables
    _check_complete(enc)
    _check_complete(prof)
    # the profile: the top operators, then the rest and the total, whose columns add up
    names = prof.column("operator")
    assert names[-2:] == ["all other operators", "total (profiled)"] and any("conv" in op for op in names)
    for col in ("raw (ms per call)", "StackedVideoVAE (ms per call)"):
        vals = prof.column(col)
        assert math.isclose(sum(vals[:-1]), vals[-1], rel_tol=1e-6) and vals[-1] > 0
    _check_complete(mem, allow_text=("not measured",))
    _check_complete(video, allow_text=("not measured",))
    assert video.column("T (frames)") == list(m["memory_frames"])
    # the wrapper computes the same latents as the raw batched call (note written from the comparison)
    assert "max |wrapper - raw| = 0.00e+00" in enc.notes[1] or "e-0" in enc.notes[1].split("=")[1]
    assert mem.column("T (frames)") == list(m["memory_frames"])

    data, files = B.bench_data(TINY["data"], warmup=0, repeats=1)
    _check_complete(data)
    assert data.column("d_target") == list(TINY["data"]["d_targets"])
    assert [s for s in data.column("output shape")] == [f"(1, {d}, 8, 8)" for d in TINY["data"]["d_targets"]]
    # from files: every format with partial reading, each d_target, kept slices against the read-all baseline
    _check_complete(files)
    d_targets = list(TINY["data"]["d_targets"])
    assert files.column("format") == [f for f in B.DATA_FORMATS for _ in d_targets]
    assert files.column("d_target") == d_targets * len(B.DATA_FORMATS)
    assert files.column("output shape") == [f"(1, {d}, 8, 8)" for d in d_targets] * len(B.DATA_FORMATS)
    assert all(r > 0 for r in files.column("read ratio kept/all") + files.column("chain ratio kept/all"))
    assert any(line.startswith("Data path from files") for line in B.summarize([data, files]))


def test_peak_memory_probe_sees_an_allocation():
    """The subprocess probe reports more memory for a larger raw MAISI batch (real measurement, not a constant)."""
    m = {**TINY["maisi"], "batch": 1, "size": 32}
    small = B.measure_peak_memory("maisi_raw", {**m, "frames": 8})
    large = B.measure_peak_memory("maisi_raw", {**m, "frames": 256})
    assert 0 <= small < large


def test_streamed_video_file_memory_stays_below_loading_it_whole():
    """A long video file encoded streamed costs less than loaded whole, and the gap grows with T (measured)."""
    m = {**TINY["maisi"], "batch": 1, "size": 32, "frames": 1024}
    streamed = B.measure_peak_memory("maisi_file_stream", m)
    loaded = B.measure_peak_memory("maisi_file_loaded", m)
    assert 0 <= streamed < loaded


def test_cli_writes_markdown_with_command_and_machine(tmp_path):
    out = tmp_path / "perf.md"
    assert B.main(["--size", "tiny", "--sections", "data", "--no-memory", "--out", str(out)]) == 0
    text = out.read_text()
    assert "python scripts/benchmark.py --size tiny --sections data --no-memory --out" in text
    for key in ("cpu_count", "torch_threads", "| torch |", "Data path", "## Summary", "- Data path: from d_target"):
        assert key in text
    with pytest.raises(ValueError, match="sections"):
        B.run_benchmarks("tiny", sections=["nope"])


def test_large_section_loads_a_public_layout_file_and_embeds():
    (t,) = B.bench_large(TINY["large"], threads=1)
    _check_complete(t)
    (row,) = t.rows
    assert row[0] == TINY["large"]["preset"] and row[2] == 16 and row[3] >= 0 and row[4] > 0


#: a stand-in for a checkout of facebookresearch/vjepa2: the official constructor and mask interface (a list of
#: kept-index tensors) around this package's encoder, importing timm's ``drop_path`` as the official module does
_STAND_IN = """
from timm.models.layers import drop_path  # noqa: F401  (the official modules.py imports it)
from oct_foundation.networks import VisionTransformer3D


class VisionTransformer(VisionTransformer3D):
    def __init__(self, img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim, depth, num_heads,
                 use_rope, use_sdpa):
        super().__init__(in_chans=in_chans, img_size=(num_frames, *img_size), patch_size=patch_size,
                         tubelet_size=tubelet_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         pos_embed="rope" if use_rope else "sincos", use_sdpa=use_sdpa)

    def forward(self, x, masks=None):
        assert masks is None or isinstance(masks, list)
        return super().forward(x, None if masks is None else masks[0])
"""


def test_official_section_through_the_cli(tmp_path):
    import subprocess

    src = tmp_path / "vjepa2"
    (src / "src" / "models").mkdir(parents=True)
    (src / "src" / "models" / "vision_transformer.py").write_text(_STAND_IN)
    out = tmp_path / "perf.md"
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py")
    cmd = [sys.executable, script, "--size", "tiny", "--sections", "official", "--no-memory",
           "--vjepa2-src", str(src), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "ours vs the official facebookresearch/vjepa2 VisionTransformer" in text
    assert "not a git checkout" in text and "Encoder fwd+bwd against the official" in text
    # same weights loaded strictly into the stand-in: the outputs agree exactly
    assert "max |official - ours| of the output tokens 0.0e+00 on all tokens, 0.0e+00 on the kept ones" in text
    rows = [line for line in text.splitlines() if line.startswith(("| float32 |", "| bfloat16 autocast |"))]
    assert len(rows) == 4


def test_official_section_needs_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        B.main(["--size", "tiny", "--sections", "data", "--vjepa2-src", str(tmp_path / "nope")])
    assert "no src/models/vision_transformer.py" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs --vjepa2-src"):
        B.run_benchmarks("tiny", sections=["official"])
    with pytest.raises(FileNotFoundError, match="no src/models/vision_transformer.py"):
        B.run_benchmarks("tiny", sections=["data"], vjepa2_src=str(tmp_path))


def test_large_maisi_section_encodes_one_video_in_a_subprocess():
    (t,) = B.bench_large_maisi(TINY["large_maisi"], threads=1)
    _check_complete(t)
    (row,) = t.rows
    f, s = TINY["large_maisi"]["frames"], TINY["large_maisi"]["size"]
    assert row[1] == f"{f} x {s} x {s}" and row[3] == f"[1, 4, {f // 4}, {s // 4}, {s // 4}]"
    assert row[4] >= 0 and row[5] > 0
    assert any(line.startswith("MAISI encode of a") for line in B.summarize([t]))


@pytest.mark.slow  # inductor compiles C++ on the CPU: a minute or more per variant on 2 cores
def test_compile_section_compares_eager_and_compiled_steps():
    (t,) = B.bench_compile(TINY["jepa"], warmup=0, repeats=1)
    _check_complete(t)
    assert t.column("precision") == ["float32"] * 2 + ["bfloat16 autocast"] * 2
    losses = t.column("first loss")
    assert math.isclose(losses[0], losses[1], rel_tol=1e-4)  # same weights and batch: same loss to rounding
    assert math.isclose(losses[2], losses[3], rel_tol=2e-2)
    assert any(line.startswith("torch.compile of the JEPA step") for line in B.summarize([t]))
