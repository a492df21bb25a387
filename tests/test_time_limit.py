"""No default time limit cuts a sweep arm; an arm that a time limit did cut is flagged in its
metrics.json and in the report, and kept out of the verdicts."""

from __future__ import annotations

import json

import pytest

from lmlab.run_limits import sweep_time_limit
from lmlab.report import make_report
from tests.conftest import compose_cfg
from tests.test_report_stats import comparison_table
from tests.test_sweep import job_dirs, multirun, overrides_of


def test_the_default_time_limit_is_for_single_runs_only():
    default = compose_cfg([]).trainer.max_time
    assert default  # the safety net of a single run
    for job, expected in [({}, default), ({"multirun": False, "overrides": []}, default),
                          ({"multirun": True, "overrides": ["seed=1"]}, None),
                          ({"multirun": True, "overrides": ["trainer.max_time=00:00:01:00"]},
                           "00:00:01:00")]:
        cfg = compose_cfg(job.get("overrides", []))
        sweep_time_limit(cfg, job)
        assert cfg.trainer.max_time == expected, job


@pytest.mark.slow  # a four-arm sweep, ~45 s on 2 cores
def test_a_time_limited_arm_is_flagged_and_left_out_of_the_verdicts(tmp_path, cache_dir):
    # arm 1 asks for a zero time limit: its trainer stops before its 4 steps
    sweep = multirun(tmp_path, cache_dir, "trainer.max_time=null,'00:00:00:00'", "seed=0")
    by_limit = {}
    for job in job_dirs(sweep):
        m = json.loads((job / "metrics.json").read_text())
        by_limit.setdefault(m["max_time"], []).append(m)
    assert [(m["stopped_by"], m["steps"], m["tokens"]) for m in by_limit[None]] == [
        ("max_steps", 4, 4 * 4 * 16)]
    cut = by_limit["00:00:00:00"]
    assert [m["stopped_by"] for m in cut] == ["max_time"] and all(m["steps"] < 4 for m in cut)
    arm = " ".join(o for o in overrides_of(job_dirs(sweep)[-1]) if o.startswith("trainer.max_time"))
    rows = comparison_table(make_report(sweep).read_text())
    assert "time-limited" in rows[arm]["flags"] and "fewer steps (" in rows[arm]["flags"]
    assert rows[arm]["verdict"] == "excluded (flagged)"
    assert rows["trainer.max_time=null"]["verdict"] == "baseline"


def test_a_sweep_job_run_as_a_ddp_child_has_no_default_time_limit(tmp_path, monkeypatch):
    """-m + DDP runs each job as a single run in a child process (lmlab.multirun_ddp), which kept
    the single run's max_time: every DDP arm of a sweep was cut at 8:45."""
    from hydra.core.hydra_config import HydraConfig

    from lmlab import multirun_ddp

    def child_max_time(overrides: list[str]):
        cfg = compose_cfg(["trainer=ddp", *overrides, f"paths.output_dir={tmp_path}"])
        cfg.hydra.runtime.cwd = str(tmp_path)
        monkeypatch.setattr(HydraConfig.instance(), "cfg", cfg)  # as in a job; undone after
        calls = []
        ended = type("Child", (), {"wait": lambda self: 0})()  # a child run that ended at once
        monkeypatch.setattr(multirun_ddp.subprocess, "Popen", lambda cmd, **kw: calls.append(cmd) or ended)
        multirun_ddp.run_as_child(cfg.copy())
        child = [o for o in calls[0][3:] if not o.startswith("hydra.")]
        return compose_cfg(child).trainer.max_time

    assert child_max_time(["seed=1"]) is None
    assert child_max_time(["trainer.max_time=00:00:01:00"]) == "00:00:01:00"


def test_a_time_limit_given_as_a_dict_is_the_trainers(tmp_path):
    """`trainer.max_time={minutes:30}` (the form trainer_checks offers): Hydra handed Lightning's
    Timer an OmegaConf mapping, which it does not take for a dict, and the run crashed once the
    model was built ('Missing key total_seconds')."""
    import hydra
    from lightning.pytorch.callbacks import Timer

    from lmlab.training import make_trainer

    cfg = compose_cfg([f"paths.output_dir={tmp_path}", "trainer.accelerator=cpu",
                       "trainer.max_time={minutes:30}"])
    trainer, *_ = make_trainer(cfg, [hydra.utils.instantiate(cfg.logger.csv)])
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer.time_remaining() == 30 * 60
