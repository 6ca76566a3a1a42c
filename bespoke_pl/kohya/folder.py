"""Where kohya's data options and images are: the option layers (the TOML, a dataset config's ``[general]``,
its ``[[datasets]]`` entry and its one training subset; the most specific wins, as in kohya) and the image
folder (a subset's ``image_dir``, or ``train_data_dir`` with its ``N_name`` subfolder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.keys import REASON
from bespoke_pl.kohya.record import Conversion, KohyaArgs, as_flag, as_number, toml_value

# Options that only a dataset config has, and why they do not carry over.
DATASET_CONFIG_REASONS = {
    "custom_attributes": "custom attributes are for kohya's own extensions",
    "network_multiplier": "one LoRA strength for the whole run",
    "metadata_file": REASON["in_json"],
    "conditioning_data_dir": REASON["conditioning_data_dir"],
}
RENAMED = {"train_batch_size": "batch_size"}  # the TOML's name -> the dataset config's
SUBSET_FOLDER = re.compile(r"^(\d+)_(.*)$")  # kohya's 10_name: 10 repeats, captioned "name" by default


class Layers:
    """The data options with their kohya source, the most specific place winning.

    Args:
        layers: ``(label, options)`` from the least specific (the TOML) to the most (a subset).
    """

    def __init__(self, layers: list[tuple[str, dict[str, Any]]]) -> None:
        self.values: dict[str, tuple[Any, str]] = {}
        self.overridden: list[str] = []
        for label, options in layers:
            for written, value in options.items():
                source = f"kohya {label}{written} = {toml_value(written, value)}"
                key = RENAMED.get(written, written)
                if key in self.values:
                    self.overridden.append(f"{self.values[key][1]} (overridden by {source}, as kohya does)")
                self.values[key] = (value, source)
        self.used: set[str] = set()

    def take(self, key: str) -> tuple[Any, str] | tuple[None, None]:
        """``(value, its source)``, or ``(None, None)`` when no place sets it."""
        self.used.add(key)
        return self.values.get(key, (None, None))

    def number(self, key: str, kind: type = int) -> tuple[Any, str | None]:
        value, source = self.take(key)
        return (None, None) if value is None else (as_number(value, kind, source), source)

    def flag(self, key: str) -> tuple[bool | None, str | None]:
        value, source = self.take(key)
        return (None, None) if value is None else (as_flag(value, source), source)

    def unused(self) -> list[str]:
        return [key for key in self.values if key not in self.used]


def training_subset(config: dict, conv: Conversion, path: Path) -> tuple[dict, dict, dict]:
    """``([general], [[datasets]], [[datasets.subsets]])`` of the one training subset of a dataset config."""
    datasets = config.get("datasets") or []
    if not isinstance(datasets, list) or len(datasets) != 1:
        raise ConfigError(
            f"kohya dataset_config {path} has {len(datasets) if isinstance(datasets, list) else 'no'} "
            "[[datasets]]; bespoke_pl trains one folder of images, so give exactly one"
        )
    if not isinstance(datasets[0], dict):
        raise ConfigError(f"kohya dataset_config {path}: [[datasets]] is not a table")
    dataset = dict(datasets[0])
    subsets = dataset.pop("subsets", None) or []
    if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
        raise ConfigError(f"kohya dataset_config {path}: [[datasets.subsets]] is not a list of tables")
    training = [s for s in subsets if not s.get("is_reg")]
    for subset in subsets:
        if subset.get("is_reg"):
            folder = toml_value("", subset.get("image_dir"))
            conv.skip(f"dataset_config subset image_dir = {folder}, is_reg = true", REASON["reg_data_dir"])
    if len(training) != 1:
        raise ConfigError(
            f"kohya dataset_config {path} has {len(training)} training subsets; bespoke_pl trains one folder "
            "of images: merge them into one folder, or keep one [[datasets.subsets]]"
        )
    subset = {k: v for k, v in training[0].items() if k != "is_reg"}
    if "image_dir" not in subset:
        raise ConfigError(f"kohya dataset_config {path}: the training subset has no image_dir")
    general = config.get("general") or {}
    unknown = set(config) - {"general", "datasets"}
    for key in sorted(unknown):
        conv.skip(f"dataset_config [{key}]", "not a section of kohya's dataset config (kohya refuses it)")
    return general, dataset, subset


@dataclass
class ImageFolder:
    """The training images' folder and what its name or subset says, each with its kohya source."""

    path: Path
    source: str
    num_repeats: int | None = None
    repeats_source: str | None = None
    class_tokens: str | None = None
    tokens_source: str | None = None


def image_folder(args: KohyaArgs, layers: Layers, conv: Conversion) -> ImageFolder:
    """The subset's ``image_dir``, or ``train_data_dir``'s one ``N_name`` folder (or the folder itself)."""
    image_dir, source = layers.take("image_dir")
    if image_dir is not None:
        path = Path(str(image_dir)).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"{source}: the folder does not exist (relative paths are read from the current folder)"
            )
        if "train_data_dir" in args:
            args.raw("train_data_dir")
            conv.note(
                "data", f"{args.source('train_data_dir')}: ignored with a dataset_config, as kohya ignores it"
            )
        return ImageFolder(path, source, *layers.number("num_repeats"), *layers.take("class_tokens"))
    if "train_data_dir" not in args:
        raise ConfigError("kohya train_data_dir is not set (nor a dataset_config): no training images")
    given = Path(args.text("train_data_dir")).expanduser()
    source = args.source("train_data_dir")
    if not given.is_dir():
        raise ConfigError(
            f"kohya train_data_dir {given} does not exist or is not a folder (relative paths are read from "
            "the current folder)"
        )
    subsets = sorted(
        p for p in given.iterdir() if p.is_dir() and (m := SUBSET_FOLDER.match(p.name)) and int(m[1])
    )
    if len(subsets) > 1:
        names = ", ".join(p.name for p in subsets)
        raise ConfigError(
            f"kohya train_data_dir {given} has {len(subsets)} image folders ({names}); bespoke_pl trains one "
            "folder of images: merge them into one"
        )
    if subsets:
        match = SUBSET_FOLDER.match(subsets[0].name)
        where = f"{source}, its folder {subsets[0].name}"
        return ImageFolder(subsets[0], where, int(match[1]), where, match[2] or None, where)
    if not any(given.glob("*.png")):
        raise ConfigError(
            f"kohya train_data_dir {given} has no N_name image folder (kohya's 10_name) and no PNG images"
        )
    conv.note(
        "data", f"{source} holds the images itself (kohya reads only N_name subfolders): trained as it is"
    )
    return ImageFolder(given, source)
