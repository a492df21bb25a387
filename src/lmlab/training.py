"""One training run, from a checked config to trained checkpoints, a sample and the run record:
the body of ``python train.py`` (``lmlab.job`` guards and checks it first)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from lmlab.budget import match_params
from lmlab.callbacks import DivergenceGuard, ValidateLastStep, progress_bars
from lmlab.config import conf_dir
from lmlab.console import lightning_lines_once
from lmlab.errors import Diverged, UserError, as_user_error
from lmlab.evaluation import score, summary
from lmlab.hardware import peak_memory_bytes, peak_memory_kind, reset_peak_memory, return_freed_memory
from lmlab.interrupts import SigtermAsCtrlC
from lmlab.loggers import WandbRuns, make_loggers
from lmlab.prompts import prompt_text
from lmlab.resume import AtomicCheckpointIO, CsvHistory, RNGState, StepBoundarySignals, requeued_checkpoint
from lmlab.run_limits import stopped_by, sweep_time_limit, tokens_per_step, trainer_limits
from lmlab.run_record import hydra_job, start_record, write_record
from lmlab.sampling import sample_text
from lmlab.throughput import ThroughputMeter
from lmlab.train_clock import TrainClock

log = logging.getLogger("lmlab")


def build_datamodule(cfg: DictConfig, check_windows: bool = True):
    """The datamodule, its data found or tokenized and (``check_windows``, for training) checked
    to hold a window per split; evaluation scores one split and checks that one itself."""
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        if check_windows:
            datamodule.check_windows()
        return datamodule
    except Exception as err:  # instantiate wraps constructor errors; report the cause alone
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise UserError(str(cause)) from None
        raise


def build_module(cfg: DictConfig):
    from lmlab.module import LanguageModule

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    with as_user_error():
        return LanguageModule(model=model_cfg, **OmegaConf.to_container(cfg.module, resolve=True))


def describe(module) -> str:
    m = module.model
    active = m.active_params()
    params = f"{m.num_params():,} parameters" + (
        f" ({active:,} active per token)" if active != m.num_params() else "")
    return f"model: {params}, {m.flops_per_token() / 1e6:,.1f} MFLOPs per token (training)"


def run_training(cfg: DictConfig) -> dict:
    """Train, validate and sample as ``cfg`` says (a config ``validate.check_config`` passed, see
    ``lmlab.job``); return the final metrics. The run record says ``status: running`` while it
    trains and holds the final metrics when it ends."""
    out_dir = Path(cfg.paths.output_dir)
    job = hydra_job()
    record = start_record(out_dir, job, cfg.seed)
    sweep_time_limit(cfg, job)
    with as_user_error():
        budget = match_params(cfg, conf_dir())
    if budget:
        record["budget"] = budget
        log.info(f"budget: {budget['adjusted']} {budget['from']} -> {budget['to']}: "
                 f"{budget['params']:,} {budget['count']} parameters (target {budget['target']:,})")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)  # checks data paths before the model is built
    module = build_module(cfg)
    log.info(describe(module))
    loggers = make_loggers(cfg, job)
    wandb = WandbRuns(loggers)
    try:
        wandb.start(cfg)
        metrics = fit(cfg, module, datamodule, loggers, record, out_dir)
    except BaseException:
        wandb.fail()
        raise
    wandb.finish(metrics, cfg.sample.prompt)
    return metrics


def make_trainer(cfg: DictConfig, loggers: list, extra_callbacks: tuple | list = (), **overrides):
    """(The run's Trainer, its throughput meter, its training clock): the config's callbacks and
    lmlab's own (divergence guard, throughput meter, training clock, RNG state, signals held to
    step boundaries, progress bar), checkpoints written atomically, validation and ``max_time``
    acting at optimizer steps' ends (lmlab.run_limits.trainer_limits); ``overrides`` replace
    ``cfg.trainer`` keys. The clock counts only inside its ``timing()`` block (see ``fit``)."""
    lightning_lines_once()
    # callbacks.<name>=null turns one off (Lightning takes no None among its callbacks)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    meter, clock = ThroughputMeter(), TrainClock()
    kwargs, timer = trainer_limits(cfg, overrides)
    callbacks += [DivergenceGuard(), ValidateLastStep(), *timer, meter, clock, RNGState(),
                  StepBoundarySignals(), SigtermAsCtrlC(), CsvHistory(loggers),
                  *progress_bars(cfg.trainer.get("enable_progress_bar", True) is not False),
                  *extra_callbacks]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                      plugins=[AtomicCheckpointIO()], **kwargs)
    return trainer, meter, clock


def fit(cfg: DictConfig, module, datamodule, loggers: list, record: dict, out_dir: Path) -> dict:
    """Fit, then validate the best checkpoint, sample from it and write the final record."""
    trainer, meter, clock = make_trainer(cfg, loggers)
    ckpt_path = cfg.get("ckpt_path") or requeued_checkpoint(out_dir)
    device = trainer.strategy.root_device
    reset_peak_memory(device)
    with clock.timing():  # train_time_s: this call's wall clock plus the checkpoint's (TrainClock)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if cfg.get("reuse_freed_memory", True):  # set for the training steps (lmlab.cli)
        return_freed_memory()  # the held-out passes below would grow the heap batch by batch

    metrics = fit_metrics(cfg, trainer, module, meter, record, clock.seconds, device)
    if clock.earlier and trainer.is_global_zero:
        log.info(f"training time {clock.seconds:,.1f} s: {clock.session_s:,.1f} s in this session, "
                 f"{clock.earlier:,.1f} s before it (up to the checkpoint it resumed from)")
    if meter.tokens_per_s is not None and trainer.is_global_zero:
        log.info(f"{meter.summary()}; peak memory {metrics['peak_memory_gib']:.2f} GiB "
                 f"({peak_memory_kind(device)})")
    if trainer.fast_dev_run:  # one batch of each loop: no best checkpoint to score or sample
        if trainer.is_global_zero:
            write_record(out_dir, {**metrics, "finished": time.time()})
        return metrics
    if is_sharded(trainer):  # the module holds flat parameter shards now: it cannot reload the
        # best checkpoint nor sample; a single process does both from checkpoints/*.ckpt
        if trainer.is_global_zero:
            write_record(out_dir, {**metrics, "checkpoint": trainer.checkpoint_callback.last_model_path,
                                   "finished": time.time()})
        return metrics
    metrics.update(validate_best(trainer, module, datamodule))
    metrics.update(held_out(cfg, trainer, module, datamodule))
    if trainer.is_global_zero:
        if cfg.sample and cfg.sample.max_new_tokens:
            metrics["sample"] = write_sample(cfg, module, out_dir)
        metrics["finished"] = time.time()
        write_record(out_dir, metrics)
    return metrics


def fit_metrics(cfg: DictConfig, trainer: L.Trainer, module, meter: ThroughputMeter, record: dict,
                train_time_s: float, device) -> dict:
    """The run record's figures once ``trainer.fit`` has returned: size, steps, tokens, training
    time, why it stopped, DDP replicas' checksums, throughput, peak memory on ``device`` and the
    last validation loss. Steps, tokens and ``train_time_s`` count every session of a resumed run;
    tokens/s, MFU and peak memory are this session's (a requeue may land on another device)."""
    m = module.model
    metrics = dict(record, status="completed", params=m.num_params(), active_params=m.active_params(),
                   flops_per_token=m.flops_per_token(), steps=trainer.global_step,
                   world_size=trainer.world_size, train_time_s=train_time_s,
                   stopped_by=stopped_by(trainer), max_time=cfg.trainer.get("max_time"))
    metrics["tokens_per_step"] = tokens_per_step(cfg, trainer, m.context_length)
    metrics["tokens"] = metrics["tokens_per_step"] * trainer.global_step
    if trainer.world_size > 1:  # identical on every rank when DDP kept the replicas in sync
        checksum = sum(p.detach().double().sum() for p in module.parameters())
        metrics["param_checksums"] = trainer.strategy.all_gather(checksum).tolist()
    # a run of one step has no run figure (its warm-up step is left out): that step's own
    tps = meter.tokens_per_s or trainer.callback_metrics.get("train/tokens_per_s")
    if tps is not None:
        metrics.update(tokens_per_s=float(tps), mfu=meter.mfu, peak_flops=meter.peak)
    metrics["peak_memory_gib"] = peak_memory_bytes(device) / 2**30
    last_val = trainer.callback_metrics.get("val/loss")
    if last_val is not None:  # the last validation during training
        metrics.update(final_val_loss=float(last_val), final_val_ppl=math.exp(float(last_val)))
    return metrics


