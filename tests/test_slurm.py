"""SLURM pre-emption: SIGUSR1 to a training process under SLURM makes Lightning's SLURMEnvironment
save an HPC checkpoint and call `scontrol requeue <job id>`; the requeued job, started again in
the same run directory, resumes from that checkpoint by itself."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT
from tests.test_resume import RESUMABLE, STEPS, checkpoint_step, logged, train_time

# A stand-in for SLURM's scontrol: it records its arguments, then ends the job as a requeue does.
SCONTROL = """#!/bin/sh
echo "$@" >> "{log}"
kill -9 $PPID
"""


def slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(SCONTROL.format(log=tmp_path / "scontrol.log"))
    scontrol.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lmlab-train",
            "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def test_preemption_signal_saves_requeues_and_the_requeued_job_resumes(uninterrupted, tmp_path):
    env, run_dir = slurm_env(tmp_path), tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *RESUMABLE, f"hydra.run.dir={run_dir}",
           f"paths.cache_dir={uninterrupted[1]}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while checkpoint_step(run_dir / "checkpoints" / "last.ckpt") < 20:  # training is under way
        assert proc.poll() is None and time.time() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == -signal.SIGKILL  # ended by the (stand-in) requeue
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    saved_at = torch.load(hpc, weights_only=True, map_location="cpu")["global_step"]
    assert 20 <= saved_at < STEPS
    before = train_time(hpc)  # the first session's training time, up to the HPC checkpoint

    # SLURM starts the requeued job with the same command, environment and run directory
    t0 = time.perf_counter()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr[-3000:]
    # the record's training time is both sessions': the first's to its checkpoint, and the second's
    assert 0 < before < json.loads((run_dir / "metrics.json").read_text())["train_time_s"] <= before + wall
    out = again.stdout + again.stderr + (run_dir / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {hpc}" in out  # went on from the checkpoint
    # exactly (saved between two steps), and the run's csv/metrics.csv keeps the steps before it
    # but one: the loss of the step at whose end the checkpoint was taken is logged after it
    full = logged(uninterrupted[0], "train/loss")
    assert logged(run_dir, "train/loss") == {s: v for s, v in full.items() if s != saved_at - 1}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS


@pytest.mark.slow
def test_a_requeued_job_without_hpc_checkpoint_resumes_from_last(uninterrupted, tmp_path):
    """Killed outright (no grace signal, or requeued by submitit): the requeued job
    (SLURM_RESTART_COUNT=1) finds checkpoints/last.ckpt in its run directory and goes on."""
    env, run_dir = slurm_env(tmp_path), tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *RESUMABLE, f"hydra.run.dir={run_dir}",
           f"paths.cache_dir={uninterrupted[1]}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while checkpoint_step(run_dir / "checkpoints" / "last.ckpt") < 20:
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    saved_at = checkpoint_step(run_dir / "checkpoints" / "last.ckpt")
    again = subprocess.run(cmd, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in (run_dir / "train.log").read_text()
    assert saved_at >= 20  # went on from there, exactly, and csv/metrics.csv kept the steps before
    assert logged(run_dir, "train/loss") == logged(uninterrupted[0], "train/loss")


def test_a_requeued_job_resumes_from_its_newest_checkpoint(tmp_path, monkeypatch):
    """A job pre-empted once (hpc_ckpt_1.ckpt), resumed, then killed outright after writing a
    later last.ckpt: its next requeue resumes from last.ckpt. (Lightning loads its HPC checkpoint
    by itself whenever one is there: the job went back to the pre-emption's step at every requeue.)"""
    from lmlab.resume import requeued_checkpoint

    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_RESTART_COUNT"):
        monkeypatch.setenv(key, slurm_env(tmp_path).get(key, "2"))
    hpc, last = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    hpc.write_bytes(b"")
    last.write_bytes(b"")
    os.utime(hpc, (1, 1))
    assert requeued_checkpoint(tmp_path) == str(last)
    os.utime(last, (0, 0))  # pre-empted again before last.ckpt moved on
    assert requeued_checkpoint(tmp_path) == str(hpc)
    monkeypatch.delenv("SLURM_NTASKS")  # not under SLURM: nothing resumes by itself
    assert requeued_checkpoint(tmp_path) is None
