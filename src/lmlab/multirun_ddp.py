"""Hydra multirun with a multi-process strategy (DDP, FSDP): each sweep job runs as a single run.

Lightning's DDP launcher starts ranks > 0 by re-executing ``sys.argv`` with
``hydra.run.dir=<run dir>``. Inside a multirun, ``sys.argv`` holds the whole sweep (``-m a=1,2``)
and the run dir is not the job's directory, so the ranks would start sweeps of their own, in other
directories, and rank 0 waits for peers that never join (Lightning #18145/#18175, Hydra #2070,
lightning-hydra-template #393). So a multirun job that asks for several devices runs as a child
``python -m lmlab <the job's overrides> hydra.run.dir=<job dir>``: an ordinary single run, whose
DDP launch is the tested one, in the job's directory. Under SLURM (submitit) each rank is a SLURM
task already and nothing is re-launched.

The child, a single run, does not know its sweep: its W&B run would be named by all its overrides,
with no job number and no group. So the job hands it its own W&B identity (name, group, tags) in
the environment (lmlab.loggers.JOB_IDENTITY_ENV) rather than as ``++logger.wandb.*`` overrides,
which would need Hydra-quoting of names holding ``=,/:`` (and ``${`` would be interpolated), would
be added to the child's config (its W&B config would differ from a non-DDP job's) and to its
record's overrides, and would have to find each W&B logger's key. The child's config is the job's,
so a name, group or tags it sets explicitly is still kept (lmlab.loggers.make_loggers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig

from lmlab.errors import Interrupted
from lmlab.loggers import JOB_IDENTITY_ENV, wandb_identity
from lmlab.run_record import hydra_job, job_status, read_record, write_record


def needs_own_process(cfg: DictConfig) -> bool:
    """A multirun job (outside SLURM) whose trainer starts several processes."""
    if not hydra_job().get("multirun"):
        return False  # a single run: Lightning is not imported yet (a bad config is refused first)
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return False
    t = cfg.trainer
    strategy = str(t.get("strategy", "auto"))
    many = t.get("devices", 1) not in (1, "1") or int(t.get("num_nodes", 1)) > 1
    return many and strategy not in ("auto", "single_device")


def run_as_child(cfg: DictConfig) -> float | None:
    """Run this job as ``python -m lmlab`` in its own directory; return its validation loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    job, job_dir = hydra_job(), Path(cfg.paths.output_dir)
    cmd = [sys.executable, "-m", "lmlab", *child_overrides(list(HydraConfig.get().overrides.task)),
           f"hydra.run.dir={job_dir}", "hydra.output_subdir=.hydra_single_run"]
    child = subprocess.Popen(cmd, cwd=get_original_cwd(), env=child_env(job, cfg))
    try:
        returncode, signum = wait_passing_sigterm(child)
    finally:  # the sweep's view of the job, its varied overrides, also when interrupted
        record = {**read_record(job_dir), "overrides": job["overrides"], "variant": job["variant"]}
        write_record(job_dir, record)
    if signum is not None:  # the child has stopped: this job is recorded as interrupted
        raise Interrupted(signum)
    if returncode != 0:
        raise ChildRunFailed(record.get("error") if job_status(record) in ("failed", "interrupted")
                             else f"the job's run exited with status {returncode}; see {job_dir}")
    return record.get("val_loss")


def wait_passing_sigterm(child: subprocess.Popen) -> tuple[int, int | None]:
    """Wait for the child run to end: (its exit status, the signal that interrupted this process
    meanwhile, or None). A SIGTERM sent to this process alone (``kill``, ``timeout``) is passed
    on to the child as a Ctrl-C would reach it (a terminal signals the whole process group), and
    either way this process waits for the child to record itself: ``subprocess.run`` would kill
    it 0.25 s after a Ctrl-C, and on SIGTERM this process would die at once and leave it training
    alone. SIGINT, not SIGTERM, because the child always runs several DDP ranks, and Lightning's
    SIGTERM handling under DDP can deadlock: its handler broadcasts from rank 0 mid-step while the
    other ranks are in another collective (Lightning #20806 and its fix #20825; here one of four such
    stops hung), where a Ctrl-C ends the other ranks and stops the run at once."""
    received: list[int] = []

    def pass_on(signum, frame):
        received.append(signum)
        child.send_signal(signal.SIGINT)

    main = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, pass_on) if main else None
    try:
        while True:
            try:
                return child.wait(), (received[0] if received else None)
            except KeyboardInterrupt:
                received.append(signal.SIGINT)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def child_env(job: dict, cfg: DictConfig) -> dict[str, str]:
    """The child's environment: this process's, with the job's W&B identity added (only there:
    this process's later jobs are named by themselves)."""
    return {**os.environ, JOB_IDENTITY_ENV: json.dumps(wandb_identity(job, cfg))}


def child_overrides(task: list[str]) -> list[str]:
    """The job's overrides for its child run. The child is a single run, which keeps the default
    ``trainer.max_time``; a sweep's jobs drop it (lmlab.run_limits.sweep_time_limit), so the child
    is told to unless the command line set it."""
    if any(o.split("=", 1)[0].lstrip("+~") == "trainer.max_time" for o in task):
        return task
    return [*task, "trainer.max_time=null"]


class ChildRunFailed(RuntimeError):
    """The job's own run failed: its error as that run recorded it (or its exit status, where it
    could not record one), which the job's record keeps as it is."""
