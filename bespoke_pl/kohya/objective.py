"""kohya's objective options as ``model.*``: seed, clip skip, noise offset, Min-SNR, the loss type and its
Huber schedule, debiased estimation, input perturbation, zero terminal SNR, the timestep range and the
masked loss. Each is the same computation in bespoke_pl (``bespoke_pl/diffusion/``, after sd-scripts'
``train_util`` and ``custom_train_functions``), so the values carry over as they are.
"""

from __future__ import annotations

from bespoke_pl.diffusion.losses import HUBER_SCHEDULES, LOSS_TYPES
from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.record import Conversion, KohyaArgs

HUBER_LOSSES = ("huber", "smooth_l1")
HUBER_KEYS = ("huber_schedule", "huber_c", "huber_scale")


def convert_objective(args: KohyaArgs, conv: Conversion) -> None:
    """Seed, clip skip, noise offset, Min-SNR, the loss and the noise options."""
    seed = args.number("seed", int)
    if seed is not None:
        conv.set("seed_everything", seed, args.source("seed"))
    clip_skip = args.number("clip_skip", int)
    if conv.family == "sdxl":
        source = (
            args.source("clip_skip")
            if clip_skip is not None
            else "kohya's SDXL conditioning (clip_skip not set)"
        )
        why = (
            ""
            if clip_skip == 2
            else "kohya's SDXL training ignores clip_skip and always uses the penultimate layers: clip_skip 2"
        )
        conv.set("model.clip_skip", 2, source, why)
    else:
        conv.set(
            "model.clip_skip",
            clip_skip or 1,
            args.source("clip_skip") if clip_skip else "kohya default (clip_skip not set: the last layer)",
        )
    offset = args.number("noise_offset")
    if offset is not None:
        conv.set("model.noise_offset", offset, args.source("noise_offset"))
    gamma = args.number("min_snr_gamma")
    if gamma:
        conv.set("model.min_snr_gamma", gamma, args.source("min_snr_gamma"))
    elif "min_snr_gamma" in args:
        conv.note("model", f"{args.source('min_snr_gamma')}: no Min-SNR weighting, as bespoke_pl's default")
    _loss(args, conv)
    _switch(args, conv, "debiased_estimation_loss", "model.debiased_estimation")
    _switch(args, conv, "zero_terminal_snr", "model.zero_terminal_snr")
    _perturbation(args, conv)
    _timesteps(args, conv)
    _masked_loss(args, conv)
    if "gradient_checkpointing" in args:
        conv.set(
            "model.gradient_checkpointing",
            args.flag("gradient_checkpointing"),
            args.source("gradient_checkpointing"),
        )


def _switch(args: KohyaArgs, conv: Conversion, key: str, option: str) -> None:
    if args.flag(key):
        conv.set(option, True, args.source(key))
    elif key in args:
        conv.note("model", f"{args.source(key)}: off, as bespoke_pl's default")


def _loss(args: KohyaArgs, conv: Conversion) -> None:
    """``loss_type``, and with a Huber loss its schedule and threshold (kohya's defaults: snr, 0.1)."""
    loss = args.text("loss_type")
    if loss is not None:
        if loss not in LOSS_TYPES:
            raise ConfigError(f"{args.source('loss_type')} is not one of kohya's {', '.join(LOSS_TYPES)}")
        conv.set("model.loss_type", loss, args.source("loss_type"))
    if loss not in HUBER_LOSSES:
        for key in HUBER_KEYS:
            if key in args:
                args.raw(key)
                conv.note("model", f"{args.source(key)}: unused without a Huber loss (as in kohya)")
        return
    schedule = args.text("huber_schedule")
    if schedule is not None:
        if schedule not in HUBER_SCHEDULES:
            raise ConfigError(
                f"{args.source('huber_schedule')} is not one of kohya's {', '.join(HUBER_SCHEDULES)}"
            )
        conv.set("model.huber_schedule", schedule, args.source("huber_schedule"))
    c = args.number("huber_c")
    if c is not None and not c > 0:
        raise ConfigError(f"{args.source('huber_c')}: the Huber threshold must be > 0")
    if c is not None:
        conv.set("model.huber_c", c, args.source("huber_c"))
    _huber_scale(args, conv, schedule or "snr", 0.1 if c is None else c)


