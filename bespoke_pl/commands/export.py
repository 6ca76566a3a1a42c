"""``python -m bespoke_pl export LORA --to lora``: a DoRA, LoHa or LoKr file as a plain kohya LoRA.

Every check (the file, the options, the output, the base model's family) runs before the base model is
loaded; the shapes are checked against the loaded base before anything is written. See
:mod:`bespoke_pl.lora.export` for the maths and docs/lora-export.md for why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from bespoke_pl.commands.options import device_option
from bespoke_pl.diffusion.base import detect_family, load_base, resolve_spec
from bespoke_pl.errors import BaseModelError, ConfigError
from bespoke_pl.lora.export import (
    DEFAULT_MAX_ERROR,
    export_header,
    export_plain,
    file_kind,
    plain_path,
    write_plain,
)
from bespoke_pl.lora.loading import FAMILY_NAMES, read_lora_file

log = logging.getLogger(__name__)


def recorded_base(metadata: dict[str, str]) -> str | None:
    """The base model a file was trained on, as its header records it (our hparams, else kohya's name)."""
    try:
        base = json.loads(metadata.get("bespoke_pl.hparams") or "{}").get("base_model")
    except (json.JSONDecodeError, AttributeError):
        base = None
    return base or metadata.get("ss_sd_model_name") or None


def export_lora(
    lora: str,
    to: Literal["lora"] = "lora",
    max_error: float = DEFAULT_MAX_ERROR,
    max_rank: int | None = None,
    base_model: str | None = None,
    base_config: str | None = None,
    out: str | None = None,
    device: Literal["auto", "cuda", "mps", "cpu"] = "cpu",
) -> Path:
    """Write a DoRA, LoHa or LoKr file as a plain kohya LoRA, which every loader applies as trained.

    Each layer's exact update (merged weight minus base weight) is written as its truncated SVD at the
    smallest rank whose relative error (Frobenius, against the update's norm) is at most ``max_error``.
    The header keeps the source's (palette, pixel_scale, clip skip...) and records each layer's rank and
    error under ``bespoke_pl.export``.

    Args:
        lora: The LoRA ``.safetensors`` file (kohya or diffusers format).
        to: The format to write: ``lora``, kohya's plain LoRA (``lora_down``/``lora_up``, scale 1).
        max_error: Bound on each layer's relative error (0.01 = 1% of the update's norm).
        max_rank: Cap on each layer's rank (a layer that needs more is written at the cap, its error
            reported); unset: as high as the bound needs.
        base_model: The base model the LoRA was trained on; unset: the one its header records.
        base_config: For a single-file base: a diffusers folder or hub id to read component configs from.
        out: The file to write (never replaced); unset: ``NAME-plain.safetensors`` beside the input.
        device: Where the updates and SVDs are computed; ``auto`` picks CUDA, then MPS, then CPU.
    """
    if not 0 <= max_error < 1:
        raise ConfigError(f"--max_error must be in [0, 1), got {max_error}")
    if max_rank is not None and max_rank < 1:
        raise ConfigError(f"--max_rank must be >= 1, got {max_rank}")
    lora_file = read_lora_file(lora)
    if file_kind(lora_file) == "LoRA":
        raise ConfigError(f"{lora_file.path} is a plain LoRA already: nothing to export")
    target = Path(out).expanduser() if out else plain_path(lora_file.path)
    if target.suffix != ".safetensors":
        raise ConfigError(f"--out {target} is not a .safetensors file")
    if target.exists():
        raise ConfigError(f"{target} exists; export never replaces a file: give another --out")
    target_device = device_option(device)
    spec = base_model or recorded_base(lora_file.metadata)
    if spec is None:
        raise ConfigError(f"{lora_file.path} records no base model; give --base_model")
    try:
        family = detect_family(resolve_spec(spec))
    except BaseModelError as error:
        hint = (
            ""
            if base_model
            else f" (the base model {lora_file.path.name}'s header records); give --base_model"
        )
        raise BaseModelError(f"{error}{hint}") from error
    if lora_file.family is not None and lora_file.family != family:
        raise ConfigError(
            f"{lora_file.path} is a LoRA for {FAMILY_NAMES[lora_file.family]}, but base model {spec} is "
            f"{FAMILY_NAMES[family]}; give its {FAMILY_NAMES[lora_file.family]} base with --base_model"
        )
    base = load_base(spec, family, base_config)
    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    components = {"unet": base.unet, **dict(zip(names, base.text_encoders, strict=True))}
    components = {name: model.to(target_device) for name, model in components.items()}
    plain = export_plain(lora_file, components, family, max_error, max_rank)
    header = export_header(lora_file.metadata, plain, lora_file.path.name, max_error, max_rank)
    try:
        write_plain(target, plain, header)
    except FileExistsError as error:  # made by someone else since the check above
        raise ConfigError(str(error)) from error
    print(f"wrote {target}: {plain.summary(max_error)}")
    return target


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    run_command("export", export_lora, argv)
