"""How every subcommand parses its command line: usage lines naming ``python -m bespoke_pl <command>``, and
a mistake in the arguments as one ``error:`` line with the ``--help`` to read, not a usage listing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ArgumentParser, get_loader, set_loader

from bespoke_pl.training.optimizer_choices import missing_package


def one_line(message: str) -> str:
    """A parser message on one line, with ``<class 'int'>`` written ``int``."""
    return re.sub(r"<class '([\w.]+)'>", r"\1", " ".join(part.strip() for part in message.splitlines()))


def section_help(full_help: str, section: str) -> str:
    """The part of ``fit --help`` that documents ``--section.*``: its heading and its options."""
    lines = full_help.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  --{section} CONFIG"))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines)
    )
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(
        [f"usage: python -m bespoke_pl fit --{section}.OPTION VALUE ...", "", *lines[start - 1 : end]]
    )


class OneLineErrors:
    """For jsonargparse parsers: unknown keys and wrong types as one ``error:`` line, not a usage listing
    of every option; the hint names the subcommand's ``--help``."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        # prog is PROG, "PROG <command>" or (fit's, from LightningCLI's subcommands) "PROG [options] fit"
        command = "" if parser.prog == PROG else parser.prog.split()[-1]
        help_command = " ".join(part for part in (PROG, command, "--help") if part)
        missing = missing_package(
            message
        )  # a class_path whose package is not installed: say which to install
        if missing is not None:
            sys.stderr.write(f"error: {missing}\n")
            self.exit(2)
        sys.stderr.write(f"error: {one_line(message)} (options: {help_command})\n")
        self.exit(2)


PROG = "python -m bespoke_pl"  # how the usage lines and hints name the program, for every subcommand


T = TypeVar("T")


class CommandParser(OneLineErrors, ArgumentParser):
    """The parser of the subcommands besides ``fit``, with ``fit``'s one-line mistakes."""


def run_command(name: str, function: Callable[..., T], argv: list[str], **kwargs: Any) -> T:
    """Parse ``argv`` into ``function``'s parameters with jsonargparse and call it.

    Args:
        name: The subcommand (``generate``), for its usage line and the ``--help`` hint of a mistake.
        function: The command's function; its signature and docstring are the options and their help.
        argv: The arguments after the subcommand's name.
        **kwargs: More options of jsonargparse's ``CLI`` (``as_positional``).
    """
    from jsonargparse import CLI

    return CLI(function, args=argv, parser_class=CommandParser, prog=f"{PROG} {name}", **kwargs)


class _DuplicateKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one", None
            )
        seen[key] = line
    return loader.construct_mapping(node, deep)


_DuplicateKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def check_config_files(argv: list[str]) -> None:
    """Each ``--config FILE`` of ``argv`` that exists, parsed strictly first: a duplicated key is an error
    naming the file (jsonargparse's own message could not say which of several configs it was in)."""
    from bespoke_pl.errors import ConfigError

    files = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        path = Path(name).expanduser()
        if not path.is_file():
            continue  # jsonargparse says so itself
        try:
            yaml.load(path.read_text(), Loader=_DuplicateKeys)  # noqa: S506 (a SafeLoader subclass)
        except yaml.constructor.ConstructorError as error:
            raise ConfigError(f"config {name}: {error.problem}") from None
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # not YAML: jsonargparse's message says what it is


def refuse_duplicate_yaml_keys() -> None:
    """Make jsonargparse's YAML loader (config files and YAML values) refuse duplicated keys.

    The check parses once with a strict loader and then leaves the loading to jsonargparse's own, so the
    values (its float and timestamp rules) are exactly what they were.
    """
    load = get_loader("yaml")
    if getattr(load, "refuses_duplicates", False):
        return

    def strict_load(stream):
        if isinstance(stream, str) and ":" in stream:
            yaml.load(stream, Loader=_DuplicateKeys)  # noqa: S506 (a SafeLoader subclass)
        return load(stream)

    strict_load.refuses_duplicates = True
    set_loader("yaml", strict_load, (yaml.YAMLError,))
