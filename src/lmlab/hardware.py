"""What the machine can do fast, decided at run time rather than hard-coded."""

from __future__ import annotations

import functools
import time
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


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    By default, glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it on
    free, so each training step page-faults its large activations (the (B, T, vocab) logits) in
    anew: on a 2-core CPU a quarter of the step went to the kernel, and this setting made the
    default model's step ~25% faster. Returns False where it does not apply (not glibc).
    """
    return _mallopt(M_MMAP_MAX, 0) and _mallopt(M_TRIM_THRESHOLD, 1 << 30)


def return_freed_memory() -> bool:
    """Undo :func:`reuse_freed_memory` (glibc's defaults: large blocks mmapped, freed memory above
    128 KiB returned), for the passes after training. Scoring thousands of held-out windows
    allocates and frees a batch's logits each time; with freed memory kept the heap could grow by
    a batch's logits a batch: a run's end-of-training extrapolation over a prepared corpus's 8,000
    validation windows was killed for memory at 24 GB."""
    return _mallopt(M_MMAP_MAX, 65536) and _mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def _mallopt(param: int, value: int) -> bool:
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(param, value))


# Dense (no sparsity) bf16 tensor-core FLOP/s from NVIDIA's data sheets, fp16's the same: half the
# "with sparsity" figure they print (H100 SXM 1,979, PCIe 1,513, NVL 1,671; H200 SXM 1,979; A100
# 312 dense). Lightning's own table gives the H200 its sparse figure, hence this one.
# Matched against torch.cuda.get_device_name(), most specific first.
DENSE_BF16_PEAK = [
    ("H200 NVL", 835e12), ("H200", 989e12),
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("A100", 312e12),
]
PEAK_MATMUL_N = 1024  # the CPU peak: the fastest of a few n x n matmuls


def data_sheet_peak(device_name: str) -> float | None:
    """A GPU's dense bf16 FLOP/s by its name, or None where the table above does not know it."""
    return next((peak for key, peak in DENSE_BF16_PEAK if key in device_name), None)


def measured_matmul_flops(dtype: torch.dtype, n: int = PEAK_MATMUL_N, device: str = "cpu",
                          calls: int = 10) -> float:
    """FLOP/s of the fastest of ``calls`` n x n matmuls in ``dtype`` on ``device``, after a
    warm-up (on a 2-core EPYC's CPU ~30 ms in bf16, ~80 ms in fp32): what its matmuls reach in that
    precision, native or emulated, while the machine is as busy as it is now."""
    def synchronize():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(calls):
        synchronize()
        t0 = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The MFU denominator for matmuls in ``dtype`` on ``device``: a GPU's data-sheet dense peak
    (bf16 and fp16 from the table above, other precisions from Lightning's table), a CPU's
    measured matmul peak; None where neither is known."""
    if device.type == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        name = torch.cuda.get_device_name(device)
        peak = data_sheet_peak(name) if dtype in (torch.bfloat16, torch.float16) else None
        return peak or get_available_flops(device, dtype)
    if device.type == "cpu":
        return measured_matmul_flops(dtype)
    return None


def peak_flops_source(device: torch.device) -> str:
    """Where ``peak_flops`` takes its figure from on ``device``."""
    return "data sheet" if device.type == "cuda" else "measured matmul"


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype a Lightning ``precision`` runs its matmuls in: "bf16-mixed" -> bfloat16..."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def reset_peak_memory(device: torch.device) -> None:
    """Start counting ``peak_memory_bytes`` afresh: PyTorch's allocator statistics on a GPU; on
    Linux the process's resident high-water mark (``/proc/self/clear_refs``), so that a sweep's
    later jobs in the same process do not report an earlier job's peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the process's since it started


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory held since ``reset_peak_memory``: on a GPU what PyTorch's allocator held on
    ``device``; on a CPU the process's peak resident memory (weights, activations, Python, data)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:"))) * 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def peak_memory_kind(device: torch.device) -> str:
    """What ``peak_memory_bytes`` counts on ``device``."""
    return "allocated on the GPU" if device.type == "cuda" else "resident"


def cpu_bytes_kept(fn):
    """(fn(), the bytes of CPU memory the call leaves allocated: its result and what autograd keeps
    of it for backward), from the profiler's record of every allocation and free in the call
    (memory allocated before the call and freed in it counts against it)."""
    from torch.profiler import profile

    with profile(profile_memory=True) as prof:
        out = fn()
    return out, sum(e.self_cpu_memory_usage for e in prof.key_averages())
