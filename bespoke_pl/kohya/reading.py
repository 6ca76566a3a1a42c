"""Reading kohya's files: TOML (its configs, dataset configs, prompt files) and JSON, one line per mistake."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bespoke_pl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib


def read_table(path: Path, what: str, kind: type = dict) -> dict | list:
    """A ``.toml`` (or ``.json``) file as a dict (a JSON file may hold a list: ``kind=list``).

    Args:
        path: The file; relative paths are read from the current folder, as kohya reads them.
        what: How the message names the file (``kohya dataset_config``).
        kind: What the file must hold.
    """
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist (relative paths are read from the current folder)")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as error:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(
            f"{what} {path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {error}"
        ) from error
    if not isinstance(data, kind):
        raise ConfigError(f"{what} {path} does not hold a {'table' if kind is dict else 'list'} of settings")
    return data
