"""kohya's data settings as ``data.*`` and ``model.pixel_scale``: the image folder (``train_data_dir`` with
its ``N_name`` subfolder, or a ``dataset_config`` file), kohya's resolution, and the caption options.

A data option can be set in four places; as in kohya, the most specific wins: a ``[[datasets.subsets]]``
entry of the dataset config, its ``[[datasets]]`` entry, its ``[general]`` table, then the TOML itself
(:mod:`~bespoke_pl.kohya.folder` reads the places and finds the images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.folder import DATASET_CONFIG_REASONS, Layers, image_folder, training_subset
from bespoke_pl.kohya.keys import REASON
from bespoke_pl.kohya.reading import read_table
from bespoke_pl.kohya.record import Conversion, KohyaArgs
from bespoke_pl.kohya.validation import convert_validation

# The pixel_scale of the shipped configs (configs/sdxl.yaml, sd15.yaml): near the base's native size
# (docs/pixel-scale.md). Used when kohya's resolution is the art's own size.
NATIVE_PIXEL_SCALE = {"sdxl": 40, "sd15": 24}
ART_SIDE_LIMIT = 128  # a kohya resolution up to this is the art's own size; above it, an upscaled size
DEFAULT_ART_SIDE = 24  # the art this project is for, when the folder cannot tell

# Data options kohya reads from the TOML as well as from a dataset config (its "ascendable" options);
# train_batch_size is the TOML's name of batch_size, caption_extention kohya's old spelling.
TOML_DATA_KEYS = (
    "resolution",
    "train_batch_size",
    "caption_extension",
    "caption_extention",
    "shuffle_caption",
    "caption_separator",
    "keep_tokens",
    "caption_dropout_rate",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_reso_steps",
    "bucket_no_upscale",
    "flip_aug",
    "random_crop",
    "color_aug",
    "face_crop_aug_range",
    "resize_interpolation",
    "keep_tokens_separator",
    "secondary_separator",
    "enable_wildcard",
    "caption_prefix",
    "caption_suffix",
    "caption_tag_dropout_rate",
    "caption_dropout_every_n_epochs",
    "token_warmup_min",
    "token_warmup_step",
    "cache_info",
    "validation_seed",
    "validation_split",
    "alpha_mask",  # a subset option in a dataset config; kohya falls back to the TOML's
)

# kohya's augmentations and resampling: what bespoke_pl never does to pixel art, and why
REFUSED = {
    "enable_bucket": ("buckets", "every image is trained at its own size"),
    "bucket_no_upscale": ("buckets", "every image is trained at its own size"),
    "flip_aug": ("flips", "a mirrored portrait is another character (hair parting, earrings, eye patch)"),
    "random_crop": ("crops", "a crop cuts the art's pixel grid and the portrait's frame"),
    "face_crop_aug_range": ("crops", "a crop cuts the art's pixel grid and the portrait's frame"),
    "color_aug": ("shifts the colours of", "the palette lock and the metrics rely on the exact palette"),
    "resize_interpolation": ("resizes", "the only resampling is the nearest upscale by pixel_scale"),
}
SWITCHES = ("enable_bucket", "bucket_no_upscale", "flip_aug", "random_crop", "color_aug")  # the rest: values
BUCKET_SIZES = ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")


@dataclass
class DataFacts:
    """What the rest of the mapping needs to know about the data: its images, repeats and batch."""

    images: int
    num_repeats: int
    batch_size: int


def art_side(folder: Path) -> int | None:
    """The side of the first PNG in the folder (the art's size, unless the images were upscaled)."""
    first = next(iter(sorted(folder.glob("*.png"))), None)
    if first is None:
        return None
    try:
        with Image.open(first) as image:
            return image.width if image.width == image.height else None
    except OSError:  # check-data and fit report unreadable images, with every file
        return None


def parse_resolution(value: Any, source: str) -> int:
    """kohya's ``"24,24"``, ``"24"``, ``24`` or ``[24, 24]`` as one side; refuses a rectangle."""
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        sides = {int(str(part).strip()) for part in parts}
    except ValueError:
        raise ConfigError(f"{source} is not a size in pixels") from None
    if len(sides) != 1:
        raise ConfigError(f"{source} is not square; bespoke_pl trains square art")
    return sides.pop()


def _resolution(layers: Layers, conv: Conversion, folder: Path, family: str) -> None:
    value, source = layers.take("resolution")
    native = NATIVE_PIXEL_SCALE[family]
    if value is None:
        conv.set("data.resolution", DEFAULT_ART_SIDE, "kohya resolution not set: the art this trainer is for")
        conv.set("model.pixel_scale", native, f"the {family} default (near the base's native size)")
        return
    side = parse_resolution(value, source)
    if side <= ART_SIDE_LIMIT:
        conv.set("data.resolution", side, source)
        latent = f"{side // 8}x{side // 8}"
        why = (
            f"{source} gave the VAE the {side} px images as they are (a {latent} latent). bespoke_pl "
            f"upscales every art pixel {native}x by nearest neighbour ({side * native} px, near {family}'s "
            f"native size) and reduces samples back to {side}x{side}; docs/pixel-scale.md"
        )
        conv.set("model.pixel_scale", native, source, why)
        return
    found = art_side(folder)
    if found is None or found > ART_SIDE_LIMIT:
        size = f"{found}x{found} px images" if found else "no square PNG to measure"
        conv.skip(
            f"{source} ({folder} has {size})",
            "bespoke_pl trains on the original pixel art (e.g. 24x24) and upscales it itself: point "
            "data.root at the originals and set data.resolution to their side",
        )
        found = DEFAULT_ART_SIDE
    conv.set("data.resolution", found, f"the images in {folder}")
    if side % found == 0 and side % 8 == 0:
        why = f"{source}: the {found} px art upscaled {side // found}x by nearest neighbour is {side} px too"
        conv.set("model.pixel_scale", side // found, source, why)
    else:
        why = f"{source} is no multiple of the {found} px art on the VAE's 8 px grid: {family}'s native scale"
        conv.set("model.pixel_scale", native, source, why)


def _captions(layers: Layers, conv: Conversion) -> None:
    extension, source = layers.take("caption_extension")
    old, old_source = layers.take("caption_extention")  # kohya's old spelling wins over the new one
    if old is not None:
        extension, source = old, old_source
    if extension is None:
        conv.set("data.caption_extension", ".caption", "kohya default (caption_extension not set)")
    else:
        conv.set("data.caption_extension", str(extension), source)
    shuffle, source = layers.flag("shuffle_caption")
    if shuffle is not None:
        conv.set("data.shuffle_captions", shuffle, source)
    keep, keep_source = layers.number("keep_tokens")
    if keep and shuffle:
        conv.set("data.keep_tokens", keep, keep_source)
    elif keep:
        conv.note("data", f"{keep_source}: left out; it does nothing without shuffle_caption (in kohya too)")
    elif keep_source:
        conv.note("data", f"{keep_source}: no tag kept in place, as bespoke_pl's default")
    rate, source = layers.number("caption_dropout_rate", float)
    if rate is not None:
        conv.set("data.caption_dropout", rate, source)
    separator, source = layers.take("caption_separator")
    if separator is not None and separator != ",":
        conv.skip(source.removeprefix("kohya "), "bespoke_pl splits caption tags at commas only")
    elif source:
        conv.note("data", f"{source}: tags are split at commas, as kohya's default")


def _refusals(layers: Layers, conv: Conversion) -> None:
    for key, (verb, reason) in REFUSED.items():
        value, source = layers.flag(key) if key in SWITCHES else layers.take(key)
        if source is None:
            continue
        if value:
            conv.note("data", f"refused: {source}: bespoke_pl never {verb} pixel art: {reason}")
            conv.skip(source.removeprefix("kohya "), f"refused: bespoke_pl never {verb} pixel art: {reason}")
        else:
            conv.note("data", f"{source}: bespoke_pl never {verb} either ({reason})")
    for key in BUCKET_SIZES:
        _, source = layers.take(key)
        if source:
            conv.note("data", f"{source}: unused, as there are no buckets")


def _alpha_mask(layers: Layers, conv: Conversion) -> None:
    """kohya's ``alpha_mask``: the images' alpha weights the loss, as ``data.alpha_mask`` does."""
    on, source = layers.flag("alpha_mask")
    if on:
        why = (
            "kohya trains on the colours a PNG stores under its transparent pixels; here they are composited "
            "on data.background (black where unset)"
        )
        conv.set("data.alpha_mask", True, source, why)
    elif source:
        conv.note("data", f"{source}: no alpha mask, as bespoke_pl's default")


def convert_data(args: KohyaArgs, conv: Conversion, family: str) -> DataFacts:
    """Fill ``data.*`` and ``model.pixel_scale``; every data key of the TOML and dataset config is used."""
    toml_layer = {}
    for key in TOML_DATA_KEYS:
        if key in args:
            toml_layer[key] = args.raw(key)
    layers = [("", toml_layer)]
    if "dataset_config" in args:
        path = Path(args.text("dataset_config")).expanduser()
        general, dataset, subset = training_subset(read_table(path, "kohya dataset_config"), conv, path)
        conv.note("data", f"{args.source('dataset_config')}: its one training subset is this data section")
        name = f"dataset_config {path.name} "
        layers += [
            (f"{name}[general] ", general),
            (f"{name}[[datasets]] ", dataset),
            (f"{name}[[datasets.subsets]] ", subset),
        ]
    layers = Layers(layers)
    folder = image_folder(args, layers, conv)
    conv.set("data.root", str(folder.path), folder.source)
    if folder.num_repeats is not None:
        conv.set("data.num_repeats", folder.num_repeats, folder.repeats_source)
    if folder.class_tokens:
        why = "kohya captions an image without a caption file with the folder's class tokens, so does this"
        conv.set("data.default_caption", str(folder.class_tokens), folder.tokens_source, why)
    batch, source = layers.number("batch_size")
    if batch is None:
        conv.set("data.batch_size", 1, "kohya default (train_batch_size not set)")
    else:
        conv.set("data.batch_size", batch, source)
    _resolution(layers, conv, folder.path, family)
    _captions(layers, conv)
    _refusals(layers, conv)
    _alpha_mask(layers, conv)
    images = len(list(folder.path.glob("*.png")))
    images -= convert_validation(args, conv, layers, images)  # kohya's steps count the training images
    for text in layers.overridden:
        conv.note("data", text)
    for key in layers.unused():
        value, source = layers.values[key]
        reason = (
            REASON.get(key) or DATASET_CONFIG_REASONS.get(key) or "not an option of kohya's dataset config"
        )
        conv.skip(source.removeprefix("kohya "), reason)
    return DataFacts(images, folder.num_repeats or 1, batch or 1)
