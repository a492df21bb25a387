"""Real multi-process DDP over gloo through `python train.py`, compared with one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, compose_cfg
from tests.test_resume import checkpoint_step, logged
from tests.test_sweep import wandb_records
from tests.test_train_cli import FAST, run

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
STEPS = ["trainer.log_every_n_steps=1", "sample.max_new_tokens=0"]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """2 ranks x 2 windows = 1 process x 4 windows, window for window (see window_stream), so the
    losses agree up to float summation order: DDP averages two half-batch gradients. 5 validation
    windows: the ranks score 3 and 2 (Lightning's sampler repeated one to give each rank 3). The
    two ranks also checkpoint their activations (recomputed in backward, the same gradients)."""
    cache = tmp_path / "cache"
    run("train.py", *FAST, *STEPS, "data.batch_size=4", "data.val_windows=5",
        f"hydra.run.dir={tmp_path / 'one'}", f"paths.cache_dir={cache}")
    proc = run("train.py", *FAST, *STEPS, *DDP, "data.batch_size=2", "data.val_windows=5",
               "model.activation_checkpointing=true",
               f"hydra.run.dir={tmp_path / 'two'}",
               f"paths.cache_dir={cache}", "logger=many", timeout=400)  # CSV and W&B (offline)
    assert len(list((tmp_path / "two" / "wandb").glob("offline-run-*"))) == 1  # rank 0's W&B run
    assert "sync_dist" not in proc.stderr  # held-out losses are synced by torchmetrics, and logged so
    one, two = logged(tmp_path / "one", "train/loss"), logged(tmp_path / "two", "train/loss")
    assert sorted(one) == sorted(two) == list(range(6))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5)
    assert logged(tmp_path / "two", "val/loss") == pytest.approx(logged(tmp_path / "one", "val/loss"),
                                                                 rel=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    alone = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-5)  # every test window once
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    a, b = metrics["param_checksums"]
    assert a == b  # the replicas stayed identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "one", "two"]  # one run dir each
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6
    assert state["TokenDataModule"] == {"train_batches": 6}  # the data position, for resuming


@pytest.mark.slow  # two DDP processes, ~30 s on 2 cores
def test_moe_under_ddp_with_experts_idle_on_a_rank(tmp_path):
    """16 tokens per rank, 32 experts, top-1: at least 16 experts get no token on each rank;
    they still take part in the backward pass (with zero gradients), so DDP's reducer finishes."""
    run("train.py", *FAST, *STEPS, *DDP, "model/ffn=moe", "model.ffn.n_experts=32",
        "model.ffn.top_k=1", "data.batch_size=1", f"hydra.run.dir={tmp_path / 'r'}",
        f"paths.cache_dir={tmp_path / 'cache'}", timeout=400)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["val_loss"] < 10.9
    a, b = metrics["param_checksums"]
    assert a == b


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_in_its_own_directory(tmp_path):
    """`-m` + DDP: each job runs as a single run (lmlab.multirun_ddp); no hang, no stray dirs. Its
    W&B run (rank 0's, the only one) is named, grouped and tagged as a sweep's job without DDP
    is, not as the single run the child is (all its overrides, no job number, no group)."""
    sweep = tmp_path / "sweep"
    run("train.py", "-m", *FAST, *STEPS, *DDP, "model/attention=choice(mha)", "seed=0,1",
        "logger=wandb", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}",
        timeout=500)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert len(list(sweep.rglob("offline-run-*"))) == 2  # one W&B run per job, in its directory
    losses = []
    for job in ("0", "1"):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "completed" and record["world_size"] == 2
        assert record["max_time"] is None  # a sweep's arm, not a single run: no 8:45 limit
        assert record["variant"] == ["model/attention=mha", f"seed={job}"]
        losses.append(logged(sweep / job, "train/loss")[0])
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        (wb,) = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
        assert wb.display_name == f"{job}:model/attention=mha,seed={job}"  # job number: variant
        assert wb.run_group == f"{tmp_path.name}/sweep"  # the sweep directory's last two parts
        assert list(wb.tags) == ["model/attention=mha"]  # the variant but the seed
    assert losses[0] != losses[1]  # two seeds, two runs


