"""Hydra entry points: ``python train.py``, ``python generate.py``, ``python evaluate.py``."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lmlab.budget import match_params
from lmlab.hardware import fast_precision, reuse_freed_memory
from lmlab.model.moe import active_params
from lmlab.run_limits import stopped_by, sweep_time_limit, tokens_per_step

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


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the run is stopped and recorded as failed."""


class DivergenceGuard(L.Callback):
    """Stops a run at the first non-finite training loss, so a diverging arm of a sweep fails fast
    and is recorded as failed instead of training on NaNs until max_steps."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()).all():
            raise Diverged(f"non-finite training loss ({float(loss):.4g}) at step {trainer.global_step}")


class ThroughputMeter(L.Callback):
    """Training tokens per second over the whole run: tokens of all training batches but the first
    (warm-up) over their summed step times, validation and checkpointing excluded. Steadier than
    the per-step ``train/tokens_per_s`` the module logs."""

    def __init__(self):
        self.tokens, self.seconds, self._t0, self._batches = 0, 0.0, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batches += 1
        if self._t0 is not None and self._batches > 1:
            self.seconds += time.perf_counter() - self._t0
            self.tokens += (batch.shape[1] - 1) * batch.shape[0] * trainer.world_size

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


def _hydra_job() -> dict:
    """What Hydra knows about this job: mode, overrides, the sweep's varied overrides, job number.
    Empty outside a Hydra app (e.g. when run_training is called from a test or a notebook)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    info = {"multirun": hc.mode == RunMode.MULTIRUN, "overrides": overrides,
            "variant": overrides, "job_num": hc.job.get("num"), "sweep_dir": None}
    if info["multirun"]:
        info["sweep_dir"] = str(hc.sweep.dir)
        swept = _swept_keys(hc)
        info["variant"] = [o for o in overrides if _key(o) in swept]
    return info


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _swept_keys(hc) -> set[str]:
    """Keys the sweep varies: those of hydra.sweeper.params and the command line's sweeps
    (``a=1,2``, ``choice(..)``, ``range(..)``, ``interval(..)``), read from the sweep's multirun.yaml."""
    keys = {_key(str(k)) for k in (hc.sweeper.get("params") or {})}
    try:
        mr = OmegaConf.load(Path(str(hc.sweep.dir)) / "multirun.yaml")
        for o in mr.hydra.overrides.task:
            value = o.split("=", 1)[-1]
            if "," in value or value.startswith(("choice(", "range(", "interval(", "tag(", "glob(")):
                keys.add(_key(o))
    except Exception:  # no multirun.yaml (e.g. another launcher's layout): every override counts
        keys |= {_key(o) for o in hc.overrides.task}
    return keys


def _wandb_identity(job: dict, cfg: DictConfig) -> dict:
    """W&B run name, group and tags: named by the job's varied overrides, grouped by sweep
    directory, tagged by variant (the varied overrides other than the seed)."""
    if not job:
        return {}
    variant = job["variant"] or job["overrides"]
    name = ",".join(variant) or cfg.get("task_name", "train")
    if job["multirun"] and job["job_num"] is not None:
        name = f"{job['job_num']}:{name}"
    ident = {"name": name[:128], "tags": [o[:64] for o in variant if _key(o) != "seed"]}
    if job["sweep_dir"]:
        sweep = Path(job["sweep_dir"])
        ident["group"] = f"{sweep.parent.name}/{sweep.name}"
    return ident


def _make_loggers(cfg: DictConfig, job: dict) -> list:
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        kwargs = {}
        if c.get("_target_", "").endswith("WandbLogger"):  # fill in what the config leaves open
            ident = _wandb_identity(job, cfg)
            kwargs = {k: v for k, v in ident.items() if not c.get(k)}
        loggers.append(hydra.utils.instantiate(c, **kwargs))
    return loggers


def _wandb_loggers(loggers: list) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)  # a report reading a running sweep never sees half a file


