"""The benchmark sections run and print their comparisons (no timings are asserted)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TINY_MODEL = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2"]


def benchmark(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "scripts/benchmark.py", "--threads", "1", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow  # ~30-60 s each on 2 busy cores
def test_train_section_compares_lmlab_with_the_textbook_loop():
    out = benchmark("train", *TINY_MODEL, "model.context_length=16", "--repeats", "1")
    assert out.startswith("machine: ") and "fp32 textbook / lmlab:" in out and "MFU" in out
    assert "fp32 textbook alone " in out and "textbook alone / lmlab:" in out  # its own process


@pytest.mark.slow  # ~11 s
def test_gpu_section_runs_its_step_on_a_cpu_and_reports_tokens_and_mfu():
    """The GPU section (GPT-2 124M, bf16, compiled) on a CPU at a tiny size and eager: the same
    code a GPU runs, minus the device."""
    out = benchmark("gpu", "--device", "cpu", *TINY_MODEL, "model.context_length=16", "--batch", "2",
                    "--steps", "2", "--warmup", "1", "--no-compile", "--matmul-n", "128", "--profile", "1")
    assert out.startswith("machine: ") and "batch 2 x 16 tokens, bf16 autocast, eager" in out
    assert "  lmlab " in out and "  textbook " in out and "lmlab / textbook: " in out
    assert " tokens/s " in out and "bf16 matmul timed here" in out
    assert "profile of 1 steps" in out and "aten::mm" in out  # the profiler's table of ops
    assert "no data-sheet peak known for 'cpu'" in out


@pytest.mark.slow  # ~11 s
def test_recompute_section_prints_time_and_memory_against_the_plain_step():
    out = benchmark("recompute", *TINY_MODEL, "model.context_length=16", "--repeats", "1")
    assert out.startswith("machine: ") and "fp32 plain " in out and "fp32 checkpointed " in out
    ratio = re.search(r"fp32 checkpointed / plain: step time [\d.]+x, blocks' memory ([\d.]+)x", out)
    assert ratio and float(ratio.group(1)) < 0.5, out  # a memory figure, not a timing


@pytest.mark.parametrize("script, argv, message", [
    ("benchmark.py", ["train", "model=nope"],
     "error: model: unknown 'nope'; valid choices: gpt2, llama, mixtral, tiny, tiny_llama"),
    ("benchmark.py", ["train", "model.n_layer=3"], "error: unknown config key 'model.n_layer'"),
    ("recipe_vs_textbook.py", ["--recipe-run", "{tmp}/none"], "error: --recipe-run {tmp}/none: no metrics.json there"),
    ("recipe_vs_textbook.py", ["--lrs", "1e-3,x"], "error: argument --lrs: '1e-3,x': must be floats > 0"),
    ("recipe_vs_textbook.py", ["--batches", "0"], "error: argument --batches: '0': must be ints > 0"),
    ("benchmark.py", ["moe", "--repeats", "0"], "moe: error: argument --repeats: '0': must be an integer >= 1"),
    ("benchmark.py", ["moe", "--top-k", "9"], "moe: error: argument --top-k: 9 is more than --experts 8"),
    ("benchmark.py", ["moe", "--threads", "0"], "moe: error: argument --threads: '0': must be an integer >= 1"),
    ("benchmark.py", ["generate", "--batch", "-1"], "error: argument --batch: '-1': must be an integer >= 1"),
])
def test_bad_arguments_are_refused_in_one_line(script, argv, message, tmp_path):
    """A bad override or option: one error line, no traceback, before anything is timed or trained."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, f"scripts/{script}", *(a.format(tmp=tmp_path) for a in argv)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message.format(tmp=tmp_path) in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    assert "ms/step" not in out.stdout


@pytest.mark.slow
def test_generate_section_compares_cache_recompute_and_transformers():
    out = benchmark("generate", *TINY_MODEL, "--new-tokens", "8", "--repeats", "1")
    assert "machine: " in out and "cached / recompute = " in out and "lmlab / transformers = " in out
    assert "KV cache compiled" in out and ", compiled " in out and "recompute / floor = " in out
    assert "the compiled step reads fp16 copies of the weights" in out  # batch 1 on CPU
    assert "the same, fp32 weights" in out and "the fp16 copies " in out


@pytest.mark.slow  # a real train.py run, then the textbook loop for as long
def test_recipe_vs_textbook_runs_both_at_equal_wall_clock(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LMLAB_ROOT": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "scripts/recipe_vs_textbook.py", *TINY_MODEL, "model.context_length=16",
         "trainer.max_steps=6", "module.warmup_steps=1", "trainer.val_check_interval=3",
         "trainer.log_every_n_steps=1", "data.val_windows=4", "data.test_windows=4", "--lrs", "1e-3",
         "--batches", "4", "--out", str(tmp_path / "out.json"), "--plot", str(tmp_path / "curves.png")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["recipe"]["steps"] == 6 and result["seconds"] > 0
    arm = result["textbook"][0]
    assert arm["steps"] >= 1 and math.isfinite(arm["val_loss"]) and math.isfinite(arm["test_loss"])
    assert "recipe better by" in out.stdout
    # the plot's curves: the recipe's six logged losses spread over its seconds, ending at them;
    # the textbook's one point a step, in time order
    recipe_times = [t for t, _ in result["recipe"]["curve"]]
    assert len(recipe_times) == 6 and recipe_times[-1] == pytest.approx(result["seconds"])
    times = [t for t, _ in arm["curve"]]
    assert len(times) == arm["steps"] and times == sorted(times)
    assert (tmp_path / "curves.png").stat().st_size > 1000
