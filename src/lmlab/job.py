"""One Hydra job of ``python train.py``: its run directory guarded, its config checked, then the
training run, with a failure recorded. Lightning is imported only once the config has passed, so
a bad value is refused in about the time it takes to import torch."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from omegaconf import DictConfig

from lmlab.errors import Diverged, Interrupted, UserError
from lmlab.multirun_ddp import ChildRunFailed, needs_own_process, run_as_child
from lmlab.run_record import check_not_finished, hydra_job, record_failure
from lmlab.validate import check_config

log = logging.getLogger("lmlab")


def train(cfg: DictConfig) -> float | None:
    """One job. In a multirun, a failing or diverging job is recorded as failed in its run
    record and returns None so the other jobs go on (Hydra's sweepers would otherwise raise the
    first failure and stop; Optuna's sweeper marks a trial that returns None as failed and goes
    on, where a NaN makes it raise); a single run raises."""
    check_not_finished(_run_dir(cfg))  # before anything is written into it
    try:
        if needs_own_process(cfg):  # multirun + DDP: see lmlab.multirun_ddp (the child checks)
            return run_as_child(cfg)
        check_config(cfg)  # before anything is computed or written
        from lmlab.training import run_training  # Lightning, for a config that passed

        metrics = run_training(cfg)
    except Exception as err:
        reason = str(err) if isinstance(err, ChildRunFailed) else err  # the child said why
        record = record_failure(_run_dir(cfg), reason, cfg.get("seed"))
        if hydra_job().get("multirun"):
            log.error(f"job failed, the sweep goes on: {record['error']}",
                      exc_info=not isinstance(err, (UserError, Diverged)))
            return None
        raise
    except (KeyboardInterrupt, SystemExit) as err:
        if (signum := interrupting_signal(err)) is None:
            raise
        name = signal.Signals(signum).name
        record_failure(_run_dir(cfg), f"interrupted by {name}", cfg.get("seed"), status="interrupted")
        log.error(f"interrupted by {name}: the run is recorded as interrupted; its last checkpoint "
                  f"resumes it (ckpt_path=.../checkpoints/last.ckpt)")
        raise SystemExit(128 + signum) from None  # the shell's status for a run a signal ended
    return metrics.get("val_loss")


def interrupting_signal(err: BaseException) -> int | None:
    """The signal that ended training, or None for another exit. Lightning turns SIGTERM into
    its ``SIGTERMException`` (a SystemExit, status 0) at a step's end, and Ctrl-C into
    ``sys.exit(1)`` raised while handling the KeyboardInterrupt, which is an ``Interrupted`` for
    a SIGTERM to a multi-process run (lmlab.interrupts); a multirun + DDP job raises
    ``Interrupted`` once its child run has stopped."""
    if type(err).__name__ == "SIGTERMException":
        return signal.SIGTERM
    for cause in (err, err.__context__):  # SIGTERM in a multi-process run; a DDP job's child's
        if isinstance(cause, Interrupted):
            return cause.signum
    if isinstance(err, KeyboardInterrupt) or isinstance(err.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return None


def _run_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # the config itself is broken: Hydra's own job dir
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
