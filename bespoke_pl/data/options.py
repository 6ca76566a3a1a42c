"""The data options' ranges, checked in one place for every way a data module is built (``fit``'s command
line, Python, ``from-kohya``): one message per value that cannot work, naming the option."""

from __future__ import annotations

import math

from bespoke_pl.errors import ConfigError


def bad_number(value) -> bool:
    """A float that is not finite (nan, inf): never a usable option value."""
    return isinstance(value, float) and not math.isfinite(value)


def data_problems(data) -> list[str]:
    """Values of the ``data`` options (a namespace or the data module's ``hparams``) that cannot work."""
    problems = []
    for name in ("batch_size", "num_repeats"):
        if data[name] < 1:
            problems.append(f"data.{name} must be >= 1, got {data[name]}")
    if data["num_workers"] < 0:
        problems.append(
            f"data.num_workers must be >= 0 (0: load in the main process), got {data['num_workers']}"
        )
    dropout = data["caption_dropout"]
    if not 0 <= dropout <= 1 or bad_number(dropout):
        problems.append(f"data.caption_dropout must be in [0, 1], got {dropout}")
    split = data["val_split"]
    if bad_number(split) or split < 0 or (split >= 1 and split != int(split)):
        problems.append(
            f"data.val_split must be a fraction in [0, 1) or a whole count of images, got {split}"
        )
    if split and data["val_root"]:
        problems.append(
            "data.val_split and data.val_root both set: hold out images or give a folder, not both"
        )
    return problems


def check_data_options(data) -> None:
    """Raise one :class:`ConfigError` listing every data value that cannot work."""
    problems = data_problems(data)
    if problems:
        raise ConfigError("; ".join(problems))
