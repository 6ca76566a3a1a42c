"""kohya's optimizer as ``model.optimizer``: its optimizer names and ``optimizer_args``, the learning rates of
the UNet and the text encoders, and what ``fit``'s check will say of the result.
"""

from __future__ import annotations

import ast
import importlib.util
from types import SimpleNamespace

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.record import Conversion, KohyaArgs
from bespoke_pl.training.optimizer_choices import INSTALL, optimizer_problems

EIGHT_BIT = (
    "8-bit and paged optimizer states save memory on a whole model; a LoRA's states are a few MB, so the "
    "32-bit optimizer (no bitsandbytes needed)"
)
# kohya's optimizer_type names (lower case) -> (class path, fixed arguments, why it differs)
OPTIMIZERS = {
    "adamw": ("torch.optim.AdamW", {}, ""),
    "adamw8bit": ("torch.optim.AdamW", {}, EIGHT_BIT),
    "pagedadamw": ("torch.optim.AdamW", {}, EIGHT_BIT),
    "pagedadamw8bit": ("torch.optim.AdamW", {}, EIGHT_BIT),
    "pagedadamw32bit": ("torch.optim.AdamW", {}, EIGHT_BIT),
    "sgdnesterov": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": True}, ""),
    "sgdnesterov8bit": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": True}, EIGHT_BIT),
    "lion": ("lion_pytorch.Lion", {}, ""),
    "lion8bit": ("lion_pytorch.Lion", {}, EIGHT_BIT),
    "pagedlion8bit": ("lion_pytorch.Lion", {}, EIGHT_BIT),
    "adafactor": ("transformers.optimization.Adafactor", {}, ""),
    "prodigy": ("prodigyopt.Prodigy", {}, ""),
    "dadaptation": ("dadaptation.DAdaptAdamPreprint", {}, ""),
    "dadaptadampreprint": ("dadaptation.DAdaptAdamPreprint", {}, ""),
    "dadaptadagrad": ("dadaptation.DAdaptAdaGrad", {}, ""),
    "dadaptadam": ("dadaptation.DAdaptAdam", {}, ""),
    "dadaptadan": ("dadaptation.DAdaptAdan", {}, ""),
    "dadaptadanip": ("dadaptation.experimental.DAdaptAdanIP", {}, ""),
    "dadaptlion": ("dadaptation.DAdaptLion", {}, ""),
    "dadaptsgd": ("dadaptation.DAdaptSGD", {}, ""),
    # Schedule-free: kohya then ignores lr_scheduler and lr_warmup_steps (its warmup is warmup_steps)
    "radamschedulefree": ("schedulefree.RAdamScheduleFree", {}, ""),
    "adamwschedulefree": ("schedulefree.AdamWScheduleFree", {}, ""),
    "sgdschedulefree": ("schedulefree.SGDScheduleFree", {}, ""),
}
PACKAGES = {"lion_pytorch": "pip install lion-pytorch", "dadaptation": "pip install dadaptation"} | INSTALL
# The usual Adafactor setting for a LoRA: a fixed learning rate under bespoke_pl's schedule.
ADAFACTOR_FIXED_LR = {"relative_step": False, "scale_parameter": False, "warmup_init": False}
KOHYA_DEFAULT_LR = 2e-6  # train_util's --learning_rate default


def _literal(text: str):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return list(value) if isinstance(value, tuple) else value


def optimizer_arguments(args: KohyaArgs) -> dict:
    """kohya's ``optimizer_args = ["weight_decay=0.1", "betas=0.9,0.99"]`` as keyword arguments."""
    given = args.raw("optimizer_args") or []
    if not isinstance(given, str | list):
        raise ConfigError(f"{args.source('optimizer_args')} is not a list of key=value texts")
    parsed = {}
    for item in given.split() if isinstance(given, str) else given:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"kohya optimizer_args {item!r} is not key=value")
        parsed[key.strip()] = _literal(value.strip())
    return parsed


