"""Faults during runs lose no work: a finished run directory is never overwritten, a diverging run
stops and keeps its last good checkpoint (which a fresh start in its directory may not overwrite),
a failed save (disk full) keeps the previous one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lmlab.checkpoint import load_model
from lmlab.overrides import finished_run_message
from tests.test_errors_config import refused
from tests.test_train_cli import FAST, run

# six steps, validation (and checkpoints) after steps 2, 4 and 6
RUN = [o for o in FAST if not o.startswith("trainer.val_check")] + ["trainer.val_check_interval=2"]


def digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_finished_run_is_never_overwritten(ckpt, tmp_path):
    run_dir = ckpt.parent.parent  # the session's finished two-step run, which must not change
    cache = f"paths.cache_dir={run_dir.parent / 'cache'}"
    before = digest(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    proc = run("train.py", *RUN, f"hydra.run.dir={run_dir}", cache, check=False)
    assert refused(proc) == (f"lmlab: error: {run_dir} holds a finished run (metrics.json: completed); "
                             "refusing to overwrite it: choose another hydra.run.dir (or hydra.sweep.dir)")
    sweep = run("train.py", "-m", *RUN, f"hydra.sweep.dir={run_dir.parent}", "hydra.sweep.subdir=run", cache,
                check=False)
    assert "holds a finished run" in refused(sweep)
    assert digest(run_dir) == before  # not one byte changed, .hydra/ and train.log included


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Weights turn NaN after step 4, right before a validation: the run stops there, says so in
    one line, and last.ckpt is still the finite one of step 2."""
    run_dir = tmp_path / "run"
    proc = run("train.py", *RUN, "+callbacks.poison._target_=tests.faults.PoisonWeights",
               "+callbacks.poison.at_step=4", f"hydra.run.dir={run_dir}",
               f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert proc.returncode == 1
    last = run_dir / "checkpoints" / "last.ckpt"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lmlab: error: non-finite validation loss (nan) at step 4; the last good checkpoint is {last}")
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("Diverged: non-finite")
    assert torch.load(last, weights_only=True)["global_step"] == 2
    model = load_model(last, "cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    before = digest(run_dir)  # rerun in place without ckpt_path: it would start afresh over last.ckpt
    proc = run("train.py", *RUN, f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert refused(proc) == (f"lmlab: error: {run_dir} holds the checkpoints of an unfinished run; starting "
                             f"afresh would overwrite them: resume it with ckpt_path={last}, or choose "
                             "another hydra.run.dir")
    assert digest(run_dir) == before
    assert finished_run_message([f"hydra.run.dir={run_dir}", f"ckpt_path={last}"]) is None  # a resume
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job resumes from last.ckpt itself
    assert finished_run_message([f"hydra.run.dir={run_dir}"]) is None


def test_a_nan_training_loss_stops_the_run(tmp_path):
    """Poisoned after step 3 (no validation there): the next training loss is NaN."""
    proc = run("train.py", *RUN, "+callbacks.poison._target_=tests.faults.PoisonWeights",
               "+callbacks.poison.at_step=3", f"hydra.run.dir={tmp_path / 'run'}",
               f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "lmlab: error: non-finite training loss (nan) at step 4; the last good checkpoint is ")
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path):
    """From step 3 on no file may grow past 1 MB (a checkpoint is ~19 MB): the save at step 4
    fails, the run stops saying which file failed and that the earlier ones are intact."""
    run_dir = tmp_path / "run"
    proc = run("train.py", *RUN, "+callbacks.disk._target_=tests.faults.DiskFullAfter",
               "+callbacks.disk.at_step=3", f"hydra.run.dir={run_dir}",
               f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"lmlab: error: could not save checkpoint {run_dir / 'checkpoints'}/"), line
    assert "File too large" in line and "intact" in line
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["best-step2.ckpt", "last.ckpt"]  # no temp file left behind
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


def test_a_sweep_rerun_over_an_interrupted_job_is_refused(tmp_path):
    """A sweep stopped by Ctrl-C, rerun with the same hydra.sweep.dir, started its interrupted job
    afresh over its checkpoints (last-v1.ckpt beside last.ckpt, the record and CSV replaced)."""
    sweep = tmp_path / "sweep"
    for job, status in (("0", "interrupted"), ("1", "failed")):
        (sweep / job / "checkpoints").mkdir(parents=True)
        (sweep / job / "metrics.json").write_text(json.dumps({"status": status}))
    assert finished_run_message(["-m", f"hydra.sweep.dir={sweep}"]) is None  # no checkpoint: a rerun loses nothing
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    last.write_bytes(b"weights")
    assert finished_run_message(["-m", "seed=0,1", f"hydra.sweep.dir={sweep}"]) == (
        f"{sweep / '0'} holds the checkpoints of an unfinished run; starting afresh would overwrite "
        f"them: resume that job alone (its overrides, hydra.run.dir={sweep / '0'} ckpt_path={last}), "
        "or choose another hydra.sweep.dir")
