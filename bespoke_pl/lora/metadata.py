"""The header of a LoRA file: kohya's ``ss_*`` keys, ``modelspec.*`` (SAI model spec 1.0.1) and ours.

All values are strings, as safetensors requires; structured values are JSON. kohya's conventions are kept so
tools that read them (A1111's LoRA card, ComfyUI's metadata view, kohya's own scripts) show the right facts:
``ss_clip_skip`` in kohya numbering (ours is the same), ``ss_tag_frequency`` as
``{folder: {tag: count}}``, ``ss_network_args`` as a JSON object of strings. Our own keys are namespaced
``bespoke_pl.*`` and hold what a file alone needs for pixel-perfect images: ``pixel_scale``, the art
``resolution``, ``clip_skip`` and the training set's ``palette`` (JSON list of ``#rrggbb``).
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bespoke_pl
from bespoke_pl.pixelart.palette import palette_to_hex

ARCHITECTURES = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
# kohya's implementation ids: SDXL LoRA names follow SGM's UNet, SD 1.5 LoRA names diffusers'.
IMPLEMENTATIONS = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}
DEFAULT_CLIP_SKIP = {"sd15": 1, "sdxl": 2}
# Optimizer defaults that describe an implementation, not a training choice.
_IMPLEMENTATION_FLAGS = {"foreach", "fused", "capturable", "differentiable", "maximize", "lr"}
# Running state that some optimizers keep among their defaults (at its initial value there): Prodigy's step
# size estimate, schedule-free's step count, averaging weights and train/eval mode.
_RUNNING_STATE = {"d", "d_max", "d_numerator", "k", "train_mode", "weight_sum", "lr_max", "scheduled_lr"}


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """How often each comma-separated tag occurs in the captions (stripped, lower case), as kohya counts."""
    return dict(Counter(t.strip().lower() for c in captions for t in c.split(",") if t.strip()))


def optimizer_description(optimizer) -> str:
    """``torch.optim.adamw.AdamW(betas=(0.9, 0.999),eps=1e-08,weight_decay=0.01)``: class and settings."""
    cls = type(optimizer)
    settings = [
        f"{k}={v}"
        for k, v in sorted(optimizer.defaults.items())
        if k not in _IMPLEMENTATION_FLAGS | _RUNNING_STATE and isinstance(v, int | float | str | tuple)
    ]
    return f"{cls.__module__}.{cls.__qualname__}({','.join(settings)})"


def objective_metadata(h, alphas_cumprod=None) -> dict:
    """The objective options under kohya's ``ss_*`` names (those of its SD3 / flux scripts for the timestep
    density and shift), and ours for the timestep range, which kohya does not record."""
    steps = len(alphas_cumprod) if alphas_cumprod is not None else None
    return {
        "ss_loss_type": h.get("loss_type", "l2"),
        "ss_huber_schedule": h.get("huber_schedule", "snr"),
        "ss_huber_c": h.get("huber_c", 0.1),
        "ss_debiased_estimation": bool(h.get("debiased_estimation", False)),
        "ss_ip_noise_gamma": h.get("ip_noise_gamma", 0.0),
        "ss_zero_terminal_snr": bool(h.get("zero_terminal_snr", False)),
        "ss_timestep_sampling": h.get("timestep_sampling", "uniform"),
        "ss_logit_mean": h.get("logit_mean", 0.0),
        "ss_logit_std": h.get("logit_std", 1.0),
        "ss_discrete_flow_shift": h.get("timestep_shift", 1.0),
        "bespoke_pl.timestep_min": h.get("timestep_min", 0),
        "bespoke_pl.timestep_max": h.get("timestep_max") or steps,
    }


@dataclass
class RunFacts:
    """What a LoRA header records of the run besides the model's options: the trainer's counts and settings
    and the data module's options, gathered by the caller (``callbacks.save_lora``) from Lightning."""

    steps: int
    num_epochs: int | None
    max_train_steps: int | float
    batches_per_epoch: int | float
    gradient_accumulation: int
    max_grad_norm: float | None
    precision: str
    optimizer: object | None  # the first optimizer (its settings and its groups' learning rates)
    data: dict = field(default_factory=dict)  # the data module's options; empty: another data source
    folder: str = "unknown"  # the training folder's name


