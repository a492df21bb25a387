"""Soak (opt-in: ``python -m pytest -m slow tests/test_soak.py``): a long stretch of training on
the bundled Shakespeare, in-process, with validation, checkpoints and the CSV logger, and no
growth of resident memory from step to step after a warm-up."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lmlab.training import run_training
from tests.conftest import compose_cfg
from tests.test_train_cli import FAST

# The heap wanders by ~30 MB from step to step (608-637 MB over 3,000 steps of a run that does not
# leak): over 1,000 steps a least-squares slope of that noise reached 1.3 MB per 100 steps, so the
# run is longer and the slope Theil-Sen's (the median of the pairwise slopes), which excursions
# do not pull.
STEPS, WARMUP = 3000, 200
BOUND_KB_PER_100_STEPS = 1024  # 1 MB per 100 steps


@pytest.mark.slow
def test_resident_memory_does_not_grow(tmp_path):
    rss = tmp_path / "rss.txt"
    overrides = [o for o in FAST if not o.startswith(("trainer.max_steps", "trainer.val_check"))]
    cfg = compose_cfg([*overrides, f"trainer.max_steps={STEPS}", "trainer.val_check_interval=100",
                       "trainer.max_time=null", f"paths.root_dir={tmp_path}",
                       f"paths.output_dir={tmp_path / 'run'}", "+callbacks.rss._target_=tests.faults.RssRecorder",
                       f"+callbacks.rss.path={rss}"])
    metrics = run_training(cfg)
    assert metrics["steps"] == STEPS
    steps, kb = np.loadtxt(rss, dtype=np.int64, unpack=True)
    keep = steps > WARMUP
    per_100 = stats.theilslopes(kb[keep], steps[keep]).slope * 100
    print(f"\nRSS after step {WARMUP}: {kb[keep][0] / 1024:.1f} MB, at step {STEPS}: {kb[-1] / 1024:.1f} MB, "
          f"max {kb[keep].max() / 1024:.1f} MB; fitted slope {per_100:+.1f} kB per 100 steps")
    assert per_100 < BOUND_KB_PER_100_STEPS
