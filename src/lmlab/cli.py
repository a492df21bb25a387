"""Hydra entry points: ``python train.py``, ``python generate.py``, ``python evaluate.py``."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lmlab.hardware import fast_precision

log = logging.getLogger("lmlab")
if not OmegaConf.has_resolver("eval"):
    OmegaConf.register_new_resolver("eval", eval)
if not OmegaConf.has_resolver("fast_precision"):
    OmegaConf.register_new_resolver("fast_precision", fast_precision)
CONF_DIR = str(Path(os.environ.get("LMLAB_CONF_DIR", Path(__file__).resolve().parents[2] / "conf")))


class UserError(Exception):
    """A bad value in the user's config, reported in one line before any compute is spent."""


def _fail(err: Exception) -> None:
    print(f"lmlab: error: {err}", file=sys.stderr)
    sys.exit(2)


def build_datamodule(cfg: DictConfig):
    try:
        return hydra.utils.instantiate(cfg.data)
    except Exception as err:  # instantiate wraps constructor errors; report the cause alone
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise UserError(str(cause)) from None
        raise


def build_module(cfg: DictConfig):
    from lmlab.module import LanguageModule

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        return LanguageModule(model=model_cfg, **OmegaConf.to_container(cfg.module, resolve=True))
    except ValueError as err:
        raise UserError(str(err)) from None


def describe(module) -> str:
    from lmlab.model.moe import active_params

    m = module.model
    active = active_params(m)
    params = f"{m.num_params():,} parameters" + (
        f" ({active:,} active per token)" if active != m.num_params() else "")
    return f"model: {params}, {m.flops_per_token() / 1e6:,.1f} MFLOPs per token (training)"


def sample_text(module, tokenizer_name: str, prompt: str, **kwargs) -> str:
    from lmlab.data.tokenizer import get_tokenizer
    from lmlab.generate import generate

    enc = get_tokenizer(tokenizer_name)
    idx = torch.tensor([enc.encode(prompt, allowed_special="all")], device=module.device)
    gen = torch.Generator(device=module.device).manual_seed(kwargs.pop("seed", 0))
    out = generate(module.model, idx, generator=gen, **kwargs)
    return enc.decode(out[0].tolist())


def run_training(cfg: DictConfig) -> dict:
    """Train, validate and sample as ``cfg`` says; return the final metrics."""
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)  # checks data paths before the model is built
    module = build_module(cfg)
    log.info(describe(module))
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = {
        "params": module.model.num_params(),
        "flops_per_token": module.model.flops_per_token(),
        "steps": trainer.global_step,
        "world_size": trainer.world_size,
    }
    if trainer.world_size > 1:  # identical on every rank when DDP kept the replicas in sync
        checksum = sum(p.detach().double().sum() for p in module.parameters())
        metrics["param_checksums"] = trainer.strategy.all_gather(checksum).tolist()
    tps = trainer.callback_metrics.get("train/tokens_per_s")
    if tps is not None:
        metrics["tokens_per_s"] = float(tps)
    if trainer.fast_dev_run:
        return metrics
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    val = results[0]["val/loss"]
    metrics.update(val_loss=val, val_ppl=math.exp(val), checkpoint=ckpt)
    if trainer.is_global_zero:
        log.info(f"final validation loss {val:.4f}, perplexity {math.exp(val):.2f} ({ckpt})")
        s = cfg.sample
        if s and s.max_new_tokens:
            text = sample_text(module, cfg.data.tokenizer, s.prompt, max_new_tokens=s.max_new_tokens,
                               temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=cfg.seed)
            (out_dir / "sample.txt").write_text(text)
            metrics["sample"] = text
            print(f"\n----- sample (prompt {s.prompt!r}) -----\n{text}\n-----", flush=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    try:
        metrics = run_training(cfg)
    except UserError as err:
        _fail(err)
    return metrics.get("val_loss")


# ---- generate and evaluate --------------------------------------------------------------------
def load_module(ckpt_path: str, device: str = "auto"):
    """A trained LanguageModule from a Lightning checkpoint (weights_only loading suffices)."""
    from lmlab.module import LanguageModule

    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path: no such checkpoint: {ckpt_path}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    module = LanguageModule.load_from_checkpoint(ckpt_path, map_location=device, weights_only=True)
    return module.eval()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def generate(cfg: DictConfig) -> None:
    try:
        module = load_module(cfg.ckpt_path, cfg.device)
    except UserError as err:
        _fail(err)
    texts = []
    for i in range(cfg.num_samples):
        text = sample_text(module, cfg.tokenizer, cfg.prompt, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           use_cache=cfg.use_cache, seed=cfg.seed + i)
        texts.append(text)
        print(f"----- sample {i + 1}/{cfg.num_samples} -----\n{text}", flush=True)
    Path(cfg.paths.output_dir, "samples.txt").write_text("\n\n".join(texts))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def evaluate(cfg: DictConfig) -> float:
    """Loss and perplexity of a checkpoint on the held-out split of ``data``."""
    try:
        module = load_module(cfg.ckpt_path, "cpu")
        cfg.model.context_length = module.model.context_length
        datamodule = build_datamodule(cfg)
    except UserError as err:
        _fail(err)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    loss = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    result = {"ckpt_path": cfg.ckpt_path, "val_loss": loss, "val_ppl": math.exp(loss),
              "val_windows": len(datamodule.val_dataloader().dataset)}
    Path(cfg.paths.output_dir, "eval.json").write_text(json.dumps(result, indent=2))
    print(f"validation loss {loss:.4f}, perplexity {math.exp(loss):.2f} "
          f"over {result['val_windows']} windows", flush=True)
    return loss