def _learning_rates(optimizer) -> dict[str, float]:
    if optimizer is None:
        return {}
    groups = optimizer.param_groups
    return {g.get("name", str(i)): float(g.get("initial_lr", g["lr"])) for i, g in enumerate(groups)}


def network_record(h) -> tuple[str, dict[str, str]]:
    """kohya's ``ss_network_module`` and ``ss_network_args`` (strings, as typed on sd-scripts' command line).

    Plain LoRA is sd-scripts' ``networks.lora``. LoHa, LoKr and DoRA are what sd-scripts trains through
    LyCORIS (``--network_module lycoris.kohya --network_args algo=... dora_wd=True``; see
    ``lycoris/kohya.py``), so they are recorded that way: ``algo`` ``loha`` / ``lokr`` / ``lora``, LoKr's
    ``factor``, DoRA's ``dora_wd`` with ``wd_on_output`` (per-output-row magnitudes, LyCORIS' default), and
    without convolution LoRA the ``attn-mlp`` preset (LyCORIS' default, ``full``, adds the convolutions).
    """
    convolutions = {}
    if h.conv_rank:
        convolutions = {"conv_dim": str(h.conv_rank), "conv_alpha": str(float(h.conv_alpha or h.conv_rank))}
    network = h.get("network", "lora")
    if network == "lora" and not h.use_dora:
        return "networks.lora", convolutions
    args = {"algo": network, **convolutions}
    if not h.conv_rank:
        args["preset"] = "attn-mlp"
    if network == "lokr":
        args["factor"] = str(h.get("lokr_factor", -1))
    if h.use_dora:
        args |= {"dora_wd": "True", "wd_on_output": "True"}
    return "lycoris.kohya", args


