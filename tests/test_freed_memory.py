"""train.py keeps freed memory in the heap for the training steps (lmlab.hardware.reuse_freed_memory)
and returns it afterwards: the held-out passes after training (the best checkpoint's validation,
the test split, length extrapolation) allocate and free a batch's logits thousands of times, and
under the training setting a run's extrapolation over 8,000 windows grew to 24 GB and was killed."""

from __future__ import annotations

import subprocess
import sys

from lmlab import training
from tests.conftest import ROOT, compose_cfg
from tests.test_train_cli import FAST

SCRIPT = """
import sys, torch
from lmlab.hardware import return_freed_memory, reuse_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

def growth_mb():  # blocks each a little larger than the last, with a small tensor kept after each
    base, kept = rss_mb(), []
    for i in range(12):
        block = torch.ones((1 << 24) + 4096 * i)  # 64 MB: the freed ones are just too small
        kept.append(torch.ones(4))
        del block
    return rss_mb() - base

reuse_freed_memory()
kept = growth_mb()
return_freed_memory()
print(kept, growth_mb())
"""


def test_large_blocks_are_not_kept_in_the_heap_once_the_setting_is_undone():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    kept, returned = map(int, proc.stdout.split())
    assert kept > 300 and returned < 70, (kept, returned)  # 12 blocks of 64 MB kept; then one


def test_training_returns_freed_memory_before_the_held_out_passes(tmp_path, cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "return_freed_memory", lambda: calls.append("returned"))
    monkeypatch.setattr(training, "validate_best", lambda *a: calls.append("validated") or {})
    cfg = compose_cfg([*FAST, "trainer.max_steps=1", "trainer.val_check_interval=1",
                       "sample.max_new_tokens=0", "data.test_windows=4", f"paths.root_dir={tmp_path}",
                       f"paths.cache_dir={cache_dir}",
                       f"paths.output_dir={tmp_path / 'run'}"])
    training.run_training(cfg)
    assert calls == ["returned", "validated"]
