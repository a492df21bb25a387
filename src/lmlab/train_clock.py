"""A run's training time, ``train_time_s`` in the run record, summed over the sessions of a run
that was interrupted and resumed: the time before the checkpoint it resumed from travels in that
checkpoint (a callback's state, which Lightning saves with every checkpoint and restores on
resume), so the time matches the record's ``steps`` and ``tokens``, which count the whole run."""

from __future__ import annotations

import time
from contextlib import contextmanager

import lightning as L


class TrainClock(L.Callback):
    """Training time: the wall clock inside ``trainer.fit`` (set-up, sanity check, training steps,
    validations and checkpoint writes; not the final validation, test and sample after it),
    measured by :meth:`timing` around the call, plus the time of the sessions before it.

    A checkpoint records the time up to its save (``state_dict`` is called as the checkpoint is
    made), so a run killed after its last checkpoint does not count the steps it lost, which the
    resumed session trains again. A checkpoint from before this clock existed resumes from 0 s:
    the record then holds the resumed session's time alone."""

    def __init__(self):
        self.earlier = 0.0  # seconds of the sessions before this one, up to the checkpoint's save
        self._start: float | None = None
        self._end: float | None = None

    @contextmanager
    def timing(self):
        """Counts the time inside the ``with`` block (the ``trainer.fit`` call) as this session's."""
        self._start, self._end = time.perf_counter(), None
        try:
            yield self
        finally:
            self._end = time.perf_counter()

    @property
    def running(self) -> bool:
        return self._start is not None and self._end is None

    @property
    def session_s(self) -> float:
        """This session's seconds so far (all of them once :meth:`timing` has ended)."""
        if self._start is None:
            return 0.0
        return (self._end if self._end is not None else time.perf_counter()) - self._start

    @property
    def seconds(self) -> float:
        """The run's training time: the earlier sessions' and this one's."""
        return self.earlier + self.session_s

    def state_dict(self) -> dict:
        return {"train_time_s": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        # only the fit being timed resumes the clock: trainer.validate and trainer.test with a
        # ckpt_path restore callbacks' state too, and the best checkpoint's time (an earlier one)
        # would replace the run's after training
        if self.running:
            self.earlier = float(state["train_time_s"])
