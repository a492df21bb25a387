"""`benchmark.py train` and `benchmark.py overhead`: lmlab's training step against a textbook
loop over the same architecture, and the Lightning loop against lmlab's raw step."""

from __future__ import annotations

import statistics
import time

import torch

from bench_common import bench_times, compose, machine, matmul, matmul_peak
from lmlab.hardware import cpu_has_native_bf16
from textbook import TextbookGPT, adamw, train_step
from textbook_process import TextbookProcess


# The textbook loop is GPT-2 style: lmlab is timed on the same architecture (model=tiny, the
# default model's sizes) with AdamW, like for like.
SAME_ARCHITECTURE = ["model=tiny", "module/optimizer=adamw"]
SHAPES = {  # name -> config overrides
    "default sizes": SAME_ARCHITECTURE,
    "6 x 384, context 256": [*SAME_ARCHITECTURE, "model.n_layers=6", "model.d_model=384",
                             "model.n_heads=6", "model.context_length=256"],
}


def lmlab_step(module, batch: torch.Tensor, bf16: bool):
    """lmlab's raw step, as LanguageModule trains outside Lightning: its loss, its optimizer and
    schedule, gradient clipping at 1.0."""
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    x, y = batch[:, :-1], batch[:, 1:]

    def run():
        with torch.autocast(batch.device.type, torch.bfloat16, enabled=bf16):
            loss, _ = module.model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return run


def precisions(force_bf16: bool):
    yield "fp32", torch.float32
    if force_bf16 or cpu_has_native_bf16():
        yield "bf16", torch.bfloat16
    else:
        print("  bf16: skipped, this CPU has no AVX512-BF16/AMX (emulated bf16 is ~40x slower; "
              "--bf16 runs it anyway)")


def cmd_train(args) -> None:
    """Per shape and precision: lmlab's step vs the textbook step (and lmlab compiled with
    --compile), interleaved, with tokens/s and MFU against the matmul peak of that precision. Each
    line gives the median step and, at its end, the fastest and slowest round."""
    from omegaconf import OmegaConf

    shapes = {" ".join(args.overrides): [*SAME_ARCHITECTURE, *args.overrides]} if args.overrides else SHAPES
    configs = {shape: compose(overrides) for shape, overrides in shapes.items()}  # refused before Lightning loads
    from lmlab.training import build_module

    print(machine())
    for shape, overrides in shapes.items():
        cfg = configs[shape]
        torch.manual_seed(0)
        module = build_module(cfg)
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        textbook = TextbookGPT.like(model_cfg)
        B, T = args.batch or cfg.data.batch_size, module.model.context_length
        batch = torch.randint(0, model_cfg["vocab_size"], (B, T + 1))
        flops = module.model.flops_per_token() * B * T
        print(f"training step, {shape}: {module.model.num_params():,} parameters, batch {B} x {T} "
              f"tokens, median of {args.repeats}")
        for name, dtype in precisions(args.bf16):
            bf16 = dtype == torch.bfloat16
            steps = {"lmlab": lmlab_step(module, batch, bf16)}
            if args.compile:
                compiled = build_module(compose(overrides + ["model.compile=true"]))
                steps["lmlab compiled"] = lmlab_step(compiled, batch, bf16)
            opt = adamw(textbook, lr=1e-4)
            steps["textbook"] = lambda: train_step(textbook, opt, batch, bf16)
            steps["matmul"] = matmul(dtype)  # the peak, timed in the same rounds as the steps
            times = bench_times(steps, args.repeats, warmup=2 if args.compile else 1)
            alone = TextbookProcess(model_cfg, B, bf16)  # then the textbook as it runs by itself
            times["textbook alone"] = alone.step_times(warmup=1, repeats=args.repeats)
            alone.close()
            peak = matmul_peak(steps["matmul"], times.pop("matmul"))
            t = {name: statistics.median(ts) for name, ts in times.items()}
            for step_name, s in t.items():
                fastest, slowest = min(times[step_name]) * 1e3, max(times[step_name]) * 1e3
                print(f"  {name} {step_name:15s} {s * 1e3:8.1f} ms/step {B * T / s:8.0f} tokens/s "
                      f"{flops / s / 1e9:7.1f} GFLOP/s  MFU {flops / s / peak:6.1%} "
                      f"(matmul peak {peak / 1e9:.0f} GFLOP/s; rounds {fastest:.0f}-{slowest:.0f} ms)")
            for step_name in t:
                if not step_name.startswith("textbook"):
                    print(f"  {name} textbook / {step_name}: {t['textbook'] / t[step_name]:.2f}x   "
                          f"textbook alone / {step_name}: {t['textbook alone'] / t[step_name]:.2f}x")
            if "lmlab compiled" in t:
                print(f"  {name} compile speed-up (lmlab / lmlab compiled): "
                      f"{t['lmlab'] / t['lmlab compiled']:.2f}x")


class StepClock:
    """Wall time from one training batch's start to the next's: everything the loop does."""

    def __new__(cls):
        import lightning as L

        class _Clock(L.Callback):
            def __init__(self):
                self.starts: list[float] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                self.starts.append(time.perf_counter())

            def step_times(self, skip: int = 2) -> list[float]:
                return [b - a for a, b in zip(self.starts[skip:], self.starts[skip + 1:])]

        return _Clock()


def lightning_steps(cfg, steps: int) -> list[float]:
    """Step times of a real `python train.py` loop (the Trainer `train.py` makes: its callbacks,
    CSV logger, clipping, progress bar) without validation, checkpoint writes aside."""
    import hydra
    import lightning as L

    from lmlab.training import build_datamodule, build_module, make_trainer

    L.seed_everything(0, verbose=False)
    module, data = build_module(cfg), build_datamodule(cfg)
    clock = StepClock()
    trainer, *_ = make_trainer(cfg, [hydra.utils.instantiate(cfg.logger.csv)], [clock], max_steps=steps,
                               val_check_interval=None, limit_val_batches=0, max_time=None)
    trainer.fit(module, datamodule=data)
    return clock.step_times()


def cmd_overhead(args) -> None:
    """The Lightning loop's step against lmlab's raw step of the same model and batch size,
    alternating rounds of each so that the machine's load falls on both alike."""
    import tempfile

    compose(args.overrides)  # a bad override is refused before Lightning loads
    from lmlab.training import build_module

    print(machine())
    for name, dtype in precisions(args.bf16):
        precision = "bf16-mixed" if dtype == torch.bfloat16 else "32-true"
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose(args.overrides + [f"trainer.precision={precision}", f"paths.output_dir={tmp}",
                                            f"paths.cache_dir={args.cache_dir or tmp}"])
            module = build_module(cfg)
            B, T = cfg.data.batch_size, module.model.context_length
            batch = torch.randint(0, cfg.model.vocab_size, (B, T + 1))
            raw_step = lmlab_step(module, batch, dtype == torch.bfloat16)
            lit, raw = [], []
            for _ in range(args.rounds):
                lit += lightning_steps(cfg, args.steps)
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    raw_step()
                    raw.append(time.perf_counter() - t0)
        t_lit, t_raw = statistics.median(lit), statistics.median(raw)
        print(f"  {name}: Lightning loop {B * T / t_lit:7.0f} tokens/s, raw step {B * T / t_raw:7.0f} "
              f"tokens/s: loop overhead {t_lit / t_raw - 1:+.1%} (target <= 5%; median of "
              f"{len(lit)} and {len(raw)} steps)")
