"""The MFU denominator: which peak a run is measured against."""

import torch

from lmlab.hardware import data_sheet_peak, peak_flops, precision_dtype


def test_data_sheet_peaks_match_the_most_specific_name():
    assert data_sheet_peak("NVIDIA H100 80GB HBM3") == 989e12  # H100 SXM
    assert data_sheet_peak("NVIDIA H100 PCIe") == 756e12
    assert data_sheet_peak("NVIDIA H200 NVL") == 835e12 and data_sheet_peak("NVIDIA H200") == 989e12
    assert data_sheet_peak("NVIDIA GeForce RTX 4090") is None


def test_each_lightning_precision_names_the_dtype_its_matmuls_run_in():
    assert precision_dtype("bf16-mixed") == precision_dtype("bf16-true") == torch.bfloat16
    assert precision_dtype("16-mixed") == torch.float16
    assert precision_dtype("32-true") == precision_dtype("32") == torch.float32
    assert precision_dtype("64-true") == torch.float64


def test_a_peak_is_measured_on_a_cpu_and_unknown_where_nothing_says_it():
    assert peak_flops(torch.device("cpu"), torch.float32) > 1e9  # GFLOP/s at the least
    assert peak_flops(torch.device("meta"), torch.float32) is None


def test_peak_memory_counts_from_its_reset():
    """A sweep's jobs share a process: each job's peak must not be an earlier job's. In a fresh
    process, 256 MB touched and freed, then a reset: the peak falls back by about that much."""
    import subprocess
    import sys

    code = ("import torch\nfrom lmlab.hardware import peak_memory_bytes, reset_peak_memory\n"
            "cpu = torch.device('cpu')\nx = torch.ones(2**26)\nhigh = peak_memory_bytes(cpu)\n"
            "del x\nreset_peak_memory(cpu)\nprint(high, peak_memory_bytes(cpu))\n")
    high, after = map(int, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert high - after > 200 * 2**20