def convert_optimizer(args: KohyaArgs, conv: Conversion) -> None:
    """``model.optimizer`` (class and arguments) and the UNet's / text encoders' learning rates."""
    name = args.text("optimizer_type") or ""
    source = args.source("optimizer_type") if name else "kohya default (optimizer_type not set: AdamW)"
    if not name and args.flag("use_8bit_adam"):
        name, source = "AdamW8bit", args.source("use_8bit_adam")
    if not name and args.flag("use_lion_optimizer"):
        name, source = "Lion", args.source("use_lion_optimizer")
    for old in ("use_8bit_adam", "use_lion_optimizer"):
        if old in args and old not in source:
            conv.note("model", f"{args.source(old)}: optimizer_type decides (as in kohya)")
    key = name.lower() or "adamw"
    if key in OPTIMIZERS:
        class_path, fixed, why = OPTIMIZERS[key]
    elif "." in name:
        class_path, fixed, why = name, {}, ""
    else:
        raise ConfigError(
            f"kohya optimizer_type {name!r} is not one of kohya's optimizer names nor a module.Class"
        )
    conv.set("model.optimizer.class_path", class_path, source, why)
    module = class_path.rpartition(".")[0]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        package = module.split(".")[0]
        install = PACKAGES.get(package, f"pip install {package}")
        conv.check(f"model.optimizer {class_path} needs its package here before fit: {install}")
    _learning_rates(args, conv)
    init = dict(fixed)
    if class_path.endswith("Adafactor"):
        init |= ADAFACTOR_FIXED_LR
    given = optimizer_arguments(args)
    for arg, value in (init | given).items():
        if arg in given:
            conv.set(f"model.optimizer.init_args.{arg}", value, f"kohya optimizer_args {arg}={given[arg]}")
        elif class_path.endswith("Adafactor"):
            why = "kohya's Adafactor defaults to relative_step, its own schedule; a fixed rate suits a LoRA"
            conv.set(f"model.optimizer.init_args.{arg}", value, "Adafactor at a fixed learning rate", why)
        else:
            conv.set(f"model.optimizer.init_args.{arg}", value, f"kohya's {name} ({arg}={value})")


def _learning_rates(args: KohyaArgs, conv: Conversion) -> None:
    """kohya: the UNet at unet_lr, the text encoders at text_encoder_lr (one per SDXL encoder), each else at
    learning_rate; bespoke_pl: the optimizer's lr, and one text_encoder_lr for both encoders."""
    unet_lr, lr = args.number("unet_lr"), args.number("learning_rate")
    if unet_lr:
        conv.set("model.optimizer.init_args.lr", unet_lr, args.source("unet_lr"))
    elif lr is not None:
        conv.set("model.optimizer.init_args.lr", lr, args.source("learning_rate"))
    else:
        conv.set("model.optimizer.init_args.lr", KOHYA_DEFAULT_LR, "kohya default (learning_rate not set)")
    if unet_lr == 0:
        conv.skip(args.source("unet_lr").removeprefix("kohya "), "bespoke_pl always trains the UNet's LoRA")
    value = args.raw("text_encoder_lr")
    try:
        rates = (
            [float(v) for v in (value if isinstance(value, list) else [value])] if value is not None else []
        )
    except (TypeError, ValueError):
        raise ConfigError(f"{args.source('text_encoder_lr')} is not a number or a list of numbers") from None
    training = conv.get("model.train_text_encoder")
    if rates and not training:
        conv.note(
            "model", f"{args.source('text_encoder_lr')}: unused, the text encoders are frozen (as in kohya)"
        )
    elif rates and rates[0] == 0:
        why = "a learning rate of 0 trains nothing: the text encoders stay frozen"
        conv.set("model.train_text_encoder", False, args.source("text_encoder_lr"), why)
    elif rates:
        conv.set("model.text_encoder_lr", rates[0], args.source("text_encoder_lr"))
        if len(set(rates)) > 1:
            reason = f"one learning rate for both text encoders: {rates[0]}"
            conv.skip(args.source("text_encoder_lr").removeprefix("kohya "), reason)
    if not unet_lr or lr is None:
        return
    if training and not rates:  # the text encoders train at learning_rate, as in kohya
        if lr != unet_lr:
            source = f"{args.source('learning_rate')} (kohya's text-encoder rate when unet_lr is set)"
            conv.set("model.text_encoder_lr", lr, source)
        else:
            conv.note("model", f"{args.source('learning_rate')}: the text encoders' rate, equal to unet_lr")
    else:
        conv.note(
            "model",
            f"{args.source('learning_rate')}: unused, unet_lr and text_encoder_lr (or frozen "
            "text encoders) set every rate, as in kohya",
        )


def check_optimizer(conv: Conversion) -> None:
    """What ``fit``'s config check will say of the converted optimizer and schedule (Prodigy's rate and
    schedule, 8-bit without CUDA), in the warning: the values stay kohya's, the user decides."""
    init = SimpleNamespace(
        lr=conv.get("model.optimizer.init_args.lr"),
        safeguard_warmup=conv.get("model.optimizer.init_args.safeguard_warmup") or False,
    )
    model = SimpleNamespace(
        optimizer=SimpleNamespace(class_path=conv.get("model.optimizer.class_path"), init_args=init),
        lr_schedule=conv.get("model.lr_schedule") or "constant",
        lr_warmup_steps=conv.get("model.lr_warmup_steps") or 0,
    )
    for problem in optimizer_problems(model, SimpleNamespace(accelerator=conv.get("trainer.accelerator"))):
        conv.check(f"fit will refuse this until it is changed: {problem}")