def _huber_scale(args: KohyaArgs, conv: Conversion, schedule: str, c: float) -> None:
    """kohya's ``huber_scale`` multiplies the constant and exponential thresholds (not snr's); bespoke_pl
    has no such factor, but a constant threshold can take it in."""
    scale = args.number("huber_scale")
    if scale is None:
        return
    if scale == 1:
        conv.note("model", f"{args.source('huber_scale')}: no scaling, as here")
    elif schedule == "snr":
        conv.note("model", f"{args.source('huber_scale')}: unused, kohya's snr schedule ignores it")
    elif schedule == "constant":
        why = "kohya's constant threshold is huber_c x huber_scale; bespoke_pl's is huber_c alone"
        conv.set("model.huber_c", c * scale, f"kohya huber_c {c} times {args.source('huber_scale')}", why)
    else:
        conv.skip(
            args.source("huber_scale").removeprefix("kohya "),
            "no equivalent: bespoke_pl's exponential threshold falls from 1 to huber_c, kohya's from "
            "huber_scale to huber_c x huber_scale",
        )


def _perturbation(args: KohyaArgs, conv: Conversion) -> None:
    """Input perturbation (``ip_noise_gamma``); kohya's random strength has no equivalent."""
    gamma = args.number("ip_noise_gamma")
    if gamma is not None and gamma < 0:
        raise ConfigError(f"{args.source('ip_noise_gamma')}: the perturbation's strength must be >= 0")
    if gamma:
        conv.set("model.ip_noise_gamma", gamma, args.source("ip_noise_gamma"))
    elif gamma is not None:
        conv.note("model", f"{args.source('ip_noise_gamma')}: no input perturbation, as bespoke_pl's default")
    key = "ip_noise_gamma_random_strength"
    if key not in args:
        return
    if args.flag(key) and gamma:
        conv.skip(
            args.source(key).removeprefix("kohya "),
            "no equivalent: bespoke_pl perturbs at the full ip_noise_gamma every step",
        )
    elif args.flag(key):
        conv.note("model", f"{args.source(key)}: unused without ip_noise_gamma (as in kohya)")
    else:
        conv.note("model", f"{args.source(key)}: the full ip_noise_gamma every step, as here")


def _timesteps(args: KohyaArgs, conv: Conversion) -> None:
    """``[min_timestep, max_timestep)``, drawn as kohya draws them (``torch.randint``)."""
    low, high = args.number("min_timestep", int), args.number("max_timestep", int)
    if low is not None and low < 0:
        raise ConfigError(f"{args.source('min_timestep')}: a timestep is >= 0")
    if high is not None and high < 1:
        raise ConfigError(f"{args.source('max_timestep')}: the range [min_timestep, max_timestep) is empty")
    if low is not None and high is not None and low >= high:
        # train_util.get_timesteps: an empty range trains at max_timestep alone
        sources = f"{args.source('min_timestep')}, {args.source('max_timestep')}"
        why = f"kohya trains at max_timestep alone when min_timestep is not below it: [{high}, {high + 1})"
        conv.set("model.timestep_min", high, sources, why)
        conv.set("model.timestep_max", high + 1, sources)
        return
    if low is not None:
        conv.set("model.timestep_min", low, args.source("min_timestep"))
    if high is not None:
        conv.set("model.timestep_max", high, args.source("max_timestep"))


def _masked_loss(args: KohyaArgs, conv: Conversion) -> None:
    """kohya's ``masked_loss`` takes mask images (``conditioning_data_dir``), else the alpha masks."""
    if not args.flag("masked_loss"):
        if "masked_loss" in args:
            conv.note("model", f"{args.source('masked_loss')}: off, as bespoke_pl's default")
        return
    if conv.get("data.alpha_mask"):
        conv.note(
            "data", f"{args.source('masked_loss')}: the loss mask is the images' alpha (data.alpha_mask)"
        )
    else:
        conv.skip(
            args.source("masked_loss").removeprefix("kohya "),
            "kohya's mask images do not carry over; bespoke_pl's one loss mask is the images' alpha "
            "(kohya alpha_mask = true: data.alpha_mask)",
        )
