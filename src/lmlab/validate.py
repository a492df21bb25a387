"""Checks of a composed training config, run once before anything is computed or written: every
value resolves, sizes, rates and steps are in range, the sample's arguments are valid, the model
can be built (its constructors own the checks of their own values, run here on the meta device,
so no memory is allocated and no weights are initialised) and a checkpoint to resume from fits it
is a training checkpoint whose optimization settings the run keeps (lmlab.resume_settings).
Each failure is a one-line :class:`UserError` naming the key, the bad value and what is allowed."""

from __future__ import annotations

import logging
import re

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmlab.budget import check_budget
from lmlab.checks import is_int, is_number
from lmlab.config import conf_dir
from lmlab.errors import UserError, as_user_error
from lmlab.extrapolation import check_factors
from lmlab.prompts import prompt_text
from lmlab.trainer_checks import check_trainer

log = logging.getLogger("lmlab")

# key -> (smallest allowed value, whether it must be an integer, whether null is allowed)
BOUNDS = {
    "model.vocab_size": (1, True, False),
    "model.context_length": (1, True, False),
    "model.n_layers": (1, True, False),
    "model.n_heads": (1, True, False),
    "model.d_model": (1, True, False),
    "model.dropout": (0, False, False),
    "module.lr": (None, False, False),  # > 0, checked below
    "module.weight_decay": (0, False, False),
    "module.warmup_steps": (0, True, False),
    "module.min_lr_ratio": (0, False, False),
    "trainer.max_steps": (1, True, False),
    "trainer.accumulate_grad_batches": (1, True, False),
    "data.batch_size": (1, True, False),
    "data.val_windows": (1, True, True),
    "data.test_windows": (1, True, True),
    "data.num_workers": (0, True, False),
    "data.seed": (0, True, False),
    "trainer.max_epochs": (-1, True, True),  # -1: bounded by max_steps
    "trainer.num_sanity_val_steps": (-1, True, False),  # -1: every validation batch
    "trainer.log_every_n_steps": (1, True, False),  # 0 logged no training metrics at all
    "callbacks.model_checkpoint.save_top_k": (-1, True, False),  # -1: every checkpoint
    "callbacks.model_checkpoint.every_n_train_steps": (0, True, True),  # 0 or null: at validation only
    "callbacks.routing.every_n_steps": (1, True, False),
}


def check_value(key: str, value, low, integer: bool, nullable: bool) -> None:
    """Raise UserError unless ``value`` is a number (an integer if ``integer``) of at least
    ``low`` (greater than 0 when ``low`` is None), or null when ``nullable``."""
    if value is None and nullable:
        return
    kind = "an integer" if integer else "a number"
    ok_type = is_int(value) if integer else is_number(value)
    if low is None:
        allowed, ok = f"{kind} > 0", ok_type and value > 0
    else:
        allowed, ok = f"{kind} >= {low}", ok_type and value >= low
    if not ok:
        null = " or null" if nullable else ""
        raise UserError(f"{key}={value!r}: must be {allowed}{null}")


def resolve(cfg: DictConfig) -> dict:
    """The config as plain values (Hydra's own ``hydra`` node left out); an interpolation that
    cannot resolve is a one-line error."""
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                      resolve=True)
    except OmegaConfBaseException as err:
        first = str(err).strip().splitlines()[0]
        key = getattr(err, "full_key", None) or "config"
        raise UserError(f"{key}: cannot resolve the interpolation: {first}") from None


def check_sampling(key: str, max_new_tokens, temperature, top_k, top_p, prompt=None) -> None:
    """The arguments of sampling (``key``: where they are set, e.g. ``sample`` or ``''``):
    max_new_tokens >= 0 (0 returns the prompt), temperature >= 0 (0 is greedy), top_k null or
    >= 0 (0: no top-k filter), top_p null or in (0, 1], and a non-empty prompt."""
    at = f"{key}." if key else ""
    check_value(f"{at}max_new_tokens", max_new_tokens, 0, True, False)
    check_value(f"{at}temperature", temperature, 0, False, False)
    check_value(f"{at}top_k", top_k, 0, True, True)
    if top_p is not None:
        ok = is_number(top_p) and 0 < top_p <= 1
        if not ok:
            raise UserError(f"{at}top_p={top_p!r}: must be in (0, 1] or null (no nucleus filter)")
    if prompt is not None:
        prompt_text(f"{at}prompt", prompt)


def tokenizer_size(key: str, name: str) -> int:
    """The vocabulary size of tokenizer ``name`` (set at ``key``); an unknown one, or one that
    cannot be loaded offline, is a one-line error."""
    from lmlab.data.tokenizer import get_tokenizer

    try:
        return get_tokenizer(name).n_vocab
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{key}: {err}") from None


def check_tokenizer_fits(key: str, name: str, vocab_size: int) -> None:
    """Refuse tokenizer ``name`` (set at ``key``) for a model of ``vocab_size`` tokens with no row
    for some of its ids: the model was not trained with it (its prompts could hold ids past the
    embedding). A larger vocabulary (padded, e.g. to 50,304) is fine: its extra ids, which no
    tokenizer decodes, are never sampled (``sample_texts``)."""
    n = tokenizer_size(key, name)
    if vocab_size < n:
        raise UserError(f"{key}={name} has {n:,} tokens, more than the model's vocab_size="
                        f"{vocab_size}: the model was not trained with it")


DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def check_device(device) -> None:
    """generate.py's ``device``: one of DEVICES, and present on this machine."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
        raise UserError(f"device={device!r}: unknown; valid choices: {', '.join(DEVICES)}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device}: torch sees no CUDA device here; use device=cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device}: torch sees no MPS device here; use device=cpu or auto")


def crop_notice(prompt_tokens: int, context_length: int) -> str | None:
    """What to tell the user when a prompt is longer than the model's context (it is cropped to
    its last ``context_length`` tokens), or None."""
    if prompt_tokens <= context_length:
        return None
    return (f"the prompt is {prompt_tokens} tokens, longer than the model's context of "
            f"{context_length}: the model sees only its last {context_length} tokens")


def check_config(cfg: DictConfig, here: bool = True) -> None:
    """Everything that can be known wrong about a training config before training starts
    (``here``: it trains on this machine; a sweep submitted elsewhere is not held to this
    machine's accelerators)."""
    plain = resolve(cfg)
    check_bounds(plain)
    check_trainer(plain["trainer"], here)
    check_combinations(plain)
    check_data(plain)
    sample = plain.get("sample") or {}
    if sample.get("max_new_tokens"):
        check_sampling("sample", sample["max_new_tokens"], sample.get("temperature", 1.0),
                       sample.get("top_k"), sample.get("top_p"))
        prompt_text("sample.prompt", sample.get("prompt"))
    module = build_on_meta(cfg, plain)
    from lmlab.callback_checks import check_callbacks

    check_callbacks(plain.get("callbacks"))
    if cfg.get("ckpt_path"):
        check_resume(cfg.ckpt_path, module)


def check_bounds(plain: dict) -> None:
    """Each BOUNDS key that is set, and the seed, in its range."""
    check_value("seed", plain.get("seed", 0), 0, True, False)  # before data.seed, which copies it
    for key, (low, integer, nullable) in BOUNDS.items():
        *sections, leaf = key.split(".")
        node = plain
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            check_value(key, node[leaf], low, integer, nullable)


def check_combinations(plain: dict) -> None:
    """Values that are each fine but not together: a warm-up longer than the run, Muon under
    FSDP, extrapolation factors and a parameter budget for this model; and warnings for attention
    settings that change nothing."""
    warmup, steps = plain["module"]["warmup_steps"], plain["trainer"]["max_steps"]
    if warmup > steps:
        raise UserError(f"module.warmup_steps={warmup} is longer than the run (trainer.max_steps="
                        f"{steps}); use at most {steps}")
    strategy = plain["trainer"].get("strategy")
    optimizer = (plain["module"].get("optimizer") or {}).get("_target_", "")
    if (optimizer.endswith(".muon") and isinstance(strategy, dict)
            and strategy.get("_target_", "").endswith("fsdp_strategy")):
        raise UserError("module/optimizer=muon with trainer=fsdp: Muon orthogonalizes whole matrices "
                        "and FSDP shards them; use module/optimizer=adamw")
    warn_no_op_attention(plain["model"])
    check_factors(plain.get("extrapolate"), plain["model"]["context_length"])
    with as_user_error():
        check_budget(plain.get("budget") or {}, plain["model"], conf_dir())


def warn_no_op_attention(model: dict) -> None:
    """An ablation arm that silently repeats another: GQA with as many KV heads as heads, or a
    window no shorter than the training context (it acts only on longer sequences)."""
    n_heads, attention = model["n_heads"], model.get("attention") or {}
    if attention.get("n_kv_heads") == n_heads:  # set, not defaulted
        log.warning(f"model.attention.n_kv_heads={n_heads} equals model.n_heads: this is multi-head "
                    "attention (model/attention=mha) under another name")
    window, context = attention.get("window"), model["context_length"]
    if isinstance(window, int) and window >= context:
        log.warning(f"model.attention.window={window} is not shorter than model.context_length="
                    f"{context}: every query sees its whole context, so training is full attention "
                    "(the window acts only on longer sequences, e.g. extrapolate=[1,2,4])")


def check_data(plain: dict) -> None:
    """``data.val_fraction`` in (0, 1), and a tokenizer whose ids all have a row in the model."""
    fraction = (plain.get("data") or {}).get("val_fraction")  # 1.5 held out the last half
    if fraction is not None and not (is_number(fraction) and 0 < fraction < 1):
        raise UserError(f"data.val_fraction={fraction!r}: must be a number in (0, 1), e.g. 0.1")
    tokenizer, vocab = (plain.get("data") or {}).get("tokenizer"), plain["model"]["vocab_size"]
    if tokenizer and vocab < (n := tokenizer_size("data.tokenizer", tokenizer)):
        raise UserError(f"model.vocab_size={vocab} is smaller than data.tokenizer={tokenizer}'s "
                        f"{n:,} tokens; use at least {n}")


def build_on_meta(cfg: DictConfig, plain: dict):
    """The LanguageModule built on the meta device, so that the model's, the module's and the
    optimizer's constructors run their own checks without allocating the weights."""
    from lmlab.model import Transformer

    with torch.device("meta"):
        with as_user_error():
            Transformer(plain["model"])  # the model's, before Lightning is imported
        from lmlab.training import build_module  # Lightning: for the module's and optimizer's

        module = build_module(cfg)
        with as_user_error():
            module.configure_optimizers()  # and the optimizer's
    return module


def check_resume(ckpt_path: str, module) -> None:
    """The checkpoint at ``ckpt_path`` fits ``module``, is a training checkpoint, and was
    trained with the schedule and optimization settings this run keeps."""
    from lmlab.checkpoint import check_fits, read_checkpoint
    from lmlab.resume_settings import check_resumable, check_resume_settings
    from lmlab.schedule import check_length

    ckpt = read_checkpoint(ckpt_path, map_location="cpu")
    check_fits(module, ckpt["state_dict"])
    check_resumable(ckpt, ckpt_path)
    check_length(ckpt, module.hparams)  # again when Lightning loads it (LanguageModule)
    check_resume_settings(ckpt.get("hyper_parameters") or {}, dict(module.hparams))