def write_sample(cfg: DictConfig, module, out_dir: Path) -> str:
    """A sample from the module as ``cfg.sample`` says, printed and written to sample.txt."""
    s = cfg.sample
    prompt = prompt_text("sample.prompt", s.prompt)
    text = sample_text(module.model, cfg.data.tokenizer, prompt, seed=cfg.seed,
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                       top_k=s.top_k, top_p=s.top_p)
    (out_dir / "sample.txt").write_text(text)
    print(f"\n----- sample (prompt {s.prompt!r}) -----\n{text}\n-----", flush=True)
    return text


def is_sharded(trainer: L.Trainer) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The path of the checkpoint callback's best checkpoint, or None (then Lightning's
    validate and test use the module's weights as they are)."""
    return getattr(trainer.checkpoint_callback, "best_model_path", "") or None


def validate_best(trainer: L.Trainer, module, datamodule) -> dict:
    """Validation loss of the best checkpoint (the module is left holding its weights). It is not
    logged: the loggers' val/loss is the curve of the validations during training, and a point
    after its end would be an earlier checkpoint's loss again."""
    ckpt = best_checkpoint(trainer)
    loggers, trainer.loggers = trainer.loggers, []
    try:
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False,
                               weights_only=True)[0]["val/loss"]
    finally:
        trainer.loggers = loggers
    if not math.isfinite(val):
        raise Diverged(f"non-finite validation loss ({val}) of the best checkpoint {ckpt}")
    best = getattr(trainer.checkpoint_callback, "best_model_score", None)
    best = min(val, float(best)) if best is not None else val
    if trainer.is_global_zero:
        log.info(f"final validation loss {val:.4f}, perplexity {math.exp(val):.2f} ({ckpt})")
    return {"val_loss": val, "val_ppl": math.exp(val), "checkpoint": ckpt,
            "best_val_loss": best, "best_val_ppl": math.exp(best)}


def held_out(cfg: DictConfig, trainer: L.Trainer, module, datamodule) -> dict:
    """The best checkpoint (chosen on validation) on the test split, and its length
    extrapolation when ``extrapolate`` asks for it (on the test split, else validation)."""
    out = {}
    if datamodule.has_test_split:
        ckpt = best_checkpoint(trainer)
        test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False,
                            weights_only=True)[0]["test/loss"]
        out.update(test_loss=test, test_ppl=math.exp(test))
        if trainer.is_global_zero:
            log.info(f"test loss {test:.4f}, perplexity {math.exp(test):.2f} (the test split, same checkpoint)")
    if trainer.is_global_zero and cfg.get("extrapolate"):
        split = "test" if datamodule.has_test_split else "val"
        # every window of the split at each length: the same text, with more or less context
        result = score(module.model, datamodule, split, cfg.extrapolate, max_windows=None)
        out["extrapolation"] = {k: result[k] for k in ("split", "context_length", "extrapolation")}
        log.info(summary(result))
    return out

