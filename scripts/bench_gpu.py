"""`benchmark.py gpu`: GPT-2 124M at context 1024 on a GPU - bf16 autocast, torch.compile, flash
attention (``kernel=auto`` is ``sdpa`` on a GPU) - timed beside the textbook loop on the same
device and batch (compiled whole, as nanoGPT does), with tokens/s, the ratio, and MFU against the
GPU's dense bf16 peak from its data sheet and against a bf16 matmul timed in the same run;
``--profile N`` then lists the kernels that took the step's time.

``--device cpu`` with small overrides runs the same code on a CPU (the test suite does, so that
the section works on the day a GPU is at hand); its MFU is then against the matmul alone.
"""

from __future__ import annotations

import torch

from omegaconf import OmegaConf

from bench_common import bench, compose, machine
from bench_train import lmlab_step
from textbook import TextbookGPT, adamw, train_step
from lmlab.errors import positive_int
from lmlab.hardware import data_sheet_peak, measured_matmul_flops

GPT2_124M = ["model=gpt2", "module/optimizer=adamw"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"device: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}")
    return machine()


def synced(step, device: torch.device):
    """``step`` followed by a wait for the device, so that a timer around it counts its kernels."""
    def run():
        step()
        synchronize(device)
    return run


def cmd_gpu(args) -> None:
    from lmlab.training import build_module

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"benchmark.py gpu: error: --device {args.device}, but torch {torch.__version__} "
                         "sees no CUDA device here (--device cpu runs the section on the CPU)")
    compiled = not args.no_compile
    overrides = [*GPT2_124M, f"model.compile={str(compiled).lower()}", *args.overrides]
    print(device_line(device))
    torch.manual_seed(0)
    cfg = compose(overrides)
    module = build_module(cfg).to(device)
    model = module.model
    B, T = args.batch, model.context_length
    batch = torch.randint(0, model.cfg["vocab_size"], (B, T + 1), device=device)
    textbook = TextbookGPT.like(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    textbook_opt = adamw(textbook, lr=1e-4)
    textbook_model = torch.compile(textbook) if compiled else textbook  # nanoGPT compiles it whole
    steps = {"lmlab": lmlab_step(module, batch, bf16=True),
             "textbook": lambda: train_step(textbook_model, textbook_opt, batch, bf16=True)}
    flops = model.flops_per_token() * B * T
    print(f"training step: {model.num_params():,} parameters, batch {B} x {T} tokens, bf16 autocast, "
          f"{'compiled' if compiled else 'eager'}; {args.warmup} warm-up steps, median of {args.steps} taken in turns")
    times = bench({name: synced(fn, device) for name, fn in steps.items()}, args.steps, args.warmup)
    t = times["lmlab"]
    measured = measured_matmul_flops(torch.bfloat16, args.matmul_n, str(device))
    for name, seconds in times.items():
        print(f"  {name:9s}{seconds * 1e3:8.1f} ms/step {B * T / seconds:10.0f} tokens/s "
              f"{flops / seconds / 1e12:7.1f} TFLOP/s")
    print(f"  lmlab / textbook: {times['textbook'] / t:.2f}x the tokens/s")
    print(f"  MFU {flops / t / measured:6.1%} against a {args.matmul_n} x {args.matmul_n} bf16 matmul "
          f"timed here ({measured / 1e12:.1f} TFLOP/s)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    if (peak := data_sheet_peak(name)) is not None:
        print(f"  MFU {flops / t / peak:6.1%} against the data sheet's dense bf16 peak "
              f"({peak / 1e12:.0f} TFLOP/s; target >= 45%)")
    else:
        print(f"  no data-sheet peak known for {name or device.type!r}")
    if args.profile:
        profile(steps["lmlab"], device, args.profile)


def profile(step, device: torch.device, steps: int, rows: int = 25) -> None:
    """Where a step's time goes: torch.profiler over ``steps`` steps, the kernels (or CPU ops)
    that took the most device time, and the host's and the device's totals."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {steps} steps, by {sort}:")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70))


OPTIONS = [
    ("overrides", dict(nargs="*", help="config overrides on model=gpt2 with AdamW")),
    ("--device", dict(default="cuda", help="default: cuda")),
    ("--batch", dict(type=positive_int, default=16)),
    ("--steps", dict(type=positive_int, default=20)),
    ("--warmup", dict(type=int, default=5, help="untimed steps first (compilation)")),
    ("--no-compile", dict(action="store_true", help="eager instead of model.compile=true")),
    ("--matmul-n", dict(type=positive_int, default=8192, help="size of the peak-measuring matmul")),
    ("--profile", dict(type=int, default=0, metavar="STEPS",
                       help="then profile this many steps: the kernels that took the most time")),
]
