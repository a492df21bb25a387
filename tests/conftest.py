"""Shared fixtures: configs composed with hydra.compose exactly as a user's overrides would be."""

from __future__ import annotations

import os
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

# a model small enough for a forward and backward pass in milliseconds
TINY = ["model.n_layers=2", "model.n_heads=4", "model.d_model=32", "model.context_length=16"]


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