def run_training(cfg: DictConfig) -> dict:
    """Train, validate and sample as ``cfg`` says; return the final metrics. ``<run dir>/metrics.json``
    says ``status: running`` while it trains and holds the final metrics when it ends."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = _hydra_job()
    record = {"status": "running", "overrides": job.get("overrides", []),
              "variant": job.get("variant", []), "seed": cfg.seed, "started": time.time()}
    _write_json(out_dir / "metrics.json", record)
    sweep_time_limit(cfg, job)
    try:
        budget = match_params(cfg, CONF_DIR)
    except ValueError as err:
        raise UserError(str(err)) from None
    if budget:
        record["budget"] = budget
        log.info(f"budget: {budget['adjusted']} {budget['from']} -> {budget['to']}: "
                 f"{budget['params']:,} {budget['count']} parameters (target {budget['target']:,})")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)  # checks data paths before the model is built
    module = build_module(cfg)
    log.info(describe(module))
    loggers = _make_loggers(cfg, job)
    wandb_loggers = _wandb_loggers(loggers)
    try:
        for wl in wandb_loggers:  # the whole resolved config, not only the module's hparams
            wl.experiment.config.update(OmegaConf.to_container(cfg, resolve=True),
                                        allow_val_change=True)
        metrics = _fit(cfg, module, datamodule, loggers, record, out_dir)
        for wl in wandb_loggers:
            wl.experiment.summary.update({k: v for k, v in metrics.items()
                                          if isinstance(v, (int, float, str)) and k != "started"})
            if metrics.get("sample"):
                wl.log_text(key="samples", columns=["step", "prompt", "sample"],
                            data=[[metrics["steps"], cfg.sample.prompt, metrics["sample"]]])
    except BaseException:
        for wl in wandb_loggers:
            wl.experiment.finish(exit_code=1)  # marked failed in W&B; the next job starts a new run
        raise
    for wl in wandb_loggers:
        wl.experiment.finish()  # one W&B run per job, also within one multirun process
    return metrics


def _fit(cfg: DictConfig, module, datamodule, loggers: list, record: dict, out_dir: Path) -> dict:
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    meter = ThroughputMeter()
    callbacks += [DivergenceGuard(), meter]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    m = module.model
    metrics = dict(record, status="completed", params=m.num_params(), active_params=active_params(m),
                   flops_per_token=m.flops_per_token(), steps=trainer.global_step,
                   world_size=trainer.world_size, train_time_s=time.perf_counter() - t0,
                   stopped_by=stopped_by(trainer), max_time=cfg.trainer.get("max_time"))
    metrics["tokens_per_step"] = tokens_per_step(cfg, trainer, m.context_length)
    metrics["tokens"] = metrics["tokens_per_step"] * trainer.global_step
    if trainer.world_size > 1:  # identical on every rank when DDP kept the replicas in sync
        checksum = sum(p.detach().double().sum() for p in module.parameters())
        metrics["param_checksums"] = trainer.strategy.all_gather(checksum).tolist()
    tps = meter.tokens_per_s or trainer.callback_metrics.get("train/tokens_per_s")
    if tps is not None:
        metrics["tokens_per_s"] = float(tps)
    last_val = trainer.callback_metrics.get("val/loss")
    if last_val is not None:  # the last validation during training
        metrics.update(final_val_loss=float(last_val), final_val_ppl=math.exp(float(last_val)))
    if trainer.fast_dev_run:
        return metrics
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    val = results[0]["val/loss"]
    if not math.isfinite(val):
        raise Diverged(f"non-finite validation loss ({val}) of the best checkpoint {ckpt}")
    metrics.update(val_loss=val, val_ppl=math.exp(val), checkpoint=ckpt)
    best = getattr(trainer.checkpoint_callback, "best_model_score", None)
    best = min(val, float(best)) if best is not None else val
    metrics.update(best_val_loss=best, best_val_ppl=math.exp(best))
    if datamodule.has_test_split:  # chosen on validation, compared on test
        test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]["test/loss"]
        metrics.update(test_loss=test, test_ppl=math.exp(test))
    if trainer.is_global_zero and cfg.get("extrapolate"):
        from lmlab.evaluation import score, summary

        split = "test" if datamodule.has_test_split else "val"
        # data.val_windows windows at each length: at 1x exactly the windows of test_loss
        result = score(module.model, datamodule, split, cfg.extrapolate, cfg.data.val_windows)
        metrics["extrapolation"] = {k: result[k] for k in ("split", "context_length", "extrapolation")}
        log.info(summary(result))
    if trainer.is_global_zero:
        log.info(f"final validation loss {val:.4f}, perplexity {math.exp(val):.2f} ({ckpt})")
        s = cfg.sample
        if s and s.max_new_tokens:
            text = sample_text(module, cfg.data.tokenizer, s.prompt, max_new_tokens=s.max_new_tokens,
                               temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=cfg.seed)
            (out_dir / "sample.txt").write_text(text)
            metrics["sample"] = text
            print(f"\n----- sample (prompt {s.prompt!r}) -----\n{text}\n-----", flush=True)
        metrics["finished"] = time.time()
        _write_json(out_dir / "metrics.json", metrics)
    return metrics


def record_failure(cfg: DictConfig, err: BaseException) -> dict:
    """Write ``<run dir>/metrics.json`` with ``status: failed`` and the error, for the report."""
    job = _hydra_job()
    record = {"status": "failed", "error": f"{type(err).__name__}: {err}".strip(),
              "overrides": job.get("overrides", []), "variant": job.get("variant", []),
              "seed": cfg.get("seed"), "finished": time.time()}
    try:
        out_dir = Path(cfg.paths.output_dir)
    except Exception:  # the config itself is broken: Hydra's own job dir
        from hydra.core.hydra_config import HydraConfig
        out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        old = json.loads((out_dir / "metrics.json").read_text())
        record = {**old, **record}
    except Exception:
        pass
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "metrics.json", record)
    except Exception as write_err:  # never hide the original error behind this one
        log.error(f"could not write the failure record: {write_err}")
    return record


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """One run. In a multirun, a failing or diverging job is recorded as failed in its
    metrics.json and returns NaN so the other jobs go on (Hydra's sweepers would otherwise raise
    the first failure and stop); a single run fails with a one-line error or the traceback."""
    torch.set_float32_matmul_precision("high")
    if cfg.get("reuse_freed_memory", True):
        reuse_freed_memory()
    try:
        metrics = run_training(cfg)
    except Exception as err:
        record = record_failure(cfg, err)
        if _hydra_job().get("multirun"):
            log.error(f"job failed, the sweep goes on: {record['error']}", exc_info=not isinstance(
                err, (UserError, Diverged)))
            return float("nan")  # Optuna marks a NaN trial as failed
        if isinstance(err, UserError):
            _fail(err)
        raise
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
    """Loss and perplexity of a checkpoint on held-out text (``split``), and optionally at other
    context lengths (``extrapolate=[1,2,4,8]``); written to ``<run dir>/eval.json``."""
    from lmlab.evaluation import score, summary

    try:
        module = load_module(cfg.ckpt_path, "cpu")
        cfg.model.context_length = module.model.context_length
        datamodule = build_datamodule(cfg)
        result = score(module.model, datamodule, cfg.split, cfg.extrapolate, cfg.data.val_windows)
    except (UserError, ValueError) as err:
        _fail(err)
    result = {"ckpt_path": cfg.ckpt_path, **result}
    Path(cfg.paths.output_dir, "eval.json").write_text(json.dumps(result, indent=2))
    print(summary(result), flush=True)
    return result["loss"]
