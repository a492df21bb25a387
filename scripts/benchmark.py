"""Micro-benchmarks: `python scripts/benchmark.py <section> [options]`, `--help` lists the sections.

Sections are subcommands; to add one, write a `cmd_<name>(args)` function and register it in
`SECTIONS` with its options.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from lmlab.hardware import cpu_has_native_bf16, fast_precision, reuse_freed_memory
from lmlab.model.ffn import DenseFFN
from lmlab.model.moe import MoE


def bench(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each ``fns[name]()`` over ``repeats`` rounds after ``warmup`` rounds. The
    functions take turns within each round, so a busy machine slows them alike."""
    times = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


# ---- moe -------------------------------------------------------------------------------------
class NaiveMoE(nn.Module):
    """The textbook masked MoE: every expert runs over all tokens, and each token keeps the output
    of an expert only where the router chose it (its weight is zero elsewhere) - masking tokens
    expert by expert. Same parameters and routing as ``moe``."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.moe = moe

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        _, _, choice, weights = self.moe.route(x)
        gate = torch.zeros(x.shape[0], self.moe.n_experts, dtype=x.dtype).scatter(1, choice, weights)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.moe.experts):
            out = out + gate[:, e:e + 1] * expert(x)[0]
        return out.reshape(shape)


def cmd_moe(args) -> None:
    torch.manual_seed(0)
    d, E, k, N = args.d_model, args.experts, args.top_k, args.tokens
    hidden = args.hidden or 4 * d // k  # per expert; top_k experts = one 4d dense FFN
    moe = MoE(d, n_experts=E, top_k=k, expert="gelu", hidden_dim=hidden, bias=True)
    naive = NaiveMoE(moe)
    dense = DenseFFN(d, hidden_dim=k * hidden, bias=True)  # the same active parameters
    x = torch.randn(N, d, requires_grad=True)

    def fwd_bwd(layer):
        def run():
            y = layer(x)
            y = y[0] if isinstance(y, tuple) else y
            y.square().mean().backward()
        return run

    print(f"MoE layer forward+backward: {N} tokens, d_model {d}, {E} GELU experts of width "
          f"{hidden}, top-{k}; dense FFN of width {k * hidden} (same active parameters); "
          f"{torch.get_num_threads()} threads, median of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t = bench({"moe": fwd_bwd(moe), "naive": fwd_bwd(naive), "dense": fwd_bwd(dense)}, args.repeats)
    t_moe, t_naive, t_dense = t["moe"], t["naive"], t["dense"]
    print(f"  moe (sorted dispatch)   {t_moe * 1e3:8.1f} ms")
    print(f"  naive masked loop       {t_naive * 1e3:8.1f} ms   naive / moe = {t_naive / t_moe:.2f}x"
          f"  (target >= 3)")
    print(f"  dense, equal active     {t_dense * 1e3:8.1f} ms   moe / dense = {t_moe / t_dense:.2f}x"
          f"  (target <= 1.5)")


# ---- train ----------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    """Measured FLOP/s of an n x n matmul in ``dtype`` on this machine: the MFU denominator,
    measured in the same run rather than taken from a data sheet."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t = bench({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * n**3 / t


def cmd_train(args) -> None:
    """Training-step throughput of a composed model, in fp32 and bf16 autocast, with MFU against
    the matmul peak of the same precision measured in the same run."""
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lmlab.config import conf_dir, register_resolvers
    from lmlab.model import Transformer

    register_resolvers()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(0)
    model = Transformer(OmegaConf.to_container(cfg.model, resolve=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, T = args.batch, model.context_length
    x = torch.randint(0, model.cfg["vocab_size"], (B, T + 1))

    def step(bf16: bool):
        def run():
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = model(x[:, :-1]).logits
            F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    flops = model.flops_per_token() * B * T
    print(f"training step: {' '.join(args.overrides) or 'default model'}, {model.num_params():,} "
          f"parameters, batch {B} x {T} tokens, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not (args.bf16 or cpu_has_native_bf16()):
            print("  bf16: skipped, this CPU has no AVX512-BF16/AMX (emulated bf16 is ~40x slower; "
                  "--bf16 runs it anyway)")
            continue
        peak = matmul_peak(dtype)
        t = bench({name: step(name == "bf16")}, args.repeats, warmup=1)[name]
        results[name] = t
        print(f"  {name}: {t * 1e3:8.1f} ms/step  {B * T / t:9.0f} tokens/s  "
              f"{flops / t / 1e9:7.1f} GFLOP/s  matmul peak {peak / 1e9:7.1f} GFLOP/s  "
              f"MFU {flops / t / peak:6.1%}")
    if len(results) == 2:
        print(f"  bf16 / fp32 step time: {results['bf16'] / results['fp32']:.2f}x "
              f"(precision auto picks {'bf16-mixed' if results['bf16'] < results['fp32'] else '32-true'}"
              f" by that measure; lmlab.hardware.fast_precision() says {fast_precision()})")


SECTIONS = {
    "train": (cmd_train, "training-step tokens/s and MFU of a composed model, fp32 and bf16", [
        ("overrides", dict(nargs="*", help="config overrides, e.g. model=llama model.n_layers=2")),
        ("--batch", dict(type=int, default=16)),
        ("--repeats", dict(type=int, default=3)),
        ("--bf16", dict(action="store_true", help="time bf16 even where it is emulated (slow)")),
    ]),
    "moe": (cmd_moe, "MoE layer vs a naive masked loop and an equal-active dense FFN", [
        ("--tokens", dict(type=int, default=4096)),
        ("--d-model", dict(type=int, default=256)),
        ("--experts", dict(type=int, default=8)),
        ("--top-k", dict(type=int, default=2)),
        ("--hidden", dict(type=int, default=None, help="expert width (default 4 * d_model / top_k)")),
        ("--repeats", dict(type=int, default=10)),
    ]),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    sub = parser.add_subparsers(dest="section", required=True)
    for name, (fn, help_, options) in SECTIONS.items():
        p = sub.add_parser(name, help=help_)
        for flag, kw in options:
            p.add_argument(flag, **kw)
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    reuse_freed_memory()  # as train.py does
    if args.threads:
        torch.set_num_threads(args.threads)
    args.fn(args)


if __name__ == "__main__":
    main()
