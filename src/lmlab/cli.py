"""The Hydra entry points: ``python train.py``, ``python generate.py``, ``python evaluate.py``
(installed as ``lmlab-train``, ``lmlab-generate``, ``lmlab-evaluate``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from lmlab.checkpoint import load_module
from lmlab.config import conf_dir, register_resolvers
from lmlab.console import quiet_third_party
from lmlab.errors import UserError, exit_with
from lmlab.evaluation import score, summary
from lmlab.hardware import reuse_freed_memory
from lmlab.overrides import check_argv
from lmlab.sampling import sample_texts
from lmlab.training import build_datamodule, train as run_job

CONF_DIR = conf_dir()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    quiet_third_party()
    torch.set_float32_matmul_precision("high")
    if cfg.get("reuse_freed_memory", True):
        reuse_freed_memory()
    try:
        return run_job(cfg)
    except UserError as err:
        exit_with(err)


def train() -> None:
    """``python train.py [overrides]``; a misspelt key is refused before Hydra starts the run."""
    register_resolvers()
    if (err := check_argv(CONF_DIR, "train", sys.argv[1:])) is not None:
        sys.exit(f"lmlab: error: {err}")
    _train()


def generate() -> None:
    """``python generate.py ckpt_path=... [overrides]``."""
    register_resolvers()
    _generate()


def evaluate() -> None:
    """``python evaluate.py ckpt_path=... [overrides]``."""
    register_resolvers()
    _evaluate()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _generate(cfg: DictConfig) -> None:
    """Samples from a checkpoint, printed and written to ``<run dir>/samples.txt``."""
    try:
        module = load_module(cfg.ckpt_path, cfg.device)
    except UserError as err:
        exit_with(err)
    prompts = [cfg.prompt] if isinstance(cfg.prompt, str) else list(cfg.prompt)
    stream = sys.stdout if len(prompts) * cfg.num_samples == 1 else None
    if stream:
        print(f"----- sample 1/1 -----\n{prompts[0]}", end="", flush=True)
    batches = sample_texts(module.model, cfg.tokenizer, prompts, num_samples=cfg.num_samples,
                           stop=list(cfg.stop), stream=stream, seed=cfg.seed,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           top_k=cfg.top_k, top_p=cfg.top_p, use_cache=cfg.use_cache)
    texts = [t for samples in batches for t in samples]
    if stream:
        print(flush=True)
    else:
        for i, text in enumerate(texts):
            print(f"----- sample {i + 1}/{len(texts)} -----\n{text}", flush=True)
    Path(cfg.paths.output_dir, "samples.txt").write_text("\n\n".join(texts))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def _evaluate(cfg: DictConfig) -> float:
    """Loss and perplexity of a checkpoint on held-out text (``split``), and optionally at other
    context lengths (``extrapolate=[1,2,4,8]``); written to ``<run dir>/eval.json``."""
    quiet_third_party()
    try:
        module = load_module(cfg.ckpt_path, "cpu")
        cfg.model.context_length = module.model.context_length
        datamodule = build_datamodule(cfg)
        result = score(module.model, datamodule, cfg.split, cfg.extrapolate, cfg.data.val_windows)
    except (UserError, ValueError) as err:
        exit_with(err)
    result = {"ckpt_path": cfg.ckpt_path, **result}
    Path(cfg.paths.output_dir, "eval.json").write_text(json.dumps(result, indent=2))
    print(summary(result), flush=True)
    return result["loss"]
