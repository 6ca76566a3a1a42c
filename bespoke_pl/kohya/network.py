"""kohya's base model and network options as ``model.*``: the family, LoRA (``networks.lora``) or LyCORIS
(``lycoris.kohya``: LoRA/LoCon, LoHa, LoKr, see :mod:`~bespoke_pl.kohya.lycoris`) with rank, alpha
and convolution rank, LoRA+, and which parts train.
"""

from __future__ import annotations

import re
from pathlib import Path

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.lycoris import (
    FALSE,
    VARIANT,
    VARIANT_ARGS,
    arg_number,
    lycoris_network,
    lycoris_options,
)
from bespoke_pl.kohya.record import Conversion, KohyaArgs

SDXL_ONLY = (
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "disable_mmap_load_safetensors",
)
XL_NAME = re.compile(r"(?i)(?<![a-z])(sd)?[-_]?xl(?![a-z])")  # sdxl, sd_xl, stable-diffusion-xl-base, pony-xl

NETWORK_MODULES = ("networks.lora", "lycoris.kohya")
LORA_ARGS = {  # networks.lora's network_args that bespoke_pl has no equivalent for, and why
    "rank_dropout": "bespoke_pl has dropout on the LoRA input only (model.lora_dropout)",
    "module_dropout": "bespoke_pl has dropout on the LoRA input only (model.lora_dropout)",
    "block_dims": "one rank for every block (model.rank, model.conv_rank)",
    "block_alphas": "one alpha for every block (model.alpha, model.conv_alpha)",
    "conv_block_dims": "one rank for every block (model.rank, model.conv_rank)",
    "conv_block_alphas": "one alpha for every block (model.alpha, model.conv_alpha)",
    "down_lr_weight": "one learning rate for the whole UNet",
    "mid_lr_weight": "one learning rate for the whole UNet",
    "up_lr_weight": "one learning rate for the whole UNet",
    "block_lr_zero_threshold": "one learning rate for the whole UNet",
}
LYCORIS_ARGS = LORA_ARGS | dict.fromkeys(VARIANT_ARGS, VARIANT)
# LoRA+ (networks.lora and lycoris.kohya alike): the UNet's ratio is loraplus_unet_lr_ratio, else
# loraplus_lr_ratio; the text encoders' loraplus_text_encoder_lr_ratio, else loraplus_lr_ratio.
LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


def detect_family(args: KohyaArgs, model: str, requested: str) -> tuple[str, str]:
    """``(family, how it was found)``: ``--family``, else a local base model's files, else the TOML."""
    path = Path(model).expanduser()
    if path.exists():
        from bespoke_pl.diffusion.base import detect_family as family_of_files

        found = family_of_files(str(path))
        if requested not in ("auto", found):
            raise ConfigError(f"--family {requested}, but the base model {model} is {found}")
        return found, f"read from the base model {model}"
    if requested != "auto":
        return requested, f"--family {requested}"
    sdxl_options = [key for key in SDXL_ONLY if key in args]
    if XL_NAME.search(model):
        return "sdxl", "the base model's name says XL"
    if sdxl_options:
        return "sdxl", f"{sdxl_options[0]} is an option of sdxl_train_network.py"
    return "sd15", "no sign of SDXL in the TOML (give --family sdxl for an sdxl_train_network.py config)"


def convert_base(args: KohyaArgs, conv: Conversion, requested: str) -> str:
    """``model.base_model`` and ``model.family``; the family."""
    if args.flag("v2"):
        raise ConfigError(f"{args.source('v2')}: an SD 2.x base; bespoke_pl trains SD 1.5 and SDXL LoRAs")
    model = args.text("pretrained_model_name_or_path")
    if not model:
        raise ConfigError("kohya pretrained_model_name_or_path is not set: no base model")
    family, how = detect_family(args, model, requested)
    conv.family = family
    conv.set("model.base_model", model, args.source("pretrained_model_name_or_path"))
    conv.set("model.family", family, how)
    if "v2" in args:
        conv.note("model", f"{args.source('v2')}: SD 1.5 or SDXL, as bespoke_pl trains")
    if Path(model).suffix.lower() in (".safetensors", ".ckpt"):
        why = "a single file: offline, model.base_config names a diffusers folder for the component configs"
        conv.note("model", why)
    if args.flag("v_parameterization"):
        conv.skip(
            args.source("v_parameterization").removeprefix("kohya "),
            "bespoke_pl reads the prediction type from the base model's scheduler config (prediction_type); "
            "check that this base's says v_prediction",
        )
    elif "v_parameterization" in args:
        why = "the prediction type comes from the base's scheduler config (epsilon for SD 1.5 and SDXL)"
        conv.note("model", f"{args.source('v_parameterization')}: {why}")
    return family


