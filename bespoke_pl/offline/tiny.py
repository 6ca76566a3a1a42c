"""Tiny SD1.5- and SDXL-shaped diffusers pipelines, built offline with seeded random weights.

The folders have the same layout, class names and config keys as the real models, so the
training code loads them through the same ``from_pretrained`` calls; only the sizes shrink so
a training step takes milliseconds on a CPU. ``"tiny:sd15"`` / ``"tiny:sdxl"`` name them
wherever a model path is expected.
"""

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bespoke_pl.files import atomic_folder, cache_root, spec_name

log = logging.getLogger(__name__)

Family = Literal["sd15", "sdxl"]
FAMILIES: tuple[str, ...] = ("sd15", "sdxl")
TINY_PREFIX = "tiny:"

# Words the tokenizer learns whole, so captions tokenize into a realistic handful of tokens.
# Anything else still tokenizes, byte by byte.
_CAPTION_WORDS = """
pixel art portrait of bespoke punk punks a an the with and in style sprite retro character avatar
male female man woman boy girl light medium tan dark albino zombie alien ape skin background
blue green red purple pink orange yellow grey gray black white brown blonde teal gold silver
mohawk cap wild hair bald short long beanie headband hoodie hat bandana crazy messy straight
curly bun ponytail pigtails frumpy sunglasses glasses nerd shades goggles earring cigarette
pipe beard mustache goatee stubble smile frown mask lipstick eyes mouth nose face head lips
simple flat colors colour color palette pixelated sharp clean outline shading high quality
"""
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"

# Sizes: one text encoder of width 32 (SD1.5, SDXL's first), a wider second one for SDXL with
# a projection narrower than its width, so swapped tensors fail loudly instead of broadcasting.
_TE1 = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "projection_dim": 32}
_TE2 = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "projection_dim": 32}
_TEXT_LAYERS = 4  # enough layers that clip skip 2 (penultimate hidden state) differs from the last
_TIME_EMBED_DIM = 8  # SDXL's addition_time_embed_dim (256 in the real model)


def _bytes_to_unicode() -> list[str]:
    """Returns CLIP's (GPT-2's) printable stand-in for each byte, in CLIP's vocabulary order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learns BPE merges from a word list until every word is a single ``word</w>`` token."""
    # CLIP's BPE marks a word's last symbol with "</w>", so "art" and "artist" differ.
    seqs = [(*w[:-1], w[-1] + "</w>") for w in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:], strict=False))
        if not pairs:
            return merges
        best = max(sorted(pairs), key=pairs.__getitem__)  # sorted first: ties break the same way every run
        merges.append(best)
        merged = []
        for s in seqs:
            out: list[str] = []
            for sym in s:
                if out and (out[-1], sym) == best:
                    out[-1] += sym
                else:
                    out.append(sym)
            merged.append(tuple(out))
        seqs = merged


def _write_tokenizer(folder: Path, pad_token: str) -> int:
    """Writes a CLIP BPE tokenizer in the real models' file format; returns its vocabulary size."""
    base = _bytes_to_unicode()
    merges = _learn_merges(_CAPTION_WORDS.split())
    # CLIP's order: 256 bytes, the same with "</w>", merged symbols, then the two special tokens.
    tokens = [*base, *(b + "</w>" for b in base), *("".join(m) for m in merges), _BOS, _EOS]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(tokens)


def _text_encoder(
    size: dict[str, int], vocab_size: int, pad_id: int, act: str, projection: bool
) -> torch.nn.Module:
    """Builds a CLIP text encoder; eos is the last id, as in CLIP, so pooling finds it."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        num_hidden_layers=_TEXT_LAYERS,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=pad_id,
        **size,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _unet(family: Family) -> UNet2DConditionModel:
    """Builds the UNet: the real block pattern with fewer levels, layers and channels."""
    common: dict[str, Any] = {
        "sample_size": 24,  # latent side of a 192 px image: a 24x24 punk at pixel_scale 8
        "block_out_channels": (16, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": 8,  # real models use 32 groups, more than these tiny widths allow
    }
    if family == "sd15":
        return UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_TE1["hidden_size"],
            attention_head_dim=2,  # diffusers' legacy name: this is the number of heads
            **common,
        )
    return UNet2DConditionModel(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),  # real SDXL: (1, 2, 10); the mid block takes the last
        attention_head_dim=(1, 2, 2),  # heads per level, 16 channels each
        use_linear_projection=True,
        # Prompts are both encoders' penultimate states concatenated: (B, 77, 32 + 64).
        cross_attention_dim=_TE1["hidden_size"] + _TE2["hidden_size"],
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        # Six time ids (original size, crop top-left, target size), each embedded, plus the pooled
        # projection of text_encoder_2.
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _TE2["projection_dim"],
        **common,
    )


def _vae(family: Family) -> AutoencoderKL:
    """Builds a 4-level VAE that downsamples 8x into 4 latent channels, like the real one."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=192,
        scaling_factor=0.18215 if family == "sd15" else 0.13025,
        # SDXL's VAE overflows in fp16, so pipelines upcast it; keep the flag they read.
        force_upcast=family == "sdxl",
    )


