"""The default recipe against the textbook loop at equal wall-clock.

    python scripts/recipe_vs_textbook.py [--recipe-run DIR] [--lrs ...] [--batches ...] [OVERRIDES ...]

1. The recipe: `python train.py OVERRIDES` is run (or a finished run's directory is read with
   --recipe-run). Its training wall-clock (the fit, its validations and checkpoints included)
   is the budget; its validation loss (Hamlet) and test loss (The Tempest) are its figures.
2. The textbook loop (scripts/textbook.py: GPT-2 style, learned positions, GELU, LayerNorm, tied
   head, at the recipe's sizes) trains for the same seconds at every learning rate x batch size of
   the grid, the nanoGPT way: random windows of the same train split, AdamW (wd 0.1, betas 0.9/0.95),
   clipping at 1.0, linear warmup over 5% then cosine to lr/10 (over the budget's seconds, since
   it cannot know how many steps they hold), in the recipe's precision.
3. Every arm is scored on the same held-out windows; the best textbook arm is chosen on validation.
4. With --plot PNG: training loss against wall-clock seconds, the recipe and every textbook arm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_common import compose, machine
from lmlab.errors import positive_list
from lmlab.hardware import reuse_freed_memory
from lmlab.schedule import warmup_cosine
from lmlab.sweep_jobs import read_curve
from textbook import TextbookGPT, adamw, train_step

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 0.05  # of the budget


def run_recipe(overrides: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", "sample.max_new_tokens=0"]
    print(f"recipe: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "metrics.json").read_text())


@torch.no_grad()
def held_out_loss(model, loader, bf16: bool) -> float:
    """Mean cross-entropy per token over every window of ``loader``."""
    model.eval()
    total, n = 0.0, 0
    for w in loader:
        x, y = w[:, :-1], w[:, 1:]
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        n += y.numel()
    model.train()
    return total / n


def train_textbook(model_cfg: dict, train_tokens, lr: float, batch: int, seconds: float,
                   bf16: bool, seed: int) -> tuple[TextbookGPT, list[tuple[float, float]]]:
    """The textbook loop for ``seconds`` of wall-clock; returns the model and its curve, one
    (seconds, training loss) per step."""
    torch.manual_seed(seed)
    model = TextbookGPT.like(model_cfg)
    opt = adamw(model, lr)
    T = model_cfg["context_length"]
    data = torch.from_numpy(train_tokens.astype("int64"))
    gen = torch.Generator().manual_seed(seed)
    curve, t0 = [], time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for group in opt.param_groups:
            # lmlab's warmup + cosine to lr / 10, over milliseconds of the budget instead of steps
            group["lr"] = lr * warmup_cosine(1000 * elapsed / seconds, 1000 * WARMUP, 1000, 0.1)
        starts = torch.randint(len(data) - T - 1, (batch,), generator=gen)  # nanoGPT's get_batch
        windows = torch.stack([data[s:s + T + 1] for s in starts.tolist()])
        loss = train_step(model, opt, windows, bf16)
        if not torch.isfinite(loss):
            break
        curve.append((time.perf_counter() - t0, loss.item()))
    return model, curve


def recipe_curve(run_dir: Path, metrics: dict) -> list[tuple[float, float]]:
    """The recipe's logged training losses (csv/metrics.csv; none if it ran without the CSV
    logger), each at its step times the run's mean seconds per step: its validations and
    checkpoint writes spread evenly over the steps."""
    per_step = metrics["train_time_s"] / metrics["steps"]
    # read_curve places the loss of the k-th step at k (Lightning logs it at k - 1)
    return [(step * per_step, loss) for step, loss in read_curve(run_dir, "train/loss")]


def plot_curves(recipe: dict, arms: list[dict], path: Path) -> None:
    """Training loss against seconds: the recipe's logged losses and each textbook arm's mean
    over ten steps; a dot at the end of each line marks its held-out validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=90)
    series = [("recipe (lmlab's default)", recipe["curve"], recipe["val_loss"], 2.0)]
    for a in arms:
        blocks = [a["curve"][i:i + 10] for i in range(0, len(a["curve"]), 10)]
        means = [(b[-1][0], sum(v for _, v in b) / len(b)) for b in blocks]
        series.append((f"textbook lr {a['lr']:g} batch {a['batch']}", means, a["val_loss"], 1.0))
    shown = []  # the values past the first tenth of the time, which set the y range
    for label, points, val_loss, width in series:
        if not points:
            continue
        x, y = zip(*points)
        line, = ax.plot(x, y, lw=width, label=f"{label}: validation {val_loss:.3f}")
        ax.plot(x[-1], val_loss, "o", color=line.get_color())
        shown += [v for t, v in points if t > recipe["train_time_s"] / 10] + [val_loss]
    if shown:
        ax.set_ylim(min(shown) - 0.2, max(shown) + 0.2)
    ax.set_xlabel("training wall clock (s)")
    ax.set_ylabel("training loss (dots: validation loss at the end)")
    ax.set_title(f"the recipe against the textbook loop, {recipe['train_time_s']:.0f} s each (recipe: "
                 "the loss it logs every 10 steps; textbook: the mean of each 10 steps)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="the recipe's train.py overrides (default: none)")
    parser.add_argument("--recipe-run", type=Path, help="a finished run's directory: not run again")
    parser.add_argument("--lrs", default="6e-4,1e-3,2e-3,4e-3", help="the textbook's learning rates",
                        type=positive_list(float, "floats > 0 separated by commas"))
    parser.add_argument("--batches", default="4,8,16", help="the textbook's batch sizes",
                        type=positive_list(int, "ints > 0 separated by commas"))
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, help="draw training loss against seconds into this PNG")
    args = parser.parse_args(argv)
    if args.recipe_run and not (args.recipe_run / "metrics.json").is_file():
        parser.error(f"--recipe-run {args.recipe_run}: no metrics.json there; give a finished run's "
                     "directory (outputs/runs/<time>)")
    reuse_freed_memory()  # as train.py does
    print(machine(), flush=True)

    # the recipe's run directory is its own; the corpus cache is the one train.py uses
    cfg = compose([*args.overrides, f"paths.root_dir={os.environ.get('LMLAB_ROOT', ROOT)}"])
    precision = str(cfg.trainer.precision)
    bf16 = precision.startswith("bf16")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.recipe_run or Path(tmp) / "recipe"
        recipe = (json.loads((run_dir / "metrics.json").read_text()) if args.recipe_run
                  else run_recipe(args.overrides, run_dir))
        if args.plot:
            recipe["curve"] = recipe_curve(run_dir, recipe)
    seconds = recipe["train_time_s"]
    print(f"recipe: {recipe['steps']} steps in {seconds:.0f} s ({precision}): validation "
          f"{recipe['val_loss']:.3f}, test {recipe['test_loss']:.3f}", flush=True)

    from omegaconf import OmegaConf

    from lmlab.training import build_datamodule

    data = build_datamodule(cfg)
    data.setup("fit")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    arms = []
    for batch in args.batches:
        for lr in args.lrs:
            model, curve = train_textbook(model_cfg, data.train_tokens, lr, batch, seconds, bf16, cfg.seed)
            steps = len(curve)
            arm = {"lr": lr, "batch": batch, "steps": steps, "curve": curve,
                   "val_loss": held_out_loss(model, data.val_dataloader(), bf16),
                   "test_loss": held_out_loss(model, data.test_dataloader(), bf16)}
            arms.append(arm)
            print(f"textbook lr {lr:g} batch {batch:3d}: {steps:5d} steps, validation "
                  f"{arm['val_loss']:.3f}, test {arm['test_loss']:.3f}", flush=True)
    best = min(arms, key=lambda a: a["val_loss"] if math.isfinite(a["val_loss"]) else math.inf)
    print(f"best textbook arm (on validation): lr {best['lr']:g}, batch {best['batch']}")
    for split in ("val_loss", "test_loss"):
        print(f"  {split[:-5]:4s}: recipe {recipe[split]:.3f}  textbook {best[split]:.3f}  "
              f"recipe better by {best[split] - recipe[split]:+.3f} nats (target >= 0.1)")
    if args.plot:
        plot_curves(recipe, arms, args.plot)
        print(f"plot: {args.plot}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "precision": precision,
                                        "seconds": seconds, "recipe": recipe, "textbook": arms,
                                        "best": best}, indent=2, default=str))


if __name__ == "__main__":
    main()
