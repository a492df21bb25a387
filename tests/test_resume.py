"""Exact resume: a training process killed by a real signal and resumed from its last checkpoint
logs the same losses, step for step, as a run that was never stopped (CPU, fp32: bit-exact)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lmlab.errors import UserError
from lmlab.resume import AtomicCheckpointIO
from lmlab.run_record import job_status
from lmlab.train_clock import TrainClock
from lmlab.validate import check_config
from tests.conftest import FEW_TEST_WINDOWS, ROOT
from tests.test_errors_config import job_cfg
from tests.test_train_cli import FAST_ANY_CORPUS, run

STEPS = 120
RESUMABLE_ANY_CORPUS = [*FAST_ANY_CORPUS, f"trainer.max_steps={STEPS}", "trainer.val_check_interval=40",
                        "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=7",
                        "sample.max_new_tokens=0"]
RESUMABLE = [*RESUMABLE_ANY_CORPUS, FEW_TEST_WINDOWS]


def logged(run_dir, key):
    """{step: value} of a metric in a run's csv/metrics.csv."""
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def lr_key(run_dir):
    """The logged learning rate of the first parameter group (lr-<optimizer class>/pg1)."""
    header = next(csv.reader(open(run_dir / "csv" / "metrics.csv")))
    return next(k for k in header if k.startswith("lr-") and k.endswith("/pg1"))


def checkpoint_step(path):
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    except Exception:  # not written yet
        return -1


def train_time(path):
    """The training time a checkpoint records: the run's, up to the checkpoint's save."""
    state = torch.load(path, weights_only=True, map_location="cpu")["callbacks"]
    return state[TrainClock().state_key]["train_time_s"]


def timed_run(*overrides):
    """``run("train.py", *overrides)`` and its wall clock, which holds the run's ``trainer.fit``."""
    t0 = time.perf_counter()
    run("train.py", *overrides)
    return time.perf_counter() - t0