def network_args(args: KohyaArgs) -> dict[str, str]:
    """kohya's ``network_args = ["conv_dim=8", "algo=locon"]`` as a dict of strings."""
    given = args.raw("network_args") or []
    if not isinstance(given, str | list):
        raise ConfigError(f"{args.source('network_args')} is not a list of key=value texts")
    items = given.split() if isinstance(given, str) else given
    parsed = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"kohya network_args {item!r} is not key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def convert_network(args: KohyaArgs, conv: Conversion) -> None:
    """The network (LoRA, LoHa, LoKr), rank, alpha, convolutions, dropout, DoRA and which parts train."""
    module = args.text("network_module")
    if module not in NETWORK_MODULES:
        named = (
            f"network_module {module!r} is not one bespoke_pl trains"
            if module
            else "network_module is not set"
        )
        raise ConfigError(
            f"kohya {named}: bespoke_pl trains networks.lora (LoRA; LoCon with conv_dim) and lycoris.kohya "
            "with algo=lora, locon, loha or lokr"
        )
    extra = network_args(args)
    lycoris = module == "lycoris.kohya"
    if lycoris:
        network = lycoris_network(extra, conv, args.source("network_module"))
    else:
        network = "lora"
        targets = "the transformer blocks' layers, with conv_dim the ResNet blocks and samplers too"
        conv.note("model", f"{args.source('network_module')}: LoRA on kohya's targets, {targets}")
    rank, alpha = args.number("network_dim", int), args.number("network_alpha")
    default = "kohya default ({} not set)"
    conv.set("model.rank", rank or 4, args.source("network_dim") if rank else default.format("network_dim"))
    alpha_source = args.source("network_alpha") if alpha is not None else default.format("network_alpha")
    conv.set("model.alpha", 1.0 if alpha is None else alpha, alpha_source)
    _convolutions(extra, conv, lycoris, rank or 4, 1.0 if alpha is None else alpha)
    _dropout(args, conv, lycoris)
    if lycoris:
        lycoris_options(extra, conv, network)
    for key, value in extra.items():
        table = LYCORIS_ARGS if lycoris else LORA_ARGS
        if key in LORAPLUS:
            continue  # convert_loraplus, once the trained parts are known
        if key in table and value.lower() in FALSE:
            conv.note("model", f"kohya network_args {key}={value}: off, as in bespoke_pl")
        else:
            conv.skip(f"network_args {key}={value}", table.get(key, f"not an option of {module}"))
    _trained_parts(args, conv)


def _dropout(args: KohyaArgs, conv: Conversion, lycoris: bool) -> None:
    """kohya's network_dropout (on the rank-r activations) as peft's input dropout; LyCORIS ignores it."""
    dropout = args.number("network_dropout")
    why = "peft drops the LoRA branch's input; kohya drops its rank-r activations"
    if dropout and lycoris:
        conv.note(
            "model",
            f"{args.source('network_dropout')}: unused, as lycoris.kohya ignores it (its dropout is "
            "network_args dropout)",
        )
    elif dropout:
        conv.set("model.lora_dropout", dropout, args.source("network_dropout"), why)
    elif "network_dropout" in args:
        conv.note("model", f"{args.source('network_dropout')}: no dropout, as bespoke_pl's default")


