"""Sweeps as a user types them: ``python train.py -m`` with Hydra's default sweep directory, every
arm checked before the first trains, and an Optuna search (hydra-optuna-sweeper) in which a
trial that diverges is a failed Optuna trial and the search goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import FEW_TEST_WINDOWS, ROOT

TINY_TRIAL = ["model.n_layers=1", "model.n_heads=2", "model.context_length=16", "data.batch_size=4",
              "trainer.max_steps=4", "trainer.val_check_interval=2", "data.val_windows=4",
              "sample.max_new_tokens=0", "module.warmup_steps=1", FEW_TEST_WINDOWS]


def train_py(*argv: str, root=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if root is not None:
        env["LMLAB_ROOT"] = str(root)
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # ~12 s; tests/test_sweep.py runs sweeps by default
def test_a_sweep_into_the_default_directory(tmp_path, cache_dir):
    """No hydra.sweep.dir: the jobs go to <root>/outputs/multirun/<date>/<time>/<n>. (The
    directory once went through ${hydra:runtime.cwd}, which Hydra's sweeper cannot resolve: every
    sweep typed as in the README ended in a traceback before its first job.)"""
    proc = train_py("-m", "seed=0", *TINY_TRIAL, "model.d_model=32", f"paths.cache_dir={cache_dir}",
                    root=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow  # three Optuna trials, ~30 s on 2 cores
def test_a_failed_trial_does_not_end_the_search(tmp_path, cache_dir):
    """Random sampling (seed 0) of lr in {1e-3, 1e9} gives trials 1e9, 1e-3, 1e9: the first
    diverges. The search used to stop there with a traceback (the job returned NaN, which the
    sweeper could not tell Optuna)."""
    sweep = tmp_path / "search"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "train.py", "-m", "+hparams_search=lr_width_optuna",
           "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=3",
           'hydra.sweeper.params={module.lr:"choice(1e-3,1e9)",model.d_model:"choice(32)"}',
           *TINY_TRIAL, f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(3)]
    lrs = [next(o for o in r["overrides"] if o.startswith("module.lr=")) for r in records]
    assert [r["status"] for r in records] == ["failed", "completed", "failed"], lrs
    assert lrs == ["module.lr=1000000000.0", "module.lr=0.001", "module.lr=1000000000.0"]
    assert records[0]["error"].startswith("Diverged: non-finite")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["module.lr"] == 0.001
    assert best["best_value"] == records[1]["val_loss"]


def test_help_lists_the_groups_and_the_multirun_launchers():
    """`python train.py --help`: every group with its options, and hydra/launcher's choices,
    which Hydra's own group listing leaves out."""
    out = train_py("--help").stdout
    assert "model/position: alibi, learned, none, rope, sinusoidal" in out, out
    assert "module/optimizer: adamw, muon" in out, out
    launchers = sorted(p.stem for p in (ROOT / "conf" / "hydra" / "launcher").glob("*.yaml"))
    line = next(ln for ln in out.splitlines() if ln.startswith("hydra/launcher: basic"))
    assert all(name in line for name in launchers), line