def training_metadata(
    run: RunFacts,
    module,
    output_name: str,
    epoch: int,
    started_at: float,
    session_id: int,
    pairs=None,
) -> dict[str, str]:
    """The header of the LoRA file written after ``epoch`` (1-based) of a run started at ``started_at``.

    ``module`` is the trained :class:`~bespoke_pl.training.module.PixelLoRAModule`; ``pairs`` is the run's
    training set in memory (:class:`~bespoke_pl.data.pairs.PixelPairs`), for the image count, tag
    frequencies and palette; None where the data module has none.
    """
    h = module.hparams
    family = module.family
    size = h.resolution * h.pixel_scale  # the image side the model was trained on
    data, folder = run.data, run.folder if pairs is not None else "unknown"
    num_images = len(pairs.captions) if pairs is not None else 0
    repeats = int(data.get("num_repeats", 1))
    rates = _learning_rates(run.optimizer)
    network_module, network_args = network_record(h)
    if h.get("loraplus_lr_ratio") is not None:  # kohya's network_args key, for the UNet and text encoders
        network_args["loraplus_lr_ratio"] = str(float(h.loraplus_lr_ratio))
    prediction = "v" if module.prediction_type == "v_prediction" else "epsilon"
    metadata = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": datetime.datetime.now().timestamp(),
        "ss_output_name": output_name,
        "ss_epoch": epoch,
        "ss_steps": run.steps,
        "ss_num_epochs": run.num_epochs,
        "ss_max_train_steps": run.max_train_steps,
        "ss_num_train_images": num_images * repeats,
        "ss_num_reg_images": 0,
        "ss_num_batches_per_epoch": run.batches_per_epoch,
        "ss_batch_size_per_device": data.get("batch_size"),
        "ss_gradient_accumulation_steps": run.gradient_accumulation,
        "ss_gradient_checkpointing": bool(h.gradient_checkpointing),
        "ss_max_grad_norm": run.max_grad_norm,
        "ss_learning_rate": rates.get("unet"),
        "ss_unet_lr": rates.get("unet"),
        "ss_text_encoder_lr": rates.get("te"),
        "ss_optimizer": optimizer_description(run.optimizer) if run.optimizer is not None else None,
        "ss_lr_scheduler": h.lr_schedule,
        "ss_lr_warmup_steps": h.lr_warmup_steps,
        "ss_mixed_precision": run.precision,
        "ss_seed": os.environ.get("PL_GLOBAL_SEED"),
        "ss_network_module": network_module,
        "ss_network_dim": h.rank,
        "ss_network_alpha": float(h.alpha),
        "ss_network_dropout": h.lora_dropout,
        "ss_network_args": json.dumps(network_args),
        "ss_network_train_unet_only": not h.train_text_encoder,
        "ss_v2": False,
        "ss_base_model_version": BASE_MODEL_VERSIONS[family],
        "ss_sd_model_name": Path(h.base_model).name if Path(h.base_model).exists() else h.base_model,
        "ss_clip_skip": h.clip_skip,
        "ss_resolution": f"({size}, {size})",
        "ss_cache_latents": module.latent_cache is not None,
        "ss_enable_bucket": False,
        "ss_flip_aug": False,
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_shuffle_caption": bool(data.get("shuffle_captions", False)),
        "ss_keep_tokens": data.get("keep_tokens", 0),
        "ss_caption_dropout_rate": data.get("caption_dropout", 0.0),
        "ss_noise_offset": h.noise_offset,
        "ss_min_snr_gamma": h.min_snr_gamma,
        **objective_metadata(h, module.alphas_cumprod),
        "ss_dataset_dirs": json.dumps({folder: {"n_repeats": repeats, "img_count": num_images}}),
        "ss_tag_frequency": json.dumps({folder: tag_frequency(pairs.captions) if pairs else {}}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ARCHITECTURES[family],
        "modelspec.implementation": IMPLEMENTATIONS[family],
        "modelspec.implementation_version": f"bespoke_pl {bespoke_pl.__version__}",
        "modelspec.title": output_name,
        "modelspec.date": datetime.datetime.fromtimestamp(int(started_at)).isoformat(),
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.prediction_type": prediction,
        "modelspec.encoder_layer": h.clip_skip,
        "modelspec.usage_hint": (
            f"{h.resolution}x{h.resolution} pixel art: generate at {size}x{size}, then keep the most common "
            f"colour of each {h.pixel_scale}x{h.pixel_scale} block (python -m bespoke_pl generate does this)"
        ),
        "bespoke_pl.family": family,
        "bespoke_pl.pixel_scale": h.pixel_scale,
        "bespoke_pl.sdxl_size": (h.get("sdxl_size") or size) if family == "sdxl" else None,
        "bespoke_pl.resolution": h.resolution,
        "bespoke_pl.clip_skip": h.clip_skip,
        "bespoke_pl.palette": json.dumps(palette_to_hex(pairs.palette) if pairs else []),
        "bespoke_pl.hparams": json.dumps(dict(h), default=str),
        "bespoke_pl.alpha_mask": bool(data.get("alpha_mask", False)),  # kohya records no masked-loss key
    }
    # safetensors headers hold strings only; kohya writes unset values as "None" too.
    return {k: str(v) for k, v in metadata.items()}


@dataclass
class RecordedSettings:
    """What a LoRA file's header says about how to generate with it; None where it says nothing."""

    pixel_scale: int | None = None
    sdxl_size: int | None = None
    clip_skip: int | None = None
    resolution: int | None = None
    palette: list[str] | None = None
    zero_terminal_snr: bool = False


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def recorded_settings(metadata: dict[str, str]) -> RecordedSettings:
    """Read our keys, falling back to kohya's / modelspec's clip skip for other tools' files."""
    palette = metadata.get("bespoke_pl.palette")
    clip_skip = _int(metadata.get("bespoke_pl.clip_skip"))
    if clip_skip is None:
        clip_skip = _int(metadata.get("ss_clip_skip")) or _int(metadata.get("modelspec.encoder_layer"))
    return RecordedSettings(
        pixel_scale=_int(metadata.get("bespoke_pl.pixel_scale")),
        sdxl_size=_int(metadata.get("bespoke_pl.sdxl_size")),
        clip_skip=clip_skip,
        resolution=_int(metadata.get("bespoke_pl.resolution")),
        palette=json.loads(palette) if palette else None,
        # kohya's key, so a kohya file trained with --zero_terminal_snr samples with its schedule too
        zero_terminal_snr=metadata.get("ss_zero_terminal_snr") == "True",
    )
