"""What a kohya config became: ``fit`` options, each with the kohya key it came from; notes where bespoke_pl
deliberately differs; and what does not carry over. Written out as a YAML whose comments say all three.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

import yaml

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.keys import SECRETS

# The YAML's sections in the order ``fit --print_config`` prints them ("" is the top level).
SECTIONS = ("", "trainer", "model", "data", "save_lora", "sample", "checkpoint")
WIDTH = 110  # ruff's line length; the comments wrap to it


def toml_value(key: str, value: Any) -> str:
    """A kohya value as the TOML writes it (``"24,24"``, ``true``, ``["conv_dim=8"]``); secrets hidden."""
    if key in SECRETS:
        return "(value not shown)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value("", item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(k, v)}" for k, v in value.items()) + "}"
    return str(value)


def as_flag(value: Any, source: str) -> bool:
    """A kohya switch: a TOML boolean, or the text true / false."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"{source} is not true or false")
    return value


def as_number(value: Any, kind: type, source: str) -> int | float:
    """A kohya number (an int, a float, or their text); an integer must be whole."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if kind is int and number != int(number):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{source} is not {'an integer' if kind is int else 'a number'}") from None
    return int(number) if kind is int else number


def yaml_value(value: Any) -> str:
    """One YAML value on one line (lists and mappings in flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=math.inf).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


@dataclass
class Option:
    """One ``fit`` option: its value, where it came from (``kohya network_dim = 16``) and, for a deliberate
    change, why."""

    value: Any
    source: str
    why: str = ""


@dataclass
class Conversion:
    """The converted config, built up by the mapping and written by :meth:`yaml_text`."""

    family: str = "sdxl"
    options: dict[tuple[str, ...], Option] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (kohya key = value, reason)
    checks: list[str] = field(default_factory=list)  # converted, but to check before fit
    header: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # the lines of the sample prompts file, if any

    def set(self, path: str, value: Any, source: str, why: str = "") -> None:
        """Set the option at a dotted ``path`` (``model.optimizer.init_args.lr``)."""
        self.options[tuple(path.split("."))] = Option(value, source, why)

    def get(self, path: str) -> Any:
        option = self.options.get(tuple(path.split(".")))
        return None if option is None else option.value

    def note(self, section: str, text: str) -> None:
        """A comment in ``section`` for a kohya key that needs no option (refused, or always so here)."""
        self.notes.setdefault(section, []).append(text)

    def skip(self, item: str, reason: str) -> None:
        """A kohya setting that does not carry over: in the warning block and at the end of the YAML."""
        self.skipped.append((item, reason))

    def check(self, text: str) -> None:
        """Something converted that needs the user's attention before ``fit`` (a package to install)."""
        self.checks.append(text)

    # ------------------------------------------------------------------------------------------ output
    def warning_lines(self) -> list[str]:
        """The skipped settings, one line per reason, then the checks."""
        by_reason: dict[str, list[str]] = {}
        for item, reason in self.skipped:
            by_reason.setdefault(reason, []).append(item)
        return [f"{', '.join(items)}: {reason}" for reason, items in by_reason.items()] + self.checks

    def yaml_text(self) -> str:
        """The config as YAML: header, sections in ``fit``'s order, notes after each section's options, and
        the settings that did not carry over at the end."""
        tree: dict[str, Any] = {}
        for path, option in self.options.items():
            node = tree.setdefault(path[0] if len(path) > 1 else "", {})
            for part in path[1:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = option
        if set(tree) - set(SECTIONS):  # a mapping bug, not the user's mistake
            raise ValueError(f"options outside the known sections: {sorted(set(tree) - set(SECTIONS))}")
        lines = [wrapped for line in self.header for wrapped in (_comment(line, "") or ["#"])]
        for section in SECTIONS:
            options, notes = tree.get(section), self.notes.get(section, [])
            indent = "  " if section and options else ""
            if section and options:
                lines.append(f"{section}:")
            lines += _render(options or {}, indent)
            for text in notes:  # a section without options has no heading: its notes name it
                lines += _comment(text if options or not section else f"{section}: {text}", indent)
        if self.skipped or self.checks:
            lines.append("# Not carried over, or to check (from-kohya printed these as a warning):")
            lines += [f"#   {line}" for line in self.warning_lines()]  # unwrapped: one per warning line
        text = "\n".join(lines) + "\n"
        yaml.safe_load(text)  # what is written must be YAML
        return text


def _comment(text: str, indent: str) -> list[str]:
    lead = indent + "# "
    return textwrap.wrap(
        text, WIDTH - len(lead), initial_indent=lead, subsequent_indent=lead + "  ", break_long_words=False
    )


def _render(node: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, child in node.items():
        if isinstance(child, Option):
            if child.why:
                lines += _comment(f"changed: {child.why}", indent)
            lines.append(f"{indent}{key}: {yaml_value(child.value)}  # {child.source}")
        else:
            lines.append(f"{indent}{key}:")
            lines += _render(child, indent + "  ")
    return lines


class KohyaArgs:
    """The kohya settings of one TOML, flattened as kohya flattens them; each read marks its key as used.

    Args:
        values: Key -> value, the sections already merged.
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def source(self, key: str) -> str:
        """How the YAML names a key's origin: ``kohya network_dim = 16`` (the key is then used)."""
        self.used.add(key)
        return f"kohya {key} = {toml_value(key, self.values[key])}"

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.values.get(key)

    def text(self, key: str) -> str | None:
        value = self.raw(key)
        return None if value is None else str(value)

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        return False if value is None else as_flag(value, self.source(key))

    def number(self, key: str, kind: type = float) -> Any:
        value = self.raw(key)
        return None if value is None else as_number(value, kind, self.source(key))

    def unused(self) -> list[str]:
        return [key for key in self.values if key not in self.used]