def test_a_ddp_jobs_child_run_takes_the_jobs_wandb_identity(tmp_path, monkeypatch):
    """-m + DDP: the job passes its W&B identity to its child, a single run that would be named by
    all its overrides, in the child's environment only; a group the config sets stays its own, and
    a sweep's job ignores an identity passed down. (The slow test above runs the whole path.)"""
    from lmlab import loggers, multirun_ddp

    job = {"multirun": True, "overrides": ["a=1", "b=2", "seed=3"], "variant": ["a=1", "seed=3"],
           "job_num": 5, "sweep_dir": str(tmp_path / "day" / "time")}
    cfg = compose_cfg(["logger=wandb", "logger.wandb.group=mine", f"paths.output_dir={tmp_path}"])
    env = multirun_ddp.child_env(job, cfg)
    assert loggers.JOB_IDENTITY_ENV not in os.environ  # the sweep's next job names itself

    def identity(run_job):
        (wl,) = [lg for lg in loggers.make_loggers(cfg, run_job) if hasattr(lg, "_wandb_init")]
        return [wl._wandb_init[k] for k in ("name", "group", "tags")]

    assert identity({})[0] != "5:a=1,seed=3"  # a single run (its job: {} in a test) names itself
    monkeypatch.setenv(loggers.JOB_IDENTITY_ENV, env[loggers.JOB_IDENTITY_ENV])  # as the child
    assert identity({}) == ["5:a=1,seed=3", "mine", ["a=1"]]
    assert identity({**job, "job_num": 6})[0] == "6:a=1,seed=3"  # a sweep's job: its own


@pytest.mark.slow
def test_a_failed_ddp_job_of_a_sweep_keeps_its_own_error(tmp_path):
    """-m + DDP runs the job as a child run; the job's record keeps the child's own error (the
    sweep's process overwrote it with 'the job's run exited with status 1')."""
    sweep = tmp_path / "sweep"
    run("train.py", "-m", *FAST, *STEPS, *DDP, "module.lr=1e9", f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}", timeout=500)
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("Diverged: "), record["error"]


def processes_naming(text: str) -> list[int]:
    """The pids of this machine's processes whose command line holds ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue  # ended meanwhile
    return pids


def start_and_signal(tmp_path, run_dir, sig, *overrides) -> int:
    """Start `python train.py` with ``overrides`` (``-m`` first) and DDP in a process group of its own (as in a
    terminal), wait for ``run_dir``'s checkpoint at step 2, send ``sig`` (SIGINT as a Ctrl-C,
    to the group; SIGTERM as `kill` does, to the process); its exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, *FAST, *STEPS, *DDP,
                             "trainer.max_steps=3000", "trainer.val_check_interval=2",
                             f"paths.cache_dir={tmp_path / 'cache'}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last, deadline = run_dir / "checkpoints" / "last.ckpt", time.time() + 300
    while checkpoint_step(last) < 2:
        assert proc.poll() is None and time.time() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.mark.slow  # a DDP sweep started and stopped, ~30 s each
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_a_ddp_sweep_stops_its_jobs_run_and_records_it(tmp_path, sig):
    """SIGTERM from `kill` (or `timeout`) reaches the sweep's process only: it passes it on to the
    job's child run as a Ctrl-C; Ctrl-C reaches the whole process group. Either way the child
    stops with its checkpoints and the sweep's process waits for it; the job is recorded
    as interrupted with the sweep's overrides, and the sweep stops and exits 128 + the signal.
    Before, on SIGTERM the sweep's process died at once and its child went on training alone;
    after a Ctrl-C it killed the child 0.25 s later; the record kept the child's overrides."""
    sweep = tmp_path / "sweep"
    assert start_and_signal(tmp_path, sweep / "0", sig, "-m", "seed=0,1", f"hydra.sweep.dir={sweep}") == 128 + sig
    assert processes_naming(str(sweep)) == []  # the child run and its ranks ended with it
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {sig.name}"
    assert record["variant"] == ["seed=0"] and "seed=0" in record["overrides"]
    assert "trainer.max_time=null" not in record["overrides"]  # the child's own (child_overrides)
    assert 2 <= checkpoint_step(sweep / "0" / "checkpoints" / "last.ckpt") < 3000  # stopped early
    assert not (sweep / "1").exists()  # the sweep stopped: its next job never started


@pytest.mark.slow  # ~25 s
def test_sigterm_stops_a_ddp_run_as_a_ctrl_c_does(tmp_path):
    """SIGTERM to a DDP run's first rank: it stops as on a Ctrl-C (lmlab.interrupts), its other
    rank with it, recorded as interrupted by SIGTERM, exit 143. With Lightning's own SIGTERM
    handling 1 of 4 such runs here ended in a gloo 'Connection reset by peer', recorded failed."""
    run_dir = tmp_path / "r"
    assert start_and_signal(tmp_path, run_dir, signal.SIGTERM, f"hydra.run.dir={run_dir}") == 143
    assert processes_naming(str(run_dir)) == []
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "interrupted by SIGTERM"
    assert 2 <= checkpoint_step(run_dir / "checkpoints" / "last.ckpt") < 3000
