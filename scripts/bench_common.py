"""What every benchmark section shares: interleaved timing, the machine line, the matmul peak."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lmlab.hardware import PEAK_MATMUL_N


def compose(overrides: list[str]):
    """The train config with ``overrides``, as `python train.py OVERRIDES` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lmlab.config import conf_dir, register_resolvers
    from lmlab.overrides import check_argv

    register_resolvers()
    if (err := check_argv(conf_dir(), "train", overrides)) is not None:
        raise SystemExit(f"error: {err}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def bench_times(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each ``fns[name]()`` in each of ``repeats`` rounds after ``warmup`` rounds. The
    functions take turns within each round, so a busy machine slows them alike."""
    times = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def bench(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed in turns (see bench_times)."""
    return {name: statistics.median(t) for name, t in bench_times(fns, repeats, warmup).items()}


def machine() -> str:
    """One line naming the CPU, its matrix-relevant flags, threads and load: printed beside every
    figure, because figures from different machines are not comparable."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = set(next(l for l in info.splitlines() if l.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        name, flags = platform.processor() or "unknown CPU", set()
    have = [f for f in FLAGS if f in flags]
    return (f"machine: {name} ({os.cpu_count()} CPUs; {' '.join(have) or 'no AVX2'}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f}")


MATMUL_N = PEAK_MATMUL_N  # the same matmul as a training run's CPU peak
MATMUL_FLOP = 2 * MATMUL_N**3


def matmul(dtype: torch.dtype, n: int = MATMUL_N):
    """An n x n matmul in ``dtype``: timed beside the steps it is compared with, its FLOP/s is the
    MFU denominator, the peak measured on this machine rather than taken from a data sheet."""
    a, b = (torch.randn(n, n).to(dtype) for _ in range(2))
    return lambda: a @ b


def matmul_peak(fn, round_times: list[float], calls: int = 10) -> float:
    """FLOP/s of the best of the matmul's rounds and of ``calls`` more run back to back: a peak.
    On the 2-core virtual machine every in-round matmul of a section sometimes ran ~30x slower
    than usual (25 instead of 850 GFLOP/s, an MFU above 100%); the back-to-back calls keep such a
    section's denominator a real peak."""
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        round_times = [*round_times, time.perf_counter() - t0]
    return MATMUL_FLOP / min(round_times)