def _scheduler(family: Family) -> DDPMScheduler | EulerDiscreteScheduler:
    """Builds the training noise schedule both real models share, as each ships it."""
    common: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    if family == "sd15":
        return DDPMScheduler(clip_sample=False, **common)
    return EulerDiscreteScheduler(interpolation_type="linear", use_karras_sigmas=False, **common)


def _write_components(family: Family, folder: Path, seed: int) -> None:
    """Writes every component and model_index.json into ``folder``."""
    vocab_size = _write_tokenizer(folder / "tokenizer", pad_token=_EOS)
    index: dict[str, Any] = {
        "_diffusers_version": diffusers.__version__,
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    # Each component gets its own seed, so resizing one leaves the others' weights unchanged.
    modules: dict[str, torch.nn.Module] = {}
    torch.manual_seed(seed)
    modules["unet"] = _unet(family)
    torch.manual_seed(seed + 1)
    modules["vae"] = _vae(family)
    torch.manual_seed(seed + 2)
    modules["text_encoder"] = _text_encoder(_TE1, vocab_size, vocab_size - 1, "quick_gelu", projection=False)
    if family == "sdxl":
        # SDXL's second tokenizer pads with "!", which is id 0 in CLIP's byte order.
        _write_tokenizer(folder / "tokenizer_2", pad_token="!")
        torch.manual_seed(seed + 3)
        modules["text_encoder_2"] = _text_encoder(_TE2, vocab_size, 0, "gelu", projection=True)
        index |= {"_class_name": "StableDiffusionXLPipeline", "tokenizer_2": index["tokenizer"]}
        # No invisible watermark: where that package is installed it would alter every sample.
        index |= {"force_zeros_for_empty_prompt": True, "add_watermarker": False}
    else:
        # Null entries keep the pipeline from asking the hub for a safety checker.
        index |= {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False}
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None]}
    for name, module in modules.items():
        library = "diffusers" if isinstance(module, diffusers.ModelMixin) else "transformers"
        index[name] = [library, type(module).__name__]
        module.save_pretrained(folder / name, safe_serialization=True)
    scheduler = _scheduler(family)
    scheduler.save_pretrained(folder / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (folder / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def write_tiny_model(family: Family, out: str | Path, seed: int = 0) -> Path:
    """Writes a complete tiny diffusers pipeline folder with seeded random weights.

    Args:
        family: ``"sd15"`` for a StableDiffusionPipeline, ``"sdxl"`` for a StableDiffusionXLPipeline.
        out: Folder to create; it must not exist or be empty.
        seed: Seed for the weights; the same seed gives the same weights.

    Returns:
        The written folder, ``out``.

    Raises:
        ValueError: Unknown family.
        FileExistsError: ``out`` is not empty.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; valid: {', '.join(FAMILIES)}")
    start = time.perf_counter()
    # A private RNG state: building a model must not shift the caller's random stream.
    with atomic_folder(out) as tmp, torch.random.fork_rng(devices=[]):
        _write_components(family, tmp, seed)
    log.info("Wrote tiny %s model to %s in %.1f s", family, out, time.perf_counter() - start)
    return Path(out)


def tiny_model_path(family: Family, cache_dir: str | Path | None = None) -> Path:
    """Returns the cached tiny model ``<cache>/tiny-<family>``, building it (seed 0) if missing.

    Args:
        family: ``"sd15"`` or ``"sdxl"``.
        cache_dir: Cache folder; defaults to $BESPOKE_PL_CACHE, else ~/.cache/bespoke_pl.
    """
    path = cache_root(cache_dir) / f"tiny-{family}"
    if not (path / "model_index.json").is_file():
        try:
            write_tiny_model(family, path)
        except FileExistsError:
            # Another process finished first; its folder is complete because it was renamed into place.
            if not (path / "model_index.json").is_file():
                raise
    return path


def resolve_tiny(spec: str) -> str | None:
    """Returns the local folder for ``"tiny:sd15"`` / ``"tiny:sdxl"``, or None for any other spec.

    Raises:
        ValueError: The spec starts with ``"tiny:"`` but names no known family.
    """
    family = spec_name(spec, TINY_PREFIX, FAMILIES, "tiny model")
    return None if family is None else str(tiny_model_path(family))  # type: ignore[arg-type]
