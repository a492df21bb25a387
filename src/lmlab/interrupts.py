"""A SIGTERM to a multi-process run (DDP, FSDP) stops it the way a Ctrl-C does.

Lightning answers SIGTERM by raising ``SIGTERMException`` on each rank at its next step's end,
and since Lightning 2.6 by broadcasting a flag from rank 0 inside the signal handler (#20806, its
fix #20825). With several ranks this races: the broadcast, called mid-step, meets the other ranks
inside another collective. Here 1 of 4 SIGTERMs to a 2-rank gloo run ended in ``Connection reset
by peer``, recorded as a failure, and 1 of 4 to a sweep's DDP job hung. A Ctrl-C takes another
path: Lightning catches the ``KeyboardInterrupt`` on rank 0, kills the ranks it started and exits.
So while a multi-process run trains, SIGTERM raises ``lmlab.errors.Interrupted`` (a KeyboardInterrupt
that remembers the signal, so the run is recorded as interrupted by SIGTERM). Single-process
runs keep Lightning's handling, which stops at a step's end.
"""

from __future__ import annotations

import signal
import threading

import lightning as L

from lmlab.errors import Interrupted


def raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


class SigtermAsCtrlC(L.Callback):
    """In a run of several processes, SIGTERM raises ``Interrupted`` while training (see the
    module's docstring); Lightning's own handler is put back when training ends."""

    def __init__(self):
        self._previous = None

    def on_train_start(self, trainer, pl_module):
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, raise_interrupted)

    def on_train_end(self, trainer, pl_module):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
