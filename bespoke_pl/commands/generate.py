"""``python -m bespoke_pl generate``: images from a base model and one LoRA file, without a training run.

The LoRA is merged into a freshly loaded base model (:mod:`bespoke_pl.lora.loading`), prompts are encoded with
the same function as in training, and each image is generated at ``24 * pixel_scale`` px and reduced to the
24x24 art grid by :func:`~bespoke_pl.pixelart.snap.snap_and_lock`, as the training samples are. Clip skip and ``pixel_scale`` come from the file's header unless
given. Files are numbered after those already in the output folder and opened exclusively, so nothing is
ever overwritten.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from bespoke_pl.callbacks.faults import write_file
from bespoke_pl.commands.options import device_option, output_folder
from bespoke_pl.data.prompts import read_prompts
from bespoke_pl.diffusion.base import detect_family, load_base, resolve_spec
from bespoke_pl.diffusion.conditioning import encode_prompts
from bespoke_pl.diffusion.devices import weight_dtype_for
from bespoke_pl.diffusion.objective import zero_terminal_snr_config
from bespoke_pl.diffusion.sampling import Sampler, build_pipeline, generate
from bespoke_pl.errors import ConfigError
from bespoke_pl.lora.loading import apply_lora, check_family, read_lora_file
from bespoke_pl.lora.metadata import DEFAULT_CLIP_SKIP, recorded_settings
from bespoke_pl.pixelart.grid import image_grid, upscale_nearest
from bespoke_pl.pixelart.palette import palette_from_hex
from bespoke_pl.pixelart.snap import snap_and_lock

log = logging.getLogger(__name__)

DEFAULT_PIXEL_SCALE = 8
_NUMBERED = re.compile(r"^(\d{4,})-")


def next_index(folder: Path) -> int:
    """One past the highest ``NNNN-`` number of the files in ``folder`` (0 for a new folder)."""
    numbers = [int(m.group(1)) for p in folder.glob("*") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def _write_new_png(image: torch.Tensor, path: Path) -> None:
    """Save uint8 (3, H, W) as PNG, atomically (a full disk leaves no half-written file), and never over an
    existing file (the numbering skips past every file in the folder, so one is only there by a race)."""
    if path.exists():
        raise FileExistsError(f"refusing to overwrite {path}")
    array = image.permute(1, 2, 0).cpu().numpy()
    write_file(path, lambda tmp: Image.fromarray(array, "RGB").save(tmp, format="PNG"))


def prompts_option(prompt: str | None, prompts_file: str | None) -> list[str]:
    """:func:`~bespoke_pl.data.prompts.read_prompts` for ``--prompt`` / ``--prompts_file``; every refusal
    (no prompt, a missing or unreadable file) is a ConfigError naming the option or the file."""
    try:
        return read_prompts(prompt, prompts_file)
    except UnicodeDecodeError as error:  # before ValueError, of which it is one; its message lacks the file
        raise ConfigError(f"--prompts_file {prompts_file} is not UTF-8 text: {error.reason}") from error
    except FileNotFoundError as error:  # "prompts file X does not exist"
        raise ConfigError(f"--prompts_file: {error}") from error
    except OSError as error:  # a folder, no permission
        raise ConfigError(
            f"--prompts_file {prompts_file} cannot be read: {error.strerror or error}"
        ) from error
    except ValueError as error:  # no prompt at all; the message names both options
        raise ConfigError(str(error)) from error


def generate_images(
    base_model: str,
    lora: str,
    prompt: str | None = None,
    prompts_file: str | None = None,
    num_images: int = 4,
    seed: int = 42,
    out: str = "generated",
    lora_scale: float = 1.0,
    clip_skip: int | None = None,
    pixel_scale: int | None = None,
    negative_prompt: str = "",
    steps: int = 20,
    guidance_scale: float = 5.0,
    sampler: Sampler = "euler",
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto",
    base_config: str | None = None,
    batch_size: int = 4,
    preview_scale: int = 8,
    palette_lock: bool = True,
) -> list[Path]:
    """Generate 24x24 images with a LoRA file on a base model; writes PNGs, a preview sheet and a record.

    Args:
        base_model: Hub id, local diffusers folder, single ``.safetensors`` file, or ``tiny:sd15``/``tiny:sdxl``.
        lora: The LoRA ``.safetensors`` file (kohya or diffusers format, from bespoke_pl or another tool).
        prompt: A prompt.
        prompts_file: A text file with one prompt per line (``#`` lines skipped), after ``prompt``.
        num_images: Images per prompt.
        seed: Seed of the first image; each further image uses the next seed.
        out: Output folder; images are numbered after the files already there, never overwritten.
        lora_scale: LoRA strength (1 = as trained).
        clip_skip: Text-encoder layer from the end (kohya numbering); unset: the file's, else the family's usual.
        pixel_scale: Generate at 24 * pixel_scale px and reduce each block to one pixel; unset: the file's.
        negative_prompt: Prompt for the unconditional branch of classifier-free guidance.
        steps: Denoising steps.
        guidance_scale: Classifier-free guidance scale.
        sampler: Sampling scheduler.
        device: ``auto`` picks CUDA, then Apple MPS, then CPU.
        base_config: For a single-file base: a diffusers folder or hub id to read component configs from.
        batch_size: Images per pipeline call.
        preview_scale: Nearest-upscale factor of the preview sheet.
        palette_lock: Map every pixel to the nearest colour (sRGB distance) of the training palette recorded in the
            file's header; the raw decodes are saved beside the art as ``-raw.png`` either way.
    """
    # Every mistake in the options or the files fails here, before the base model's weights are loaded.
    if num_images < 1:
        raise ConfigError(f"--num_images must be >= 1, got {num_images}")
    prompts = [p for p in prompts_option(prompt, prompts_file) for _ in range(num_images)]
    folder = output_folder("--out", out)
    target = device_option(device)
    lora_file = read_lora_file(lora)
    check_family(lora_file, detect_family(resolve_spec(base_model)), f"base model {base_model}")
    base = load_base(base_model, "auto", base_config)
    recorded = recorded_settings(lora_file.metadata)
    clip_skip = clip_skip or recorded.clip_skip or DEFAULT_CLIP_SKIP[base.family]
    if pixel_scale is None and recorded.pixel_scale is None:
        log.warning("%s records no pixel_scale; using %d", lora_file.path.name, DEFAULT_PIXEL_SCALE)
    pixel_scale = pixel_scale or recorded.pixel_scale or DEFAULT_PIXEL_SCALE
    resolution = recorded.resolution or 24

    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    components = {"unet": base.unet, **dict(zip(names, base.text_encoders, strict=True))}
    apply_lora(components, lora_file, base.family, lora_scale)
    # The training dtypes: half precision only on CUDA; the VAE decodes in float32 everywhere.
    dtype = weight_dtype_for(target)
    unet = base.unet.to(target, dtype)
    encoders = [encoder.to(target, dtype) for encoder in base.text_encoders]
    vae = base.vae.to(target, torch.float32)
    schedule = base.scheduler_config
    if recorded.zero_terminal_snr:  # trained on the zero-terminal-SNR schedule (its header says so)
        schedule = zero_terminal_snr_config(schedule)
    pipe = build_pipeline(base.family, unet, vae, base.tokenizers, encoders, schedule, sampler)

    def encode(captions: list[str]):
        return encode_prompts(captions, base.tokenizers, encoders, clip_skip)

    seeds = [seed + i for i in range(len(prompts))]
    size = resolution * pixel_scale
    log.info("generating %d images at %dpx on %s (clip skip %d)", len(prompts), size, target, clip_skip)
    # SDXL is told the size the LoRA was trained with (its header), unless the image size was overridden.
    told = recorded.sdxl_size if recorded.sdxl_size and pixel_scale == recorded.pixel_scale else None
    raw = generate(
        pipe, encode, prompts, seeds, size, negative_prompt, steps, guidance_scale, batch_size, told
    )
    palette = recorded.palette if palette_lock else None
    if palette_lock and not palette:
        log.warning("%s records no training palette; colours are not locked", lora_file.path.name)
    art = snap_and_lock(raw, pixel_scale, palette_from_hex(palette) if palette else None)

    folder.mkdir(parents=True, exist_ok=True)
    first = next_index(folder)
    written = []
    for i, (image, decoded, image_seed) in enumerate(zip(art, raw, seeds, strict=True)):
        written.append(folder / f"{first + i:04d}-seed{image_seed}.png")
        _write_new_png(image, written[-1])
        _write_new_png(decoded, folder / f"{first + i:04d}-seed{image_seed}-raw.png")
    sheet = folder / f"{first:04d}-sheet.png"
    _write_new_png(image_grid(upscale_nearest(art, preview_scale)), sheet)
    record = {
        "base_model": base_model,
        "lora": str(lora_file.path),
        "lora_scale": lora_scale,
        "clip_skip": clip_skip,
        "pixel_scale": pixel_scale,
        "palette_lock": bool(palette),
        "sampler": sampler,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "negative_prompt": negative_prompt,
        "images": [
            {"file": p.name, "prompt": text, "seed": s}
            for p, text, s in zip(written, prompts, seeds, strict=True)
        ],
    }
    text = json.dumps(record, indent=1)
    write_file(folder / f"{first:04d}-generate.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return [*written, sheet]


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    written = run_command("generate", generate_images, argv, as_positional=False)
    print(f"wrote {len(written) - 1} images and the preview sheet {written[-1]}")
