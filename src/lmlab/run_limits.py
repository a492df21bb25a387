"""What bounds a run: the default time limit applies to single runs only, and the run record says
what stopped training and how many tokens it saw, so the report can flag arms that are not
comparable (time-limited, or fewer steps or tokens than the others)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Timer
from omegaconf import DictConfig, OmegaConf

from lmlab.resume import optimizer_stepped


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_time_limit(cfg: DictConfig, job: dict) -> None:
    """``conf/trainer/default.yaml``'s ``max_time`` is a safety net for a single run on a slow
    machine; in a sweep it would cut slower arms short before their learning rate has decayed.
    So in a multirun it is removed unless ``trainer.max_time`` is on the command line."""
    if job.get("multirun") and "trainer.max_time" not in {_key(o) for o in job.get("overrides", [])}:
        cfg.trainer.max_time = None


def stopped_by(trainer) -> str:
    """``max_steps`` (ran to the end), ``max_time`` (the Timer stopped it first) or ``other``
    (anything else that ended ``trainer.fit`` without an error: ``trainer.max_epochs``, a
    callback that set ``trainer.should_stop``)."""
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None and remaining <= 0:
        return "max_time"
    return "other"


def tokens_per_step(cfg: DictConfig, trainer, context_length: int) -> int:
    """Training tokens per optimizer step over all ranks (targets per window x windows)."""
    return (int(cfg.data.batch_size) * context_length * int(cfg.trainer.accumulate_grad_batches)
            * trainer.world_size)


class StepTimer(Timer):
    """Lightning's Timer (``trainer.max_time``), stopping training only at the end of an optimizer
    step: Lightning's checks after every batch, and with ``accumulate_grad_batches`` stopped
    between the batches of a step, whose validation then saved half a step as ``last.ckpt``. Its
    state is kept under Lightning's key, so a checkpoint's training time carries over either way."""

    @property
    def state_key(self) -> str:
        return "Timer"

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if optimizer_stepped(trainer):
            super().on_train_batch_end(trainer, *args, **kwargs)


def trainer_limits(cfg: DictConfig, overrides: dict) -> tuple[dict, list]:
    """(Keyword arguments for the Trainer over ``cfg.trainer``'s, callbacks) that make the run's
    limits count optimizer steps: ``val_check_interval`` in batches (``batch_intervals``) and
    ``max_time`` as a StepTimer; ``overrides`` replace ``cfg.trainer`` keys."""
    kwargs = {**batch_intervals(cfg), **overrides}
    max_time = kwargs.pop("max_time", cfg.trainer.get("max_time"))
    if OmegaConf.is_config(max_time):
        max_time = OmegaConf.to_container(max_time)
    return {**kwargs, "max_time": None}, [StepTimer(max_time)] if max_time is not None else []


def batch_intervals(cfg: DictConfig) -> dict:
    """Lightning's ``val_check_interval`` for ``cfg.trainer``'s, which counts optimizer steps (as
    ``max_steps`` does): Lightning counts training batches, so with ``accumulate_grad_batches``
    it validated (and checkpointed) that many times as often, and between the batches of a step
    where the interval was not a multiple of it. Empty where the two agree."""
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    interval = cfg.trainer.get("val_check_interval")
    if accumulate > 1 and isinstance(interval, int) and not isinstance(interval, bool):
        return {"val_check_interval": interval * accumulate}
    return {}
