"""Training speed and memory of bespoke_pl against a bare PyTorch loop, on the tiny offline models.

    python benchmarks/train_speed.py                      # tiny SD1.5 + SDXL, pixel_scale 1, 8 and native
    python benchmarks/train_speed.py --families sdxl --scales 8 --steps 60
    python benchmarks/train_speed.py --real --scales 8 --batches 1 4 8 16   # on a GPU
    python benchmarks/train_speed.py --real --batches 1 2 --checkpointing    # the shipped configs' scales
    python benchmarks/train_speed.py --real --bf16 --families sdxl --scales 40 --batches 1 2 --checkpointing
    python benchmarks/train_speed.py --real --bf16 --families sdxl --scales 40 --batches 1 2 --checkpointing \
        --steps 2 --warmup 1 --modes cached --images 4      # the same on a 2-core CPU: about 25 minutes

"native" is the shipped configs' pixel_scale: 40 for SDXL (960 px), 24 for SD 1.5 (576 px).

Each configuration runs in its own process (so peak memory is its own): the trainer (Lightning, the
real module and data module, TensorBoard logging as in a real run) with and without the caches, and a
bare loop (UNet forward + backward + AdamW on the same cached latents and embeddings, same batch size,
no Lightning). steps/s excludes the first ``--warmup`` steps. Peak memory is the process's peak RSS on
CPU and ``max_memory_allocated`` on CUDA. ``--bf16`` runs the dtypes a CUDA run gets by default (frozen
weights in bfloat16, ``bf16-mixed``, LoRA in float32) on any device, so a CPU can measure what the tensors
of a bf16 GPU run take (its RSS adds the libraries, about 1 GB; a GPU adds its own context instead).
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


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


NATIVE_SCALE = {"sdxl": 40, "sd15": 24}  # configs/sdxl.yaml, configs/sd15.yaml
CHECKPOINTING = False  # set per configuration process from its spec
BF16 = False  # likewise: the CUDA default dtypes on any device


def make_module(family: str, scale: int, real: bool, **kwargs):
    """The real module on the tiny model, or on the real architecture with random weights (``real``)."""
    from bespoke_pl.training.module import PixelLoRAModule

    clip_skip = 2 if family == "sdxl" else 1
    rank = 16 if real else 4
    kwargs.setdefault("gradient_checkpointing", CHECKPOINTING)
    if BF16:
        kwargs.setdefault("weight_dtype", "bfloat16")
    module = PixelLoRAModule(
        f"tiny:{family}", pixel_scale=scale, rank=rank, alpha=rank, clip_skip=clip_skip, **kwargs
    )
    if real:
        import torch

        from bespoke_pl.diffusion.base import load_base, real_base

        dtype = torch.bfloat16 if BF16 else torch.float32
        module.attach_base(real_base(family, load_base(f"tiny:{family}").tokenizers, dtype))
    return module


def run_trainer(
    family: str, scale: int, cache: bool, batch: int, steps: int, warmup: int, data: str, real: bool = False
) -> dict:
    import lightning as L

    from bespoke_pl.data.datamodule import PixelArtDataModule
    from bespoke_pl.diffusion.devices import default_precision

    stamps: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            stamps.append(time.perf_counter())

    module = make_module(family, scale, real, cache_latents=cache, cache_text=cache)
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(
            max_steps=warmup + steps, precision="bf16-mixed" if BF16 else default_precision("auto"),
            default_root_dir=logs,
            logger=L.pytorch.loggers.TensorBoardLogger(logs), log_every_n_steps=1,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[Clock()],
        )  # fmt: skip
        trainer.fit(module, PixelArtDataModule(data, batch_size=batch, num_repeats=20))
    rate = steps / (stamps[-1] - stamps[warmup - 1])
    return {"steps_s": rate, "images_s": rate * batch, "peak_mb": peak_memory_mb(module.device)}


def run_bare(
    family: str, scale: int, batch: int, steps: int, warmup: int, data: str, real: bool = False
) -> dict:
    """UNet forward + backward + AdamW on precomputed latents and embeddings: the floor of any trainer."""
    import torch
    import torch.nn.functional as F

    from bespoke_pl.data.pairs import load_pairs
    from bespoke_pl.diffusion.conditioning import sdxl_time_ids
    from bespoke_pl.diffusion.devices import weight_dtype_for
    from bespoke_pl.lora.inject import lora_parameters
    from bespoke_pl.training.cache import LatentCache, TextCache

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = make_module(family, scale, real)
    if not real:
        module.configure_model()
    module.to(device)
    # The trainer's dtypes: the frozen UNet as the module's weight_dtype on this device, LoRA in float32.
    module.unet.to(weight_dtype_for(device, module.hparams.weight_dtype))
    for parameter in lora_parameters(module.unet):
        parameter.data = parameter.data.float()
    pairs = load_pairs(data)
    latents = LatentCache.build(pairs.images, module.encode_images).latents.to(device)
    text = TextCache.build(pairs.captions, module.encode_text).embeds.to(device)
    unet = module.unet
    optimizer = torch.optim.AdamW(lora_parameters(unet), lr=1e-4)
    alphas = module.alphas_cumprod.to(device)
    time_ids = sdxl_time_ids(24 * scale, batch, device)
    stamps = []
    for _ in range(warmup + steps):
        index = torch.randint(0, len(latents), (batch,), device=device)
        x0 = latents[index]
        noise = torch.randn_like(x0)
        t = torch.randint(0, len(alphas), (batch,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        added = None if text.pooled is None else {"text_embeds": text.pooled[index], "time_ids": time_ids}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or BF16):
            pred = unet(noisy, t, encoder_hidden_states=text.sequence[index], added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    rate = steps / (stamps[-1] - stamps[warmup - 1])
    return {"steps_s": rate, "images_s": rate * batch, "peak_mb": peak_memory_mb(device)}


def one(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    args = (spec["family"], spec["scale"])
    rest = (spec["batch"], spec["steps"], spec["warmup"], spec["data"], spec.get("real", False))
    if spec["mode"] == "bare":
        return run_bare(*args, *rest)
    return run_trainer(*args, spec["mode"] == "cached", *rest)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl"])
    parser.add_argument("--scales", nargs="+", type=int, help="pixel scales (default: 1, 8 and native)")
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing on (as configs/sdxl.yaml)"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 weights and bf16-mixed (CUDA's default) on any device"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--real",
        action="store_true",
        help="real-size SD1.5/SDXL architectures with random weights (a GPU), batch sizes --batches",
    )
    parser.add_argument(
        "--batches", nargs="+", type=int, default=[1, 4, 8, 16], help="batch sizes with --real"
    )
    parser.add_argument("--modes", nargs="+", default=["bare", "cached", "uncached"])
    parser.add_argument(
        "--images",
        type=int,
        default=48,
        help="demo punks to train on (caching them at 960 px on a CPU takes ~35 s each)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        global CHECKPOINTING, BF16
        CHECKPOINTING, BF16 = spec.get("checkpointing", False), spec.get("bf16", False)
        print(json.dumps(one(spec)))
        return

    from bespoke_pl.data.demo_sets import demo_dataset_path

    data = str(demo_dataset_path(count=args.images))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    batches = args.batches if args.real else [args.batch]
    kind = "real-size architectures, random weights" if args.real else "tiny models"
    kind += ", bf16 weights and bf16-mixed" if args.bf16 else ""
    print(f"{kind}; {args.steps} timed steps after {args.warmup} warm-up steps; epoch = 203 images")
    header = (
        f"{'model':<6} {'k':>2} {'batch':>5} {'run':<17} {'steps/s':>8} {'images/s':>9} {'s/epoch':>8} "
        f"{'peak MB':>8} {'vs bare':>8}"
    )
    print(header)
    print("-" * len(header))
    names = {"bare": "bare loop", "cached": "trainer, caches", "uncached": "trainer, no cache"}
    for family in args.families:
        for scale in args.scales or [1, 8, NATIVE_SCALE[family]]:
            for batch in batches:
                results = {}
                for mode in args.modes:
                    spec = {"family": family, "scale": scale, "mode": mode, "batch": batch, "steps": args.steps,
                            "warmup": args.warmup, "data": data, "real": args.real,
                            "checkpointing": args.checkpointing, "bf16": args.bf16}  # fmt: skip
                    command = [sys.executable, __file__, "--one", json.dumps(spec)]
                    out = subprocess.run(command, env=env, capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(f"{family} k={scale} batch {batch} {mode} failed:\n{out.stderr[-3000:]}")
                    results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
                bare = results.get("bare", {}).get("steps_s")
                for mode, r in results.items():
                    ratio = f"{r['steps_s'] / bare:8.2f}" if bare else f"{'-':>8}"
                    epoch = -(-203 // batch) / r["steps_s"]
                    print(
                        f"{family:<6} {scale:>2} {batch:>5} {names[mode]:<17} {r['steps_s']:>8.2f} "
                        f"{r['images_s']:>9.1f} {epoch:>8.1f} {r['peak_mb']:>8.0f} {ratio}"
                    )
                if "cached" in results and "uncached" in results:
                    speedup = results["cached"]["steps_s"] / results["uncached"]["steps_s"]
                    print(f"{'':<15} caches speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
