"""The run's loggers, with W&B runs named, grouped and tagged by what the sweep varies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab.run_record import override_key

# A -m + DDP job runs as a child single run (lmlab.multirun_ddp), which cannot tell it belongs to a
# sweep: its parent, the sweep's job, passes the job's W&B identity (JSON) in this variable.
JOB_IDENTITY_ENV = "LMLAB_WANDB_JOB_IDENTITY"


def wandb_identity(job: dict, cfg: DictConfig) -> dict:
    """W&B run name, group and tags: named by the job's varied overrides, grouped by sweep
    directory, tagged by variant (the varied overrides other than the seed)."""
    if not job:
        return {}
    variant = job["variant"] or job["overrides"]
    name = ",".join(variant) or cfg.get("task_name", "train")
    if job["multirun"] and job["job_num"] is not None:
        name = f"{job['job_num']}:{name}"
    ident = {"name": name[:128], "tags": [o[:64] for o in variant if override_key(o) != "seed"]}
    if job["sweep_dir"]:
        sweep = Path(job["sweep_dir"])
        ident["group"] = f"{sweep.parent.name}/{sweep.name}"
    return ident


def run_identity(job: dict, cfg: DictConfig) -> dict:
    """This run's W&B identity: that of the sweep job whose child run it is, where its parent
    passed one (``JOB_IDENTITY_ENV``; only a single run takes it), else its own."""
    passed = os.environ.get(JOB_IDENTITY_ENV)
    if passed and not job.get("multirun"):
        return json.loads(passed)
    return wandb_identity(job, cfg)


def make_loggers(cfg: DictConfig, job: dict) -> list:
    """The loggers of ``cfg.logger``; a W&B logger gets the job's identity where the config
    leaves name, group or tags open."""
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        kwargs = {}
        if c.get("_target_", "").endswith("WandbLogger"):
            kwargs = {k: v for k, v in run_identity(job, cfg).items() if not c.get(k)}
        loggers.append(hydra.utils.instantiate(c, **kwargs))
    return loggers


class WandbRuns:
    """The W&B side of a run: the whole resolved config at the start, the final figures and the
    sample at the end, and one W&B run per job (finished, or marked failed)."""

    def __init__(self, loggers: list):
        from lightning.pytorch.loggers import WandbLogger
        from lightning.pytorch.utilities import rank_zero_only

        # ranks > 0 of DDP hold a dummy experiment: only rank 0 has a W&B run to fill in
        here = getattr(rank_zero_only, "rank", 0) == 0
        self.loggers = [lg for lg in loggers if isinstance(lg, WandbLogger) and here]

    def start(self, cfg: DictConfig) -> None:
        for wl in self.loggers:  # the whole resolved config, not only the module's hparams
            wl.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)

    def finish(self, metrics: dict, prompt: str) -> None:
        for wl in self.loggers:
            wl.experiment.summary.update({k: v for k, v in metrics.items()
                                          if isinstance(v, (int, float, str)) and k != "started"})
            if metrics.get("sample"):
                wl.log_text(key="samples", columns=["step", "prompt", "sample"],
                            data=[[metrics["steps"], prompt, metrics["sample"]]])
            wl.experiment.finish()  # one W&B run per job, also within one multirun process

    def fail(self) -> None:
        for wl in self.loggers:
            wl.experiment.finish(exit_code=1)  # marked failed in W&B; the next job starts a new run