def start_and_kill(run_dir, sig, cache, after_step=30, extra=(), base=RESUMABLE):
    """Start `python train.py`, wait for a checkpoint past ``after_step``, send ``sig``; the step
    of the last checkpoint and the exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *base, *extra,
                             f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while checkpoint_step(last) < after_step:
        assert proc.poll() is None and time.time() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    proc.send_signal(sig)
    return checkpoint_step(last), proc.wait(timeout=120)


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_killed_run_resumes_with_identical_losses(uninterrupted, tmp_path, sig):
    full, cache = uninterrupted
    step, _ = start_and_kill(tmp_path / "a", sig, cache)
    assert 30 <= step < STEPS  # killed mid-way, after a checkpoint
    before = train_time(tmp_path / "a/checkpoints/last.ckpt")  # the first session's, to its save
    wall = timed_run(*RESUMABLE, f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}",
                     f"hydra.run.dir={tmp_path / 'a'}", f"paths.cache_dir={cache}")  # resumed in place
    # bit-exact (data, optimizer, schedule), and the run's csv/metrics.csv holds its whole history
    for key in ("train/loss", lr_key(full), "val/loss"):
        assert logged(tmp_path / "a", key) == logged(full, key), key
    assert len(logged(full, "train/loss")) == STEPS
    # the record's training time is the whole run's, as its steps are: the first session's, up
    # to the checkpoint, and the resumed session's, which ran inside the resuming process
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["steps"] == STEPS and 0 < before < record["train_time_s"] <= before + wall


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signalled_run_exits_non_zero_and_records_the_interruption(uninterrupted, tmp_path, sig):
    """SIGTERM (a scheduler, `kill`) and Ctrl-C: Lightning ends training at a step's end; the run
    records that it was interrupted and by what, and exits with the shell's status for the signal
    (it exited 0 on SIGTERM, its record left saying running)."""
    _, cache = uninterrupted
    step, status = start_and_kill(tmp_path / "a", sig, cache, after_step=5)
    assert status == 128 + sig
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {sig.name}"
    assert job_status(record) == "interrupted" and 5 <= step < STEPS  # its last checkpoint kept


def test_resuming_with_another_length_is_refused_unless_extended(uninterrupted, tmp_path):
    full, cache = uninterrupted
    ckpt = full / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError) as err:  # by the config check, before the data and model are built
        check_config(job_cfg(tmp_path, *RESUMABLE, "trainer.max_steps=130", f"ckpt_path={ckpt}"))
    assert str(err.value) == (
        f"trainer.max_steps: the checkpoint's run was planned for {STEPS} steps, "
        f"not 130; resume with trainer.max_steps={STEPS}, or add module.extend=true to decay "
        f"the LR from step {STEPS} to the new end")
    # the checkpoint says 10^6 s were spent training before it: the resumed run's training time
    # is that and its own, which fits in the resuming process's wall clock
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    state["callbacks"][TrainClock().state_key]["train_time_s"] = earlier = 1e6
    torch.save(state, tmp_path / "earlier.ckpt")
    wall = timed_run(*RESUMABLE, "trainer.max_steps=130", "module.extend=true",
                     f"ckpt_path={tmp_path / 'earlier.ckpt'}", f"hydra.run.dir={tmp_path / 'y'}",
                     f"paths.cache_dir={cache}")
    record = json.loads((tmp_path / "y" / "metrics.json").read_text())
    assert record["steps"] == 130 and earlier < record["train_time_s"] <= earlier + wall
    assert earlier < train_time(tmp_path / "y/checkpoints/last.ckpt") <= record["train_time_s"]
    lr = logged(tmp_path / "y", lr_key(full))
    assert sorted(lr) == list(range(STEPS, 130))
    # the plan had decayed to its minimum at step 120: the extension goes on from there, where a
    # silently re-planned cosine over 130 steps would jump back up to 0.109 x the peak
    assert all(v == pytest.approx(0.1 * 2e-3, rel=1e-6) for v in lr.values())


@pytest.mark.slow
def test_killed_run_on_prepared_shards_resumes_with_identical_losses(tmp_path):
    """data=tokens: the loader restarts at the batch the checkpoint recorded, so a resumed run is exact."""
    from lmlab.data.corpus import shakespeare_plays
    from lmlab.data.prepare import prepare

    src = tmp_path / "c.jsonl"
    docs = [p for t in list(shakespeare_plays().values())[:4] for p in t.split("\n\n") if p]
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare(str(src), str(tmp_path / "shards"), val_fraction=0.05)
    tokens = ["data=tokens", f"data.path={tmp_path / 'shards'}"]
    run("train.py", *RESUMABLE_ANY_CORPUS, *tokens, f"hydra.run.dir={tmp_path / 'full'}")
    step, _ = start_and_kill(tmp_path / "a", signal.SIGKILL, tmp_path / "cache", 30, tokens,
                             base=RESUMABLE_ANY_CORPUS)
    assert 30 <= step < STEPS
    run("train.py", *RESUMABLE_ANY_CORPUS, *tokens, f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'b'}")
    want = {s: v for s, v in logged(tmp_path / "full", "train/loss").items() if s >= step}
    assert logged(tmp_path / "b", "train/loss") == want and len(want) == STEPS - step


KILL_WHILE_SAVING = """
import sys, torch
from lmlab.resume import AtomicCheckpointIO
from lmlab.run_record import job_status
print("saving", flush=True)
AtomicCheckpointIO().save_checkpoint({"w": torch.ones(150_000_000)}, sys.argv[1])  # ~600 MB
"""


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.zeros(3)}, path)
    proc = subprocess.Popen([sys.executable, "-c", KILL_WHILE_SAVING, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".last.ckpt.tmp*")):  # the new file is being written
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert torch.load(path, weights_only=True)["step"] == 1


def test_the_best_checkpoint_holds_a_validated_step_and_its_score(uninterrupted):
    """RESUMABLE writes last.ckpt every 7 steps and validates every 40: the best checkpoint holds
    the weights of the validation step with the lowest loss, scored by that validation. (Lightning's
    own ModelCheckpoint reconsidered the best at every 7th step with the last validation's score,
    and not at validation: best-step84.ckpt held step 84's weights under step 80's loss, and the
    last validation, the best, saved nothing.)"""
    run_dir, _ = uninterrupted
    val = logged(run_dir, "val/loss")  # {csv step: loss}; a validation after step s is logged at s - 1
    (best,) = (run_dir / "checkpoints").glob("best-step*.ckpt")
    ckpt = torch.load(best, weights_only=True, map_location="cpu")
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ValidatedCheckpoint")]
    step = ckpt["global_step"]
    assert step - 1 == min(val, key=val.get) and step % 40 == 0
    assert float(state["best_model_score"]) == pytest.approx(val[step - 1], abs=1e-6)
