"""Lightning's ModelCheckpoint, with the best checkpoints kept only where validation scored them.

Given ``every_n_train_steps``, Lightning's ModelCheckpoint reconsiders its top-k at those steps with
the monitored metric of the last validation, and no longer at validation itself:
``best-step<N>.ckpt`` then holds the weights of a step after the validation it was scored on, and
a validation whose score is the best saves nothing. Here the top-k is saved at each validation, with
the score just measured, and ``every_n_train_steps`` writes ``last.ckpt`` only (for resuming a
pre-empted or requeued job; where a validation follows at the same step, it writes ``last.ckpt``
again, with its score).

``last.ckpt`` is written at every validation, as Lightning did before 2.6 (since, only beside a
new best: a run resumed from it went back to its best validation's step). A checkpoint written by
Lightning's ModelCheckpoint, before lmlab used this class, holds its state under that class's key:
it is read from there on resume, so the run keeps its best checkpoint.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from lmlab.resume import optimizer_stepped


class ValidatedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-k is saved at validation, and ``last.ckpt`` at every
    validation; ``every_n_train_steps=N`` also writes ``last.ckpt`` every N optimizer steps, at the
    end of the step (it needs ``save_last``)."""

    def __init__(self, *args, every_n_train_steps: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)  # no step trigger: the top-k is saved at each validation
        n = every_n_train_steps or 0  # an integer >= 0 or null (lmlab.validate.BOUNDS)
        if n and self.save_last is not True:  # "link" would link last.ckpt to an older checkpoint
            raise ValueError(f"every_n_train_steps={n} writes last.ckpt, which needs save_last=true "
                             f"(got save_last={self.save_last})")
        self.last_every_n_steps = n

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_steps
        # with accumulate_grad_batches, the batches after a step's last share its global_step
        if (n and trainer.global_step % n == 0 and optimizer_stepped(trainer)
                and not self._should_skip_saving_checkpoint(trainer)):
            saved = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = saved  # a validation at this step still saves its top-k

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)  # the top-k, and last.ckpt beside a new best
        if (self.save_last is True and not self._should_skip_saving_checkpoint(trainer)
                and not self._should_save_on_train_epoch_end(trainer)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # runs before Lightning hands each callback its state by key
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states and self.lightning_state_key in states:
            states[self.state_key] = states[self.lightning_state_key]

    @property
    def lightning_state_key(self) -> str:
        """The key Lightning's ModelCheckpoint saved its state under, given the same settings."""
        n = self.last_every_n_steps
        return "ModelCheckpoint" + repr({
            "monitor": self.monitor, "mode": self.mode, "every_n_train_steps": n,
            "every_n_epochs": 0 if n else self._every_n_epochs,
            "train_time_interval": self._train_time_interval})
