"""The textbook step as it runs on its own: in a process of its own, with glibc's default malloc.

``benchmark.py train`` times the textbook loop twice. In the benchmark's process the textbook
shares lmlab's allocator setting (``lmlab.hardware.reuse_freed_memory``, which train.py makes), so
that ratio measures the step's code alone. A user who runs a nanoGPT-style script gets glibc's
defaults instead, under which every step maps its large buffers (the full logits) afresh and
page-faults them in; this process is that baseline. Its steps run back to back, as in a real
training run, right after the interleaved rounds: taking turns with the other steps made them
2.7x slower still on a 2-core virtual machine (bf16, default sizes), more than a training run
pays, and slowed the other steps' matmuls too (freed memory going back to the host, we suppose).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch


class TextbookProcess:
    """A child process holding the textbook model, which runs its steps when asked."""

    def __init__(self, model_cfg: dict, batch_size: int, bf16: bool):
        sizes = [model_cfg[k] for k in ("vocab_size", "context_length", "n_layers", "n_heads", "d_model")]
        args = [str(v) for v in (*sizes, batch_size, int(bf16), torch.get_num_threads())]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc defaults
        self.child = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=env)
        if (line := self.child.stdout.readline().strip()) != "ready":
            raise RuntimeError(f"textbook process: expected 'ready', got {line!r} (exit {self.child.poll()})")

    def step_times(self, warmup: int, repeats: int) -> list[float]:
        """Seconds of each of ``repeats`` steps, run back to back after ``warmup`` steps."""
        self.child.stdin.write(f"{warmup} {repeats}\n")
        self.child.stdin.flush()
        times = [float(t) for t in self.child.stdout.readline().split()]
        if len(times) != repeats:
            raise RuntimeError(f"textbook process: no step times (exit {self.child.poll()})")
        return times

    def close(self) -> None:
        self.child.stdin.close()
        self.child.wait()


def serve(vocab: int, context: int, layers: int, heads: int, d: int, batch_size: int, bf16: int,
          threads: int) -> None:
    """The child: build the textbook model and a random batch; then, per line read
    ('WARMUP REPEATS'), run that many steps back to back and answer with the timed ones."""
    sys.path.insert(0, str(Path(__file__).parent))
    from textbook import TextbookGPT, adamw, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TextbookGPT(vocab, context, layers, heads, d)
    opt = adamw(model, lr=1e-4)
    batch = torch.randint(0, vocab, (batch_size, context + 1))
    print("ready", flush=True)
    for line in sys.stdin:
        warmup, repeats = (int(n) for n in line.split())
        times = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            train_step(model, opt, batch, bool(bf16))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        print(" ".join(f"{t:.6f}" for t in times), flush=True)


if __name__ == "__main__":
    serve(*(int(a) for a in sys.argv[1:]))
