"""`python train.py` end to end, through the command line as a user runs it."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from lmlab.sweep_jobs import read_curve
from tests.conftest import FEW_TEST_WINDOWS, ROOT

FAST_ANY_CORPUS = [
    "model.n_layers=1", "model.n_heads=2", "model.d_model=32", "model.context_length=16",
    "data.batch_size=4", "data.val_windows=4", "trainer.max_steps=6", "trainer.val_check_interval=3",
    "module.warmup_steps=2", "sample.max_new_tokens=8", "trainer.precision=32-true",
]
FAST = [*FAST_ANY_CORPUS, FEW_TEST_WINDOWS]


def run(script, *overrides, cwd=ROOT, check=True, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    run_dir = tmp / "run"
    proc = run("train.py", *FAST, "trainer.log_every_n_steps=3", f"hydra.run.dir={run_dir}",
               f"paths.cache_dir={tmp / 'cache'}")
    return run_dir, proc


def test_train_prints_loss_perplexity_and_a_sample(trained):
    run_dir, proc = trained
    out = proc.stdout + proc.stderr
    assert "parameters" in out and "MFLOPs per token" in out
    assert "final validation loss" in out and "perplexity" in out
    assert "----- sample (prompt 'ROMEO:\\n') -----\nROMEO:" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert f"test loss {metrics['test_loss']:.4f}, perplexity {metrics['test_ppl']:.2f}" in out
    assert metrics["val_ppl"] == pytest.approx(2.718281828 ** metrics["val_loss"], rel=1e-6)
    assert (run_dir / "sample.txt").read_text().startswith("ROMEO:")
    # Lightning's lines once on the console (not also through its own handler), and in train.log
    assert out.count("`Trainer.fit` stopped: `max_steps=6` reached.") == 1
    assert "`Trainer.fit` stopped" in (run_dir / "train.log").read_text()
    # throughput: the run's MFU is one device's model FLOP/s over the CPU's measured matmul peak
    assert 0 < metrics["mfu"] < 1 and metrics["peak_flops"] > 1e9
    assert metrics["mfu"] == pytest.approx(
        metrics["tokens_per_s"] * metrics["flops_per_token"] / metrics["peak_flops"], rel=1e-9)
    assert f"MFU {metrics['mfu']:.1%}" in out and "(measured matmul)" in out
    # the progress bar's short labels, whole tokens/s and MFU in percent (the last step's)
    assert re.search(r"loss:\s+\d+\.\d{3}\s+tokens/s:\s+[\d,]+\s+MFU:\s+\d+\.\d%", out)
    assert 0.1 < metrics["peak_memory_gib"] < 16  # the process's resident peak while training
    assert f"peak memory {metrics['peak_memory_gib']:.2f} GiB (resident)" in out


def test_train_writes_checkpoints_and_csv_metrics_in_the_run_dir(trained):
    run_dir, _ = trained
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-step") for n in ckpts)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 6
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    vals = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    tps = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    mfu = [float(r["train/mfu"]) for r in rows if r.get("train/mfu")]
    assert len(vals) >= 2 and all(v > 0 for v in tps)
    assert len(mfu) == len(tps) and all(0 < v < 1 for v in mfu)
    assert vals[-1] < vals[0]  # it learns


@pytest.mark.slow  # a second run; resuming is tested by default in test_resume.py
def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    run("train.py", *FAST, "trainer.max_steps=8", "module.extend=true", f"ckpt_path={ckpt}",
        f"hydra.run.dir={tmp_path / 'r'}",
        f"paths.cache_dir={run_dir.parent / 'cache'}")
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    # 8 is not a multiple of val_check_interval=3: the last step is validated and saved all the same
    assert state["global_step"] == 8
    (step, loss), = read_curve(tmp_path / "r")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert step == 8 and metrics["final_val_loss"] == pytest.approx(loss, abs=1e-6)
    assert ckpt.read_bytes() == before  # the resumed run wrote its own files, not over ours


def test_generate_and_evaluate_from_the_checkpoint(trained, tmp_path):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    gen = run("generate.py", f"ckpt_path={ckpt}", "prompt=JULIET:", "max_new_tokens=5",
              "temperature=0", f"hydra.run.dir={tmp_path / 'g'}")
    assert "JULIET:" in gen.stdout and (tmp_path / "g" / "samples.txt").exists()
    # compiled decoding of a checkpoint trained without it: the same greedy text
    compiled = run("generate.py", f"ckpt_path={ckpt}", "prompt=JULIET:", "max_new_tokens=5",
                   "temperature=0", "compile=true", f"hydra.run.dir={tmp_path / 'c'}")
    assert compiled.stdout == gen.stdout
    batch = run("generate.py", f"ckpt_path={ckpt}", "prompts=['JULIET:','ROMEO:']", "num_samples=2",
                "max_new_tokens=5", "stop=['\\n\\n']", f"hydra.run.dir={tmp_path / 'b'}")
    assert "sample 4/4 -----\nROMEO:" in batch.stdout and "sample 1/4 -----\nJULIET:" in batch.stdout
    ev = run("evaluate.py", f"ckpt_path={ckpt}", "data.val_windows=4", "extrapolate=[1,2]",
             f"paths.cache_dir={run_dir.parent / 'cache'}", f"hydra.run.dir={tmp_path / 'e'}")
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["split"] == "test" and result["windows"] == 4 and result["loss"] > 0
    assert f"test loss {result['loss']:.4f}" in ev.stdout
    # the default model's RoPE scores past the trained context (a learned table: n/a, in
    # test_extrapolation)
    assert [r["length"] for r in result["extrapolation"]] == [16, 32]
    assert all(r["loss"] > 0 for r in result["extrapolation"])

    # your own text file: all of it is scored, not its last 10%
    text = tmp_path / "mine.txt"
    text.write_text("".join(f"Line {i} of a small corpus of my own.\n" for i in range(200)))
    run("evaluate.py", f"ckpt_path={ckpt}", "data=text", f"data.path={text}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'f'}")
    result = json.loads((tmp_path / "f" / "eval.json").read_text())
    from lmlab.data.tokenizer import get_tokenizer

    n_tokens = len(get_tokenizer("gpt2").encode_ordinary(text.read_text())) + 1  # + end of text
    assert result["split"] == "all" and result["tokens"] == n_tokens
    assert result["windows"] == (n_tokens - 16 - 1) // 16 + 1  # every window of 16 targets


def test_unknown_model_names_the_valid_options(tmp_path):
    proc = run("train.py", "model=nonexistent", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lmlab: error: model: unknown 'nonexistent'; valid choices: gpt2, llama, mixtral, tiny, tiny_llama"]


def test_unknown_config_key_names_the_valid_keys(tmp_path):
    proc = run("train.py", "model=llama", "model.n_layer=3", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmlab: error: unknown config key 'model.n_layer'")
    assert "did you mean 'model.n_layers'?" in err[0] and "norm_placement" in err[0]
    nested = run("train.py", "model/attention=gqa", "model.attention.windw=8", check=False)
    assert "did you mean 'model.attention.window'?" in nested.stderr


def test_missing_text_file_is_one_line_before_any_model(tmp_path):
    proc = run("train.py", "data=text", "data.path=/missing/file", f"hydra.run.dir={tmp_path}",
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "lmlab: error: data.path: no such file: /missing/file"
    assert "parameters" not in proc.stdout + proc.stderr  # the model was never built


def test_train_on_your_own_text_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 300)
    run("train.py", *FAST, "data=text", f"data.path={text}", f"hydra.run.dir={tmp_path / 'r'}",
        f"paths.cache_dir={tmp_path / 'cache'}", "sample.prompt=The")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["val_loss"] < 10.8


@pytest.mark.slow  # ~10 s; debug=fast_dev_run's own record
def test_fast_dev_run_is_recorded_as_completed_and_leaves_no_checkpoint(tmp_path, cache_dir):
    """debug=fast_dev_run, one batch of each loop: its record stayed 'running' and Lightning
    still wrote checkpoints/last.ckpt, so running it again in place was refused as an unresumed run."""
    argv = [*FAST, "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'r'}", f"paths.cache_dir={cache_dir}"]
    run("train.py", *argv)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "completed"
    assert not list((tmp_path / "r").glob("checkpoints/*"))


# DDP: tests/test_ddp.py


@pytest.mark.slow  # every window of the test play at 3 lengths, ~35 s
def test_rescore_a_finished_sweep_at_several_lengths(trained, tmp_path):
    """python -m lmlab.rescore: the best checkpoint of each completed job, every window of the
    test play at each length, stored in the job's metrics.json for the report."""
    import shutil

    run_dir, _ = trained
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "0")
    proc = subprocess.run([sys.executable, "-m", "lmlab.rescore", str(sweep), "--extrapolate", "1,2",
                           "--cache-dir", str(run_dir.parent / "cache")], cwd=ROOT, text=True,
                          capture_output=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ex = json.loads((sweep / "0" / "metrics.json").read_text())["extrapolation"]
    assert ex["split"] == "test" and ex["context_length"] == 16
    one, two = ex["extrapolation"]
    assert one["length"] == 16 and one["loss"] > 0 and one["windows"] == (30361 - 17) // 16 + 1
    assert two["length"] == 32 and two["loss"] > 0  # RoPE: past the trained context
    assert "job 0: test loss" in proc.stdout
