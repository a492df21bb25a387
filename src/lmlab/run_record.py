"""The run record, ``<run dir>/metrics.json``: the one place that writes it, reads it and parses
the Hydra overrides and swept keys it is labelled by. Training writes it (``status: running`` while
it trains, then the final figures or the failure); the sweep report reads it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

RECORD_FILE = "metrics.json"
SWEEP_FUNCTIONS = ("choice(", "range(", "interval(", "tag(", "glob(")


# ---- overrides ---------------------------------------------------------------------------------
def override_key(override: str) -> str:
    """``+model.x=3`` -> ``model.x``."""
    return override.split("=", 1)[0].lstrip("+~")


def override_map(overrides: list[str]) -> dict[str, str]:
    """``["a=1", "+b=2", "~c"]`` -> ``{"a": "1", "b": "2", "c": ""}``."""
    return {override_key(o): (o.split("=", 1)[1] if "=" in o else "") for o in overrides}


def is_sweep(override: str) -> bool:
    """Whether a command-line override sweeps several values (``a=1,2``, ``a=range(..)``...), as
    Hydra's own parser reads it: ``extrapolate=[1,2]`` is one list, not a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # not Hydra's syntax (a record written by hand)
        value = override.split("=", 1)[-1]
        return "," in value or value.startswith(SWEEP_FUNCTIONS)


def swept_keys(sweep_dir: str | Path) -> set[str] | None:
    """Keys the sweep in ``sweep_dir`` varies, read from its ``multirun.yaml``: those of
    ``hydra.sweeper.params`` and the command line's sweeps. None when there is no readable file."""
    path = Path(sweep_dir) / "multirun.yaml"
    try:
        hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    except (OSError, yaml.YAMLError):
        return None
    keys = {override_key(str(k)) for k in ((hydra_cfg.get("sweeper") or {}).get("params") or {})}
    keys |= {override_key(str(o)) for o in (hydra_cfg.get("overrides") or {}).get("task") or []
             if is_sweep(str(o))}
    return keys


# ---- the Hydra job -----------------------------------------------------------------------------
def hydra_job() -> dict:
    """What Hydra knows about this job: mode, overrides, the sweep's varied overrides (the
    variant), job number, sweep directory. Empty outside a Hydra app (a test, a notebook)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]
    info = {"multirun": hc.mode == RunMode.MULTIRUN, "overrides": overrides,
            "variant": overrides, "job_num": hc.job.get("num"), "sweep_dir": None}
    if info["multirun"]:
        info["sweep_dir"] = str(hc.sweep.dir)
        swept = swept_keys(hc.sweep.dir)
        if swept is not None:  # without multirun.yaml (another launcher's layout) all overrides count
            info["variant"] = [o for o in overrides if override_key(o) in swept]
    return info


def run_config(run_dir: str | Path) -> dict:
    """The config Hydra composed for the run in ``run_dir`` (``.hydra/config.yaml``); raises
    FileNotFoundError where there is none."""
    return yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text()) or {}


# ---- the file ----------------------------------------------------------------------------------
def read_record(run_dir: str | Path) -> dict:
    """The run's record, or {} when it has none or it cannot be parsed."""
    try:
        return json.loads((Path(run_dir) / RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_record(run_dir: str | Path, record: dict) -> Path:
    """Write the record atomically: a reader of a running sweep never sees half a file."""
    path = Path(run_dir) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
    return path


def start_record(run_dir: str | Path, job: dict, seed) -> dict:
    """Write and return the record of a run that starts now (``status: running``)."""
    record = {"status": "running", "overrides": job.get("overrides", []),
              "variant": job.get("variant", []), "seed": seed, "started": time.time()}
    write_record(run_dir, record)
    return record


def record_failure(run_dir: str | Path, err: BaseException | str, seed=None,
                   status: str = "failed") -> dict:
    """Mark the run failed (or ``interrupted``) with its error (keeping what the record already
    holds); return it."""
    job = hydra_job()
    error = err if isinstance(err, str) else f"{type(err).__name__}: {err}".strip()
    record = {**read_record(run_dir), "status": status, "error": error, "finished": time.time()}
    record.setdefault("overrides", job.get("overrides", []))
    record.setdefault("variant", job.get("variant", []))
    record.setdefault("seed", seed)
    write_record(run_dir, record)
    return record


def check_not_finished(run_dir: str | Path) -> None:
    """Refuse to run into a directory that holds a finished run: its checkpoints, metrics and
    record would be overwritten."""
    from lmlab.errors import UserError

    if job_status(read_record(run_dir) or {"status": "none"}) == "completed":
        raise UserError(f"{run_dir} holds a finished run ({RECORD_FILE}: completed); refusing to "
                        f"overwrite it: choose another hydra.run.dir (or hydra.sweep.dir)")


def check_no_unresumed_checkpoint(run_dir: str | Path, sweep: bool = False) -> None:
    """Refuse a fresh start in a directory holding an unfinished run's last checkpoint (a failed
    or interrupted run rerun in place without ``ckpt_path``, or a sweep rerun into the directory
    of one with such a job): training would overwrite it. Lightning resumes from an HPC
    checkpoint there by itself, and a requeued SLURM job from ``last.ckpt``
    (lmlab.resume.requeued_checkpoint), so those starts are resumes."""
    from lmlab.errors import UserError
    from lmlab.requeue import has_hpc_checkpoint, last_checkpoint, slurm_requeued

    last = last_checkpoint(run_dir)
    if last.is_file() and not slurm_requeued() and not has_hpc_checkpoint(run_dir):
        resume = (f"resume that job alone (its overrides, hydra.run.dir={run_dir} ckpt_path={last}), "
                  "or choose another hydra.sweep.dir") if sweep else (
                  f"resume it with ckpt_path={last}, or choose another hydra.run.dir")
        raise UserError(f"{run_dir} holds the checkpoints of an unfinished run; starting afresh "
                        f"would overwrite them: {resume}")


def job_status(record: dict) -> str:
    """running / completed / failed / interrupted; older records without a status count as completed once they
    hold a validation loss."""
    if "status" in record:
        return record["status"]
    return "completed" if "val_loss" in record else "running"
