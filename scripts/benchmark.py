"""Micro-benchmarks: `python scripts/benchmark.py <section> [options]`, `--help` lists the sections.

Sections are subcommands; to add one, write a `cmd_<name>(args)` function and register it in
`SECTIONS` with its options.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from bench_common import bench, machine
from bench_generate import OPTIONS as GENERATE_OPTIONS, cmd_generate
from bench_gpu import OPTIONS as GPU_OPTIONS, cmd_gpu
from bench_recompute import cmd_recompute
from bench_train import cmd_overhead, cmd_train
from lmlab.errors import positive_int
from lmlab.hardware import reuse_freed_memory
from lmlab.model.ffn import DenseFFN
from lmlab.model.moe import MoE


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
            out = out + gate[:, e:e + 1] * expert(x)
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
            layer(x).square().mean().backward()
        return run

    print(machine())
    print(f"MoE layer forward+backward: {N} tokens, d_model {d}, {E} GELU experts of width "
          f"{hidden}, top-{k}; dense FFN of width {k * hidden} (same active parameters); "
          f"median of {args.repeats}")
    t = bench({"moe": fwd_bwd(moe), "naive": fwd_bwd(naive), "dense": fwd_bwd(dense)}, args.repeats)
    t_moe, t_naive, t_dense = t["moe"], t["naive"], t["dense"]
    print(f"  moe (sorted dispatch)   {t_moe * 1e3:8.1f} ms")
    print(f"  naive masked loop       {t_naive * 1e3:8.1f} ms   naive / moe = {t_naive / t_moe:.2f}x"
          f"  (target >= 3)")
    print(f"  dense, equal active     {t_dense * 1e3:8.1f} ms   moe / dense = {t_moe / t_dense:.2f}x"
          f"  (target <= 1.5)")


SECTIONS = {
    "train": (cmd_train, "lmlab's training step vs a textbook loop: tokens/s, MFU, ratio", [
        ("overrides", dict(nargs="*", help="config overrides on model=tiny with AdamW (the textbook's "
                                           "architecture), e.g. model.n_layers=2 "
                                           "(default: the default sizes and 6 x 384 x 256)")),
        ("--batch", dict(type=positive_int, default=None, help="default: data.batch_size")),
        ("--repeats", dict(type=positive_int, default=5)),
        ("--compile", dict(action="store_true", help="also time lmlab with model.compile=true")),
        ("--bf16", dict(action="store_true", help="time bf16 even where it is emulated (slow)")),
    ]),
    "overhead": (cmd_overhead, "tokens/s of the real Lightning loop vs lmlab's raw step", [
        ("overrides", dict(nargs="*", help="config overrides (default: the default run)")),
        ("--steps", dict(type=positive_int, default=12, help="steps per round")),
        ("--rounds", dict(type=positive_int, default=4, help="Lightning runs, each followed by as many raw steps")),
        ("--cache-dir", dict(default=None, help="tokenized corpus cache (default: a temp dir)")),
        ("--bf16", dict(action="store_true", help="time bf16 even where it is emulated (slow)")),
    ]),
    "generate": (cmd_generate, "KV-cache decoding vs recomputation and transformers' generate()",
                 GENERATE_OPTIONS),
    "gpu": (cmd_gpu, "GPT-2 124M, context 1024, bf16, compiled, on a GPU: tokens/s and MFU",
            GPU_OPTIONS),
    "recompute": (cmd_recompute, "activation checkpointing vs the plain step: time and memory", [
        ("overrides", dict(nargs="*", help="config overrides (default: the default model, and at "
                                           "context 1024)")),
        ("--repeats", dict(type=positive_int, default=5)),
        ("--bf16", dict(action="store_true", help="time bf16 even where it is emulated (slow)")),
    ]),
    "moe": (cmd_moe, "MoE layer vs a naive masked loop and an equal-active dense FFN", [
        ("--tokens", dict(type=positive_int, default=4096)),
        ("--d-model", dict(type=positive_int, default=256)),
        ("--experts", dict(type=positive_int, default=8)),
        ("--top-k", dict(type=positive_int, default=2)),
        ("--hidden", dict(type=positive_int, default=None, help="expert width (default 4 * d_model / top_k)")),
        ("--repeats", dict(type=positive_int, default=10)),
    ]),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    threads = dict(type=positive_int, help="torch threads (default: torch's)")
    parser.add_argument("--threads", default=None, **threads)
    sub = parser.add_subparsers(dest="section", required=True)
    for name, (fn, help_, options) in SECTIONS.items():
        p = sub.add_parser(name, help=help_)
        for flag, kw in options:
            p.add_argument(flag, **kw)
        p.add_argument("--threads", default=argparse.SUPPRESS, **threads)  # before or after the section
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    if args.section == "moe" and args.top_k > args.experts:
        sub.choices["moe"].error(f"argument --top-k: {args.top_k} is more than --experts {args.experts}")
    if getattr(args, "compile", False):  # no pool of compile workers left running beside the timings
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    reuse_freed_memory()  # as train.py does
    if args.threads:
        torch.set_num_threads(args.threads)
    args.fn(args)


if __name__ == "__main__":
    main()
