"""The Hydra entry points: ``python train.py``, ``python generate.py``, ``python evaluate.py``
(installed as ``lmlab-train``, ``lmlab-generate``, ``lmlab-evaluate``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from lmlab.checkpoint import load_model
from lmlab.config import conf_dir, register_resolvers
from lmlab.console import quiet_third_party
from lmlab.errors import CheckpointSaveError, Diverged, UserError, check_choice, exit_with
from lmlab.evaluation import check_split, score, summary
from lmlab.extrapolation import check_factors
from lmlab.hardware import reuse_freed_memory
from lmlab.job import train as run_job
from lmlab.overrides import check_argv, finished_run_message
from lmlab.prompts import prompt_texts, stop_strings
from lmlab.sampling import sample_texts
from lmlab.sweep_check import single_run_note
from lmlab.validate import check_device, check_sampling, check_tokenizer_fits, check_value, tokenizer_size

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
    except (Diverged, CheckpointSaveError) as err:  # a fault while running: one line, status 1
        exit_with(err, status=1)


def train() -> None:
    """``python train.py [overrides]``; a misspelt key is refused before Hydra starts the run."""
    register_resolvers()
    argv = sys.argv[1:]
    if (err := check_argv(CONF_DIR, "train", argv) or finished_run_message(argv)) is not None:
        exit_with(err)
    if (note := single_run_note(argv)) is not None:
        print(note, file=sys.stderr)
    _train()


def generate() -> None:
    """``python generate.py ckpt_path=... [overrides]``; a misspelt key is refused in one line."""
    register_resolvers()
    argv = sys.argv[1:]
    if (err := check_argv(CONF_DIR, "generate", argv) or no_checkpoint("generate", argv)) is not None:
        exit_with(err)
    _generate()


def evaluate() -> None:
    """``python evaluate.py ckpt_path=... [overrides]``; a misspelt key is refused in one line."""
    register_resolvers()
    argv = sys.argv[1:]
    if (err := check_argv(CONF_DIR, "evaluate", argv) or no_checkpoint("evaluate", argv)) is not None:
        exit_with(err)
    _evaluate()


def no_checkpoint(script: str, argv: list[str]) -> str | None:
    """The error for generate.py or evaluate.py run without ``ckpt_path`` (Hydra's was a traceback
    ending in MissingMandatoryValue), or None."""
    if any(a.startswith(("ckpt_path=", "-")) for a in argv):
        return None
    return (f"ckpt_path: required, e.g. python {script}.py "
            f"ckpt_path=outputs/runs/<time>/checkpoints/last.ckpt")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _generate(cfg: DictConfig) -> None:
    """Samples from a checkpoint, all in one batch, printed and written to ``<run dir>/samples.txt``.
    With ``stream`` and a single sequence, its tokens are printed as they are produced."""
    try:
        prompts, stop = generation_args(cfg)
        model = load_model(cfg.ckpt_path, cfg.device, compile=cfg.compile)
        check_tokenizer_fits("tokenizer", cfg.tokenizer, model.tok_emb.num_embeddings)
    except (UserError, ValueError) as err:
        exit_with(err)
    live = cfg.stream and len(prompts) * cfg.num_samples == 1
    shown = []  # the prompt is printed with the first piece, after any notice (a cropped prompt)

    def show(row: int, piece: str) -> None:
        print(("" if shown else prompts[0]) + piece, end="", flush=True)
        shown.append(True)

    texts = sample_texts(
        model, cfg.tokenizer, prompts, num_samples=cfg.num_samples, seed=cfg.seed,
        stop=stop, stop_at_eos=cfg.stop_at_eos, on_text=show if live else None,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, use_cache=cfg.use_cache,
    )
    if live:
        show(0, "\n")
    else:
        for i, text in enumerate(texts):
            print(f"----- sample {i + 1}/{len(texts)} -----\n{text}", flush=True)
    Path(cfg.paths.output_dir, "samples.txt").write_text("\n\n".join(texts))


def generation_args(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """generate.py's arguments checked before the checkpoint is read (the first bad one a one-line
    UserError or ValueError): its prompts and stop strings, unescaped."""
    prompts = prompt_texts(cfg.prompt, cfg.get("prompts"))
    check_sampling("", cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    check_value("num_samples", cfg.num_samples, 1, True, False)
    check_value("seed", cfg.seed, 0, True, False)  # as train.py's
    check_choice("compile", cfg.compile, (True, False, None))
    stop = stop_strings(cfg.stop)
    check_device(cfg.device)
    tokenizer_size("tokenizer", cfg.tokenizer)
    return prompts, stop


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def _evaluate(cfg: DictConfig) -> float:
    """Loss and perplexity of a checkpoint on held-out text (``split``), and optionally at other
    context lengths (``extrapolate=[1,2,4,8]``); written to ``<run dir>/eval.json``."""
    quiet_third_party()
    try:
        check_split(cfg.split)
        check_value("data.val_windows", cfg.data.val_windows, 1, True, True)
        for key, value in cfg.model.items():  # it was overwritten with the checkpoint's, silently
            if value is not None:
                raise UserError(f"model.{key}={value}: evaluate.py reads it from the checkpoint"
                                + ("; score other lengths with extrapolate, e.g. extrapolate=[1,2,4,8]"
                                   if key == "context_length" else ""))
        if cfg.data.get("test_windows") is not None:  # train.py's key for its test_loss
            raise UserError(f"data.test_windows={cfg.data.test_windows}: evaluate.py scores "
                            f"data.val_windows windows of the split it scores; pass "
                            f"data.val_windows={cfg.data.test_windows}")
        model = load_model(cfg.ckpt_path, "cpu")
        check_factors(cfg.extrapolate, model.context_length)
        check_tokenizer_fits("data.tokenizer", cfg.data.tokenizer, model.tok_emb.num_embeddings)
        from lmlab.training import build_datamodule  # Lightning: only once the command line is good

        cfg.model.context_length = model.context_length
        cfg.model.vocab_size = model.tok_emb.num_embeddings
        datamodule = build_datamodule(cfg, check_windows=False)  # all of a small file may score
        result = score(model, datamodule, cfg.split, cfg.extrapolate, cfg.data.val_windows)
    except (UserError, ValueError) as err:
        exit_with(err)
    result = {"ckpt_path": cfg.ckpt_path, **result}
    Path(cfg.paths.output_dir, "eval.json").write_text(json.dumps(result, indent=2))
    print(summary(result), flush=True)
    return result["loss"]
