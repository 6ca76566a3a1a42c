"""What each training option does to real learning: the demo LoRA once per option, one table.

    python benchmarks/ablation.py                        # every option, ~1-2 minutes each on 2 CPU cores
    python benchmarks/ablation.py --only baseline ema    # some of them
    python benchmarks/ablation.py --epochs 2 --list      # the options and their arguments

Each row is ``fit --config configs/demo.yaml`` (the pretrained tiny base tiny-punks:sdxl learning the demo
punks' neon style) with the row's arguments added, the same seeds and steps, and 8 of the 48 demo punks held
out for the validation loss (plain MSE at fixed timesteps and noise, ``validation_loss: mse``, so that rows
with other loss types and weights are measured alike), 16 samples per epoch. Each row runs in its own process, so its peak memory (peak RSS on the CPU,
``max_memory_allocated`` on CUDA) is its own. From the run's TensorBoard events the table takes the last
epoch's values:

- ``val``: the deterministic validation MSE on the held-out punks (lower is better), ``gap``: it minus
  the same measure on as many training punks (grows when the LoRA memorises);
- ``neon``: the share of the samples in the demo style (the goal of the demo: up from ~0 at epoch 0);
- ``iou`` / ``torso`` / ``grid`` / ``colours``: the pixel-art measures of the samples (silhouette IoU with
  the training heads, torso share, raw grid fidelity, colours per image);
- ``s``: wall seconds of the whole run (model load, caches, training, sampling), ``MB``: peak memory.

Nothing here is asserted by a test: it is the evidence for choosing options, printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# name -> the arguments the row adds to the demo config (the demo trains LoRA rank 4 with conv rank 4).
OPTIONS: dict[str, list[str]] = {
    "baseline": [],
    "ema 0.9": ["--ema.decay", "0.9", "--ema.use_for_samples", "true", "--ema.use_for_validation", "true"],
    "min-snr 5": ["--model.min_snr_gamma", "5"],
    "huber (snr)": ["--model.loss_type", "huber", "--model.huber_schedule", "snr"],
    "logit-normal t": ["--model.timestep_sampling", "logit_normal"],
    "lora+ 16": ["--model.loraplus_lr_ratio", "16"],
    "lokr": ["--model.network", "lokr"],
    "dora": ["--model.use_dora", "true"],
    "rank 16": ["--model.rank", "16", "--model.alpha", "16"],
}
COLUMNS = {  # table column -> TensorBoard tag (last value)
    "val": "val/loss",
    "gap": "val/gap",
    "neon": "demo/neon_share",
    "iou": "quality/raw/silhouette_iou",
    "torso": "quality/raw/torso_share",
    "grid": "quality/raw/grid_fidelity",
    "colours": "quality/art/colours",
}


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def fit_arguments(name: str, out: Path, epochs: int, extra: list[str]) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", slug(name),
        "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
        "--data.val_split", "8", "--model.validation_loss", "mse", "--sample.num_prompts", "16",
        "--sample.contact_sheet", "false", *extra,
    ]  # fmt: skip


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def worker(name: str, out: Path, epochs: int) -> None:
    """One row, in this process: the fit, then its seconds and peak memory as JSON on the last line."""
    from bespoke_pl.commands.cli import main

    started = time.perf_counter()
    main(fit_arguments(name, out, epochs, OPTIONS[name]))
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_memory_mb()}))


def last_values(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    return {col: events.Scalars(tag)[-1].value for col, tag in COLUMNS.items() if tag in tags}


def row(name: str, out: Path, epochs: int) -> dict[str, float | str]:
    command = [sys.executable, __file__, "--worker", name, "--out", str(out), "--epochs", str(epochs)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"option": name, "error": tail}
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = out / slug(name) / "version_0"
    return {"option": name, **last_values(run_dir), **figures}


def table(rows: list[dict]) -> str:
    header = ["option", *COLUMNS, "s", "MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['option']} | failed: {r['error']} |")
            continue
        cells = [r["option"]]
        for col in COLUMNS:
            value = r.get(col)
            cells.append("-" if value is None else f"{value:.0f}" if col == "colours" else f"{value:.3f}")
        cells += [f"{r['seconds']:.0f}", f"{r['peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(OPTIONS), help="rows to run (default: all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per row (the demo's 3)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--list", action="store_true", help="print the options and their arguments")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        for name, extra in OPTIONS.items():
            print(f"{name:16s} {' '.join(extra) or '(the demo config as it is)'}")
        return
    if args.worker:
        worker(args.worker, args.out, args.epochs)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="bespoke-ablation-"))
    rows = []
    for name in args.only or list(OPTIONS):
        rows.append(row(name, out, args.epochs))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"demo LoRA on tiny-punks:sdxl, {args.epochs} epochs, 8 punks held out, 16 samples; runs in {out}")
    print(table(rows))


if __name__ == "__main__":
    main()
