"""`benchmark.py recompute`: what activation checkpointing (model.activation_checkpointing=true)
costs in step time and saves in memory, against the plain step of the same model, in one run."""

from __future__ import annotations

import statistics

import torch

from bench_common import bench_times, compose, machine
from bench_train import lmlab_step, precisions
from lmlab.hardware import cpu_bytes_kept

SHAPES = {  # name -> config overrides on the default model
    "default model": [],
    "default model at context 1024, batch 4": ["model.context_length=1024", "data.batch_size=4"],
}
ON = "model.activation_checkpointing=true"
MB = 2**20


def kept(module, batch: torch.Tensor, bf16: bool) -> tuple[int, int]:
    """Bytes the forward pass leaves for backward: the blocks' (their activations and output) and
    the whole loss's (with what the LM head keeps: its gradient buffer, or past head_loss's
    KEPT_BYTES its two gradients)."""
    x, y = batch[:, :-1], batch[:, 1:]
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        _, blocks = cpu_bytes_kept(lambda: module.model.features(x))
        _, whole = cpu_bytes_kept(lambda: module.model.loss(x, y))
    return blocks, whole


def cmd_recompute(args) -> None:
    from lmlab.training import build_module

    shapes = {" ".join(args.overrides): args.overrides} if args.overrides else SHAPES
    configs = {name: compose(overrides) for name, overrides in shapes.items()}  # refused early
    print(machine())
    for name, overrides in shapes.items():
        cfg = configs[name]
        torch.manual_seed(0)
        modules = {"plain": build_module(cfg), "checkpointed": build_module(compose([*overrides, ON]))}
        modules["checkpointed"].load_state_dict(modules["plain"].state_dict())
        B, T = cfg.data.batch_size, cfg.model.context_length
        batch = torch.randint(0, cfg.model.vocab_size, (B, T + 1))
        print(f"{name}: {modules['plain'].model.num_params():,} parameters, batch {B} x {T} tokens, "
              f"median of {args.repeats}")
        for dtype_name, dtype in precisions(args.bf16):
            bf16 = dtype == torch.bfloat16
            steps = {k: lmlab_step(m, batch, bf16) for k, m in modules.items()}
            times = {k: statistics.median(v) for k, v in bench_times(steps, args.repeats, 1).items()}
            memory = {k: kept(m, batch, bf16) for k, m in modules.items()}
            for k, m in modules.items():
                blocks, whole = memory[k]
                print(f"  {dtype_name} {k:12s} {times[k] * 1e3:8.1f} ms/step {B * T / times[k]:8.0f} "
                      f"tokens/s   kept for backward: blocks {blocks / MB:7.1f} MB, whole loss "
                      f"{whole / MB:7.1f} MB")
            (b0, w0), (b1, w1) = memory["plain"], memory["checkpointed"]
            ratio = times["checkpointed"] / times["plain"]
            print(f"  {dtype_name} checkpointed / plain: step time {ratio:.2f}x, "
                  f"blocks' memory {b1 / b0:.2f}x, whole loss's {w1 / w0:.2f}x")
