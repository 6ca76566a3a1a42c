"""kohya's base model and network options as ``model.*``: the family, LoRA (``networks.lora``) or LyCORIS
LoRA/LoCon (``lycoris.kohya``) with rank, alpha and convolution rank, and which parts train.
"""

from __future__ import annotations

import re
from pathlib import Path

from bespoke_pl.commands.kohya.record import Conversion, KohyaArgs
from bespoke_pl.errors import ConfigError

SDXL_ONLY = (
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "disable_mmap_load_safetensors",
)
XL_NAME = re.compile(r"(?i)(?<![a-z])(sd)?[-_]?xl(?![a-z])")  # sdxl, sd_xl, stable-diffusion-xl-base, pony-xl
FALSE = ("false", "0", "0.0", "none", "")

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
    "loraplus_lr_ratio": "no LoRA+ (one learning rate for a LoRA's two matrices)",
    "loraplus_unet_lr_ratio": "no LoRA+ (one learning rate for a LoRA's two matrices)",
    "loraplus_text_encoder_lr_ratio": "no LoRA+ (one learning rate for a LoRA's two matrices)",
}
LYCORIS_VARIANT = "a LyCORIS variant of the LoRA update that bespoke_pl does not train"
LYCORIS_ARGS = LORA_ARGS | {
    key: LYCORIS_VARIANT
    for key in (
        "use_tucker", "use_cp", "use_conv_cp", "use_scalar", "train_norm", "constraint", "rescaled",
        "wd_on_output", "full_matrix", "bypass_mode", "rs_lora", "unbalanced_factorization", "train_t5xxl",
        "factor", "decompose_both", "block_size",
    )
}  # fmt: skip
LYCORIS_ALGOS = ("lora", "locon")  # both are LyCORIS' LoConModule: LoRA, with the convolutions by conv_dim
LYCORIS_TARGETS = (
    "LyCORIS' default preset also adapts conv_in, conv_out and the time embedding; bespoke_pl adapts kohya's "
    "targets (transformer blocks, and with conv_rank the ResNet blocks and samplers)"
)


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


def _number(key: str, value: str, kind: type = float):
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise ConfigError(f"kohya network_args {key}={value} is not a number") from None


def convert_network(args: KohyaArgs, conv: Conversion) -> None:
    """LoRA rank, alpha, convolutions, dropout, DoRA and which parts train."""
    module = args.text("network_module")
    if module not in NETWORK_MODULES:
        named = (
            f"network_module {module!r} is not one bespoke_pl trains"
            if module
            else "network_module is not set"
        )
        raise ConfigError(
            f"kohya {named}: bespoke_pl trains networks.lora (LoRA; LoCon with conv_dim) and lycoris.kohya "
            "with algo=lora or locon"
        )
    extra = network_args(args)
    lycoris = module == "lycoris.kohya"
    if lycoris:
        algo = extra.pop("algo", "lora").lower()
        if algo not in LYCORIS_ALGOS:
            raise ConfigError(
                f"kohya network_args algo={algo}: LyCORIS {algo} is not LoRA; bespoke_pl trains algo=lora "
                "and algo=locon (LoRA with convolutions)"
            )
        conv.note(
            "model", f"{args.source('network_module')}, network_args algo={algo}: LoRA. {LYCORIS_TARGETS}"
        )
    else:
        targets = "the transformer blocks' layers, with conv_dim the ResNet blocks and samplers too"
        conv.note("model", f"{args.source('network_module')}: LoRA on kohya's targets, {targets}")
    rank, alpha = args.number("network_dim", int), args.number("network_alpha")
    default = "kohya default ({} not set)"
    conv.set("model.rank", rank or 4, args.source("network_dim") if rank else default.format("network_dim"))
    alpha_source = args.source("network_alpha") if alpha is not None else default.format("network_alpha")
    conv.set("model.alpha", 1.0 if alpha is None else alpha, alpha_source)
    _convolutions(extra, conv, lycoris, rank or 4, 1.0 if alpha is None else alpha)
    _dropout(args, extra, conv, lycoris)
    if lycoris:
        _lycoris_options(extra, conv)
    for key, value in extra.items():
        table = LYCORIS_ARGS if lycoris else LORA_ARGS
        if key in table and value.lower() in FALSE:
            conv.note("model", f"kohya network_args {key}={value}: off, as in bespoke_pl")
        else:
            conv.skip(f"network_args {key}={value}", table.get(key, f"not an option of {module}"))
    _trained_parts(args, conv)


def _dropout(args: KohyaArgs, extra: dict[str, str], conv: Conversion, lycoris: bool) -> None:
    """kohya's network_dropout (on the rank-r activations) or LyCORIS' dropout as peft's input dropout."""
    dropout = args.number("network_dropout")
    why = "peft drops the LoRA branch's input; kohya drops its rank-r activations"
    if dropout:
        conv.set("model.lora_dropout", dropout, args.source("network_dropout"), why)
    elif "network_dropout" in args:
        conv.note("model", f"{args.source('network_dropout')}: no dropout, as bespoke_pl's default")
    if lycoris and "dropout" in extra:
        text = extra.pop("dropout")
        if _number("dropout", text):
            conv.set("model.lora_dropout", _number("dropout", text), f"kohya network_args dropout={text}")
        else:
            conv.note("model", f"kohya network_args dropout={text}: no dropout, as bespoke_pl's default")


def _lycoris_options(extra: dict[str, str], conv: Conversion) -> None:
    """LyCORIS' DoRA (dora_wd) and target preset."""
    if "dora_wd" in extra:
        text = extra.pop("dora_wd")
        if text.lower() in FALSE:
            conv.note("model", f"kohya network_args dora_wd={text}: plain LoRA, as bespoke_pl's default")
        else:
            conv.set("model.use_dora", True, f"kohya network_args dora_wd={text}")
            why = "kohya's LoRA file format cannot hold DoRA's magnitudes"
            conv.set("save_lora.format", "diffusers", f"kohya network_args dora_wd={text}", why)
    preset = extra.pop("preset", None)
    if preset == "full":
        conv.note("model", "kohya network_args preset=full: LyCORIS' default; see network_module above")
    elif preset is not None:
        conv.skip(f"network_args preset={preset}", f"bespoke_pl has one set of targets; {LYCORIS_TARGETS}")


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
    dim_value = _number("conv_dim", dim, int) if dim is not None else rank
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
            _number("conv_alpha", conv_alpha),
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
