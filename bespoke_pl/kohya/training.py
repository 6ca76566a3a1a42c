"""kohya's training options as ``fit`` options: length, learning-rate schedule, precision, memory and caches
(the optimizer is :mod:`~bespoke_pl.kohya.optimizer`'s, the objective :mod:`~bespoke_pl.kohya.objective`'s).
"""

from __future__ import annotations

import math
from pathlib import Path

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.data import DataFacts
from bespoke_pl.kohya.record import Conversion, KohyaArgs
from bespoke_pl.training.optimizer_choices import is_schedule_free

SCHEDULES = {
    "constant": "constant",
    "constant_with_warmup": "constant",
    "cosine": "cosine",
    "linear": "linear",
}
PRECISION = {"fp16": ("16-mixed", "float16"), "no": ("32-true", "float32")}
KOHYA_DEFAULT_STEPS = 1600  # train_util's --max_train_steps default


def convert_length(args: KohyaArgs, conv: Conversion, data: DataFacts) -> int | None:
    """``trainer.max_epochs`` / ``max_steps``, accumulation, clipping; the run's optimizer steps, if known."""
    accumulate = args.number("gradient_accumulation_steps", int)
    if accumulate is not None:
        conv.set("trainer.accumulate_grad_batches", accumulate, args.source("gradient_accumulation_steps"))
    epochs, steps = args.number("max_train_epochs", int), args.number("max_train_steps", int)
    per_epoch = math.ceil(math.ceil(data.images * data.num_repeats / data.batch_size) / (accumulate or 1))
    if epochs:
        conv.set("trainer.max_epochs", epochs, args.source("max_train_epochs"))
        if steps is not None:
            conv.note(
                "trainer", f"{args.source('max_train_steps')}: unused, max_train_epochs decides (as in kohya)"
            )
        total = epochs * per_epoch if data.images else None
    else:
        steps = steps or KOHYA_DEFAULT_STEPS
        source = (
            args.source("max_train_steps")
            if "max_train_steps" in args
            else "kohya default (no max_train_epochs or max_train_steps)"
        )
        conv.set("trainer.max_steps", steps, source)
        # fit runs a whole number of epochs (one LoRA file each): enough for the steps, which end it
        epochs = math.ceil(steps / per_epoch) if per_epoch else 1
        why = (
            f"{epochs} epochs of {per_epoch} optimizer steps hold kohya's {steps}; max_steps ends the run at "
            f"step {steps}, as in kohya (with the last LoRA file)"
        )
        conv.set("trainer.max_epochs", epochs, source, why)
        total = steps
    norm = args.number("max_grad_norm")
    if norm is None:
        conv.set("trainer.gradient_clip_val", 1.0, "kohya default (max_grad_norm not set)")
    elif norm:
        conv.set("trainer.gradient_clip_val", norm, args.source("max_grad_norm"))
    else:
        conv.note("trainer", f"{args.source('max_grad_norm')}: no gradient clipping, as bespoke_pl's default")
    return total


def convert_schedule(args: KohyaArgs, conv: Conversion, total: int | None) -> None:
    """``model.lr_schedule`` and ``lr_warmup_steps`` (a fraction of the run, in kohya, when below 1)."""
    if is_schedule_free(str(conv.get("model.optimizer.class_path"))):
        _schedule_free(args, conv)
        return
    name = (args.text("lr_scheduler") or "constant").lower()
    source = args.source("lr_scheduler") if "lr_scheduler" in args else "kohya default (lr_scheduler not set)"
    cycles, power = args.number("lr_scheduler_num_cycles"), args.number("lr_scheduler_power")
    if name in SCHEDULES:
        why = (
            "bespoke_pl's constant warms up over lr_warmup_steps first"
            if name == "constant_with_warmup"
            else ""
        )
        conv.set("model.lr_schedule", SCHEDULES[name], source, why)
    elif name == "cosine_with_restarts":
        conv.set("model.lr_schedule", "cosine", source, "one cosine decay, without restarts")
        if cycles and cycles > 1:
            conv.skip(
                args.source("lr_scheduler_num_cycles").removeprefix("kohya "), "one cosine, no restarts"
            )
        elif cycles is not None:
            conv.note("model", f"{args.source('lr_scheduler_num_cycles')}: one cosine decay")
    elif name == "polynomial":
        conv.set("model.lr_schedule", "linear", source, "a polynomial of power 1 is linear")
        if power not in (None, 1):
            conv.skip(args.source("lr_scheduler_power").removeprefix("kohya "), "linear decay only (power 1)")
        elif power is not None:
            conv.note("model", f"{args.source('lr_scheduler_power')}: a linear decay")
    else:
        conv.skip(
            source.removeprefix("kohya "),
            "bespoke_pl has constant, cosine and linear: model.lr_schedule stays constant",
        )
    for key, used_by in (
        ("lr_scheduler_num_cycles", "cosine_with_restarts"),
        ("lr_scheduler_power", "polynomial"),
    ):
        if key in args and name != used_by:
            conv.note("model", f"{args.source(key)}: unused with lr_scheduler {name} (as in kohya)")
    warmup = args.number("lr_warmup_steps")
    if warmup is None:
        return
    if isinstance(args.raw("lr_warmup_steps"), float) and warmup < 1:
        if total is None:
            conv.skip(
                args.source("lr_warmup_steps").removeprefix("kohya "),
                "a fraction of a run whose length is not known here; give steps",
            )
            return
        why = f"kohya's fraction of the run's {total} optimizer steps"
        conv.set("model.lr_warmup_steps", int(warmup * total), args.source("lr_warmup_steps"), why)
    else:
        why = (
            "kohya refuses a warmup with constant; here it warms up, then holds"
            if name == "constant" and warmup
            else ""
        )
        conv.set("model.lr_warmup_steps", int(warmup), args.source("lr_warmup_steps"), why)


