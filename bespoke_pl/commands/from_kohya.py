"""``python -m bespoke_pl from-kohya CONFIG.toml``: a kohya sd-scripts LoRA config as a ``fit`` config."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal

from bespoke_pl.callbacks.faults import write_file
from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.convert import convert
from bespoke_pl.kohya.reading import read_table
from bespoke_pl.kohya.record import Conversion


def from_kohya(toml: str, out: str | None = None, family: Literal["auto", "sd15", "sdxl"] = "auto") -> None:
    """Write the bespoke_pl config of a kohya train_network.py / sdxl_train_network.py TOML.

    Every kohya key is accounted for: converted (the YAML's comment names it), deliberately changed (the
    comment says why), or printed in one warning as not carried over. kohya's sample_prompts file becomes
    a prompts file beside the YAML. Relative paths in the TOML are read from the current folder, as kohya
    reads them.

    Args:
        toml: kohya's ``--config_file`` TOML, flat or with section tables.
        out: The YAML to write (never replaced); unset: the TOML's path with ``.yaml``. The sample prompts
            go to the same name with ``-prompts.txt``.
        family: The base model's family: ``auto`` reads it from a local base model, else from the model's
            name or SDXL-only options; ``sdxl`` for an sdxl_train_network.py config, ``sd15`` for
            train_network.py.
    """
    source = Path(toml).expanduser()
    target = Path(out).expanduser() if out else source.with_suffix(".yaml")
    if target.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--out {target} is not a .yaml file")
    prompts_file = target.with_name(f"{target.stem}-prompts.txt")
    _refuse_existing(target)
    conversion = convert(read_table(source, "kohya config"), source, target, prompts_file, family)
    written = [target, prompts_file] if conversion.prompts else [target]
    _refuse_existing(*written)
    text = conversion.yaml_text()
    if conversion.prompts:
        body = "\n".join(conversion.prompts) + "\n"
        write_file(prompts_file, lambda tmp: tmp.write_text(body, encoding="utf-8"))
    write_file(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    warnings = conversion.warning_lines()
    if warnings:
        count = len(conversion.skipped) + len(conversion.checks)
        sys.stderr.write(f"warning: {count} kohya settings do not carry over as they are:\n")
        sys.stderr.write("".join(f"  {line}\n" for line in warnings))
    print(f"wrote {' and '.join(map(str, written))}")
    print(f"check the data: {_check_data_command(conversion)}")
    print(f"then train:     python -m bespoke_pl fit --config {shlex.quote(str(target))}")


def _check_data_command(conversion: Conversion) -> str:
    """``check-data`` with the converted data options: the same checks ``fit`` makes before training."""
    words = ["python -m bespoke_pl check-data", shlex.quote(conversion.get("data.root"))]
    for option in ("resolution", "caption_extension", "default_caption"):
        if conversion.get(f"data.{option}") is not None:
            words.append(f"--{option} {shlex.quote(str(conversion.get(f'data.{option}')))}")
    return " ".join(words)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} exists; from-kohya never replaces a file: give another --out")


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    run_command("from-kohya", from_kohya, argv)
