"""Shared fixtures: configs composed with hydra.compose exactly as a user's overrides would be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from lmlab.config import conf_dir, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = conf_dir()
register_resolvers()
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

# 7 windows of the test play, not all of its ~1,300 at context 16: scoring them was half of a short
# train.py run's 28 s (7, odd, still splits unevenly between two DDP ranks)
FEW_TEST_WINDOWS = "data.test_windows=7"
# a model small enough for a forward and backward pass in milliseconds
TINY = ["model.n_layers=2", "model.n_heads=4", "model.d_model=32", "model.context_length=16"]


def run_entry_point(script: str, argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <script>.py ARGV`` (``lmlab.cli.<script>``) in a fresh interpreter; its stdout ends
    with a line ``<exit status> <whether Lightning was imported>``."""
    code = (f"import sys; sys.argv = ['{script}.py', *{argv!r}]\n"
            "from lmlab import cli\n"
            f"try:\n    cli.{script}()\n    status = 0\n"
            "except SystemExit as e:\n    status = e.code\n"
            "print(status, 'lightning' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def compose_cfg(overrides: list[str] | None = None, name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(name, overrides=overrides or [], return_hydra_config=True)


def model_cfg(overrides: list[str] | None = None) -> dict:
    """The plain model config of `python train.py <overrides>`."""
    cfg = compose_cfg(overrides)
    return OmegaConf.to_container(cfg.model, resolve=True)


@pytest.fixture
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "token-cache"


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A real checkpoint of a two-step run (tests.test_errors_checkpoint.SHORT), shared by the
    checkpoint and resume refusal tests; they read it and never change it."""
    from tests.test_errors_checkpoint import SHORT
    from tests.test_train_cli import run

    tmp = tmp_path_factory.mktemp("ckpt")
    run("train.py", *SHORT, f"hydra.run.dir={tmp / 'run'}", f"paths.cache_dir={tmp / 'cache'}")
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The run directory and token cache of a run of tests.test_resume.RESUMABLE left alone: what
    the resume and SLURM tests' interrupted runs are compared with."""
    from tests.test_resume import RESUMABLE
    from tests.test_train_cli import run

    tmp = tmp_path_factory.mktemp("full")
    run("train.py", *RESUMABLE, f"hydra.run.dir={tmp / 'r'}", f"paths.cache_dir={tmp / 'cache'}")
    return tmp / "r", tmp / "cache"
