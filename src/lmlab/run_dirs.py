"""A directory of its own for every run and sweep. The default directories are named by the
second a run starts in (``outputs/runs/<date>_<time>``, ``outputs/multirun/<date>/<time>``), so
two runs started in the same second (a shell loop of ``python train.py seed=$s &``) shared one,
and each overwrote the other's checkpoints, metrics and record.

``${claim_dir:<path>}`` creates ``<path>``, or else ``<path>_2``, ``<path>_3``, ..., the first
that did not exist (``os.mkdir`` is atomic: of two processes racing for one name, one gets it and
the other the next), and resolves to it. It is a cached resolver: every later reading in the same
config, and in each job of a sweep (Hydra copies the launching config's cache into each job's,
and a launcher's pickled config carries it), gets the directory claimed first.
"""

from __future__ import annotations

import itertools
import os


def claim_dir(path: str) -> str:
    """Create and return ``path``, or ``path_<n>`` for the smallest n >= 2 that did not exist."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    for n in itertools.count(1):
        candidate = path if n == 1 else f"{path}_{n}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")