def _schedule_free(args: KohyaArgs, conv: Conversion) -> None:
    """A schedule-free optimizer is its own schedule: kohya gives it a dummy scheduler, as constant does."""
    conv.set(
        "model.lr_schedule", "constant", "kohya's schedule-free optimizer (its averaging is the schedule)"
    )
    for key in ("lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power"):
        if key in args:
            args.raw(key)
            conv.note(
                "model",
                f"{args.source(key)}: unused with a schedule-free optimizer, as in kohya (its warmup is "
                "optimizer_args warmup_steps)",
            )


def convert_precision(args: KohyaArgs, conv: Conversion) -> None:
    """Mixed precision, attention, compilation, caches and memory."""
    if "mixed_precision" in args:
        mode = args.text("mixed_precision")
        if mode == "bf16":
            conv.note(
                "trainer",
                f"{args.source('mixed_precision')}: trainer.precision is left to bespoke_pl, which "
                "picks bf16-mixed with bf16 frozen weights on CUDA (fp16 where bf16 is missing) and "
                "float32 on CPU and Apple MPS",
            )
        elif mode in PRECISION:
            conv.set("trainer.precision", PRECISION[mode][0], args.source("mixed_precision"))
            conv.set("model.weight_dtype", PRECISION[mode][1], args.source("mixed_precision"))
        else:
            raise ConfigError(f"{args.source('mixed_precision')} is not one of kohya's no, fp16, bf16")
    if "no_half_vae" in args:
        conv.note(
            "model",
            f"{args.source('no_half_vae')}: the VAE always runs in float32 here (SDXL's overflows in fp16)",
        )
    kernels = [key for key in ("xformers", "sdpa", "mem_eff_attn") if key in args]
    if any(args.flag(key) for key in kernels):
        on = [key for key in kernels if args.flag(key)]
        why = (
            ""
            if on == ["sdpa"]
            else "PyTorch's fused scaled-dot-product attention does what xformers and mem_eff_attn did"
        )
        conv.set("model.attention", "sdpa", ", ".join(args.source(key) for key in on), why)
    for key in kernels:
        if not args.flag(key):
            conv.note(
                "model", f"{args.source(key)}: model.attention sdpa is bespoke_pl's fused default anyway"
            )
    if args.flag("torch_compile"):
        conv.set("model.compile_unet", True, args.source("torch_compile"))
    elif "torch_compile" in args:
        conv.set("model.compile_unet", False, args.source("torch_compile"))
    backend = args.text("dynamo_backend")
    if backend not in (None, "inductor"):
        conv.skip(
            args.source("dynamo_backend").removeprefix("kohya "),
            "torch.compile with its default backend (inductor) only",
        )
    elif backend:
        conv.note("model", f"{args.source('dynamo_backend')}: torch.compile's default backend")
    if args.flag("highvram"):
        conv.set("model.offload_frozen", False, args.source("highvram"))
    elif "highvram" in args:
        conv.note(
            "model",
            f"{args.source('highvram')}: after caching the frozen parts leave the GPU (model.offload_frozen)",
        )
    _caches(args, conv)


def _caches(args: KohyaArgs, conv: Conversion) -> None:
    if "cache_latents" in args:
        if args.flag("cache_latents"):
            conv.set("model.cache_latents", True, args.source("cache_latents"))
        else:
            why = (
                "nothing is augmented, so a cached latent is exactly what each step would encode: saved time"
            )
            conv.set("model.cache_latents", True, args.source("cache_latents"), why)
    if args.flag("cache_latents_to_disk"):
        folder = str(Path(args.values.get("output_dir") or "logs") / "latent_cache")
        why = "kohya writes an .npz beside each image; here one folder, keyed by pixels, VAE and pixel_scale"
        conv.set("model.latent_cache_dir", folder, args.source("cache_latents_to_disk"), why)
    elif "cache_latents_to_disk" in args:
        conv.note("model", f"{args.source('cache_latents_to_disk')}: latents stay in memory")
    if "cache_text_encoder_outputs" in args:
        why = (
            ""
            if args.flag("cache_text_encoder_outputs")
            else "cached whenever valid: text encoders frozen, captions fixed"
        )
        conv.set("model.cache_text", True, args.source("cache_text_encoder_outputs"), why)
    for key in ("max_data_loader_n_workers", "persistent_data_loader_workers"):
        if key in args:
            args.raw(key)
            conv.note(
                "data", f"{args.source(key)}: the images are in memory, so data.num_workers stays 0 (fastest)"
            )