def _convolutions(extra: dict[str, str], conv: Conversion, lycoris: bool, rank: int, alpha: float) -> None:
    """``conv_rank``/``conv_alpha``: kohya's LoRA adds them with conv_dim only (alpha 1 unless given);
    LyCORIS always (conv_dim and conv_alpha default to the network's)."""
    dim = extra.pop("conv_dim", None)
    conv_alpha = extra.pop("conv_alpha", None)
    if dim is None and not lycoris:
        if conv_alpha is not None:
            conv.note(
                "model", f"kohya network_args conv_alpha={conv_alpha}: unused without conv_dim (in kohya too)"
            )
        return
    dim_value = arg_number("conv_dim", dim, int) if dim is not None else rank
    source = (
        f"kohya network_args conv_dim={dim}"
        if dim is not None
        else "LyCORIS default (conv_dim = network_dim)"
    )
    if dim_value == 0:
        conv.note("model", f"{source}: no convolution LoRA")
        return
    conv.set("model.conv_rank", dim_value, source)
    if conv_alpha is not None:
        conv.set(
            "model.conv_alpha",
            arg_number("conv_alpha", conv_alpha),
            f"kohya network_args conv_alpha={conv_alpha}",
        )
    elif lycoris:
        conv.set("model.conv_alpha", alpha, "LyCORIS default (conv_alpha = network_alpha)")
    else:
        conv.set("model.conv_alpha", 1.0, "kohya default (conv_alpha not in network_args)")


def _trained_parts(args: KohyaArgs, conv: Conversion) -> None:
    """The UNet always trains; the text encoders unless network_train_unet_only (kohya trains both)."""
    if args.flag("network_train_text_encoder_only"):
        conv.skip(
            args.source("network_train_text_encoder_only").removeprefix("kohya "),
            "bespoke_pl always trains the UNet's LoRA; here the text encoders' train with it",
        )
    elif "network_train_text_encoder_only" in args:
        conv.note(
            "model", f"{args.source('network_train_text_encoder_only')}: the UNet trains, as always here"
        )
    if args.flag("network_train_unet_only"):
        conv.set("model.train_text_encoder", False, args.source("network_train_unet_only"))
        return
    source = (
        args.source("network_train_unet_only")
        if "network_train_unet_only" in args
        else "kohya default (network_train_unet_only not set: kohya trains the text encoders' LoRA too)"
    )
    conv.set("model.train_text_encoder", True, source)


def convert_loraplus(args: KohyaArgs, conv: Conversion) -> None:
    """LoRA+: ``model.loraplus_lr_ratio``, one ratio for the UNet's and the text encoders' up matrices.

    Runs after the learning rates, which may freeze the text encoders (``text_encoder_lr = 0``).
    """
    given = {key: value for key, value in network_args(args).items() if key in LORAPLUS}
    if not given:
        return
    ratios = {}
    for key, text in given.items():
        ratio = arg_number(key, text)
        if not ratio > 0:
            raise ConfigError(f"kohya network_args {key}={text}: a LoRA+ ratio must be > 0")
        ratios[key] = ratio
    source = {key: f"kohya network_args {key}={text}" for key, text in given.items()}
    if conv.get("model.network") in ("loha", "lokr"):
        for key in given:
            conv.note(
                "model",
                f"{source[key]}: unused, LoHa and LoKr have no up matrix to speed up (in LyCORIS too)",
            )
        return
    general, unet_key, te_key = LORAPLUS
    unet = unet_key if unet_key in ratios else general if general in ratios else None
    te = te_key if te_key in ratios else general if general in ratios else None
    training_te = bool(conv.get("model.train_text_encoder"))
    if unet is None:  # the text encoders' ratio alone
        if training_te:
            conv.skip(
                source[te].removeprefix("kohya "),
                "LoRA+ on the text encoders alone: bespoke_pl's model.loraplus_lr_ratio is the UNet's too",
            )
        else:
            conv.note("model", f"{source[te]}: unused, the text encoders are frozen (as in kohya)")
        return
    why = ""
    if training_te and te is None:
        why = (
            "kohya gives the text encoders no LoRA+ (neither loraplus_text_encoder_lr_ratio nor "
            "loraplus_lr_ratio); here the ratio is theirs too"
        )
    conv.set("model.loraplus_lr_ratio", ratios[unet], source[unet], why)
    for key in given:
        if key == unet:
            continue
        if key == te and training_te and ratios[te] != ratios[unet]:
            conv.skip(
                source[key].removeprefix("kohya "),
                f"one LoRA+ ratio for the UNet and the text encoders: {ratios[unet]} "
                "(model.loraplus_lr_ratio)",
            )
        elif key == te and training_te:
            conv.note("model", f"{source[key]}: the text encoders' ratio, the UNet's too")
        elif key == te:
            conv.note("model", f"{source[key]}: unused, the text encoders are frozen (as in kohya)")
        else:
            conv.note("model", f"{source[key]}: unused, the part-specific ratios decide (as in kohya)")
