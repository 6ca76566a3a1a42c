"""kohya's validation options as bespoke_pl's validation loss (``data.val_split``, ``model.validation_seed``,
Lightning's ``check_val_every_n_epoch`` / ``limit_val_batches``).

Both measure the training objective on held-out images at four fixed timesteps with seeded noise, after every
epoch unless told otherwise (sd-scripts' ``train_network.py``, ``train_util.split_train_val``). They differ in
which images are held out (kohya: a seeded random draw; here: evenly spread over the sorted file names) and
where the timesteps lie (kohya: 200, 400, 600, 800 of [min_timestep, max_timestep); here the middles of four
bins of the whole schedule, 125 ... 875).
"""

from __future__ import annotations

import math

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.record import Conversion, KohyaArgs

HELD_OUT = (
    "which images: kohya draws them at random, bespoke_pl takes those evenly spread over the sorted file "
    "names (the same for every seed)"
)
SEED = (
    "kohya's validation_seed draws the held-out images and the validation noise; here it seeds the noise "
    "(the held-out images do not depend on a seed)"
)
TIMESTEPS = (
    "kohya measures at 4 timesteps spread over [min_timestep, max_timestep) (200, 400, 600, 800 by default); "
    "bespoke_pl at model.validation_timesteps 4 over the whole schedule (125, 375, 625, 875)"
)


def convert_validation(args: KohyaArgs, conv: Conversion, layers, images: int) -> int:
    """The held-out split and its seed (from the TOML or the dataset config: ``layers``, the most specific
    place winning) and how often validation runs; ``images``: how many the training folder holds.

    Returns:
        How many of them are held out (kohya trains on the rest, and counts its steps with them).
    """
    held = _split(conv, layers, images)
    on = held is not None
    seed, seed_source = layers.number("validation_seed", int)
    run_seed = args.number("seed", int)
    if on and seed is not None:
        conv.set("model.validation_seed", seed, seed_source, SEED)
    elif on and run_seed is not None:
        source = f"kohya default (validation_seed not set: {args.source('seed').removeprefix('kohya ')})"
        conv.set("model.validation_seed", run_seed, source, SEED)
    elif seed_source:
        conv.note("model", f"{seed_source}: unused without a validation_split (as in kohya)")
    if not on:
        for key in ("validate_every_n_epochs", "validate_every_n_steps", "max_validation_steps"):
            if key in args:
                conv.note("trainer", f"{args.source(key)}: unused without a validation_split (as in kohya)")
        return 0
    conv.note("model", f"validation: {TIMESTEPS}")
    every = args.number("validate_every_n_epochs", int)
    if every is not None:
        if every < 1:
            raise ConfigError(f"{args.source('validate_every_n_epochs')}: validation every N >= 1 epochs")
        conv.set("trainer.check_val_every_n_epoch", every, args.source("validate_every_n_epochs"))
    steps = args.number("max_validation_steps", int)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"{args.source('max_validation_steps')}: at least one validation batch")
        why = "the first N batches of the held-out images, and of the training images measured beside them"
        conv.set("trainer.limit_val_batches", steps, args.source("max_validation_steps"), why)
    if args.number("validate_every_n_steps", int):
        conv.skip(
            args.source("validate_every_n_steps").removeprefix("kohya "),
            "bespoke_pl measures val/loss once per epoch (trainer.check_val_every_n_epoch)",
        )
    elif "validate_every_n_steps" in args:
        conv.note("trainer", f"{args.source('validate_every_n_steps')}: once per epoch, as here")
    return held


def _split(conv: Conversion, layers, images: int) -> int | None:
    """``data.val_split`` as many images as kohya holds out (``round(images x split)``); how many, None
    without validation."""
    split, source = layers.number("validation_split", float)
    if split is None:
        return None
    if split >= 1:
        raise ConfigError(f"{source} holds out every image; a validation_split is a fraction below 1")
    if split <= 0:
        state = "no validation" if split == 0 else "kohya ignores a split outside [0, 1]: no validation"
        conv.note("data", f"{source}: {state}, as bespoke_pl's default")
        return None
    held = round(images * split)  # train_util.split_train_val: the last round(n * split) images
    if images and held == 0:
        conv.note("data", f"{source}: kohya holds out round({images} x {split}) = 0 images: no validation")
        return None
    if images and math.ceil(images * split) != held:  # bespoke_pl rounds a fraction up
        why = (
            f"kohya holds out round({images} x {split}) = {held} of the {images} images (here a fraction "
            f"rounds up); {HELD_OUT}"
        )
        conv.set("data.val_split", held, source, why)
    else:
        conv.set("data.val_split", split, source, HELD_OUT)
    return held
