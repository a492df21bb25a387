"""What the machine can do fast, decided at run time rather than hard-coded."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them PyTorch
    emulates bf16 matmuls, which on an AVX2-only CPU ran ~40x slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in BF16_CPU_FLAGS)


def fast_precision() -> str:
    """The trainer precision to use for ``precision: auto``: bf16-mixed where bf16 is native
    (CUDA GPUs that support it, CPUs with AVX512-BF16 or AMX), else full fp32."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    By default, glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it on
    free, so each training step page-faults its large activations (the (B, T, vocab) logits) in
    anew: on a 2-core CPU a quarter of the step went to the kernel, and this setting made the
    default model's step ~25% faster. Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
