"""A kohya ``train_network.py`` / ``sdxl_train_network.py`` config, converted: the settings read as kohya
reads them, each part mapped by its module, and every key left over named with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bespoke_pl.kohya.data import convert_data
from bespoke_pl.kohya.keys import CONVERTED, REASON
from bespoke_pl.kohya.network import convert_base, convert_loraplus, convert_network
from bespoke_pl.kohya.objective import convert_objective
from bespoke_pl.kohya.optimizer import check_optimizer, convert_optimizer
from bespoke_pl.kohya.outputs import convert_outputs, convert_sampling
from bespoke_pl.kohya.record import Conversion, KohyaArgs
from bespoke_pl.kohya.training import convert_length, convert_precision, convert_schedule

NOT_KOHYA = "not an option of kohya's train_network.py or sdxl_train_network.py; kohya ignores it too"


def flatten(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """kohya's reading of a ``--config_file``: the tables' keys merged into one level, a later one winning.

    Returns:
        The settings, and the keys set more than once.
    """
    values: dict[str, Any] = {}
    repeated = []
    for name, value in config.items():
        for key, setting in value.items() if isinstance(value, dict) else [(name, value)]:
            if key in values:
                repeated.append(key)
            values[key] = setting
    return values, repeated


def convert(
    config: dict[str, Any], toml: Path, out: Path, prompts_file: Path, family: str = "auto"
) -> Conversion:
    """The ``fit`` config for a kohya TOML.

    Args:
        config: The TOML, as read.
        toml: Its path, for the YAML's header.
        out: Where the YAML goes, for the header's commands.
        prompts_file: Where a converted ``sample_prompts`` file goes.
        family: ``auto``, or the family the TOML is for (``sdxl`` for ``sdxl_train_network.py``).
    """
    values, repeated = flatten(config)
    args = KohyaArgs(values)
    conv = Conversion()
    for key in dict.fromkeys(repeated):
        conv.check(f"{key} is set in more than one table; kohya uses the last one, {args.source(key)}")
    convert_base(args, conv, family)
    data = convert_data(args, conv, conv.family)
    convert_network(args, conv)
    convert_optimizer(args, conv)
    convert_loraplus(args, conv)
    total = convert_length(args, conv, data)
    convert_schedule(args, conv, total)
    check_optimizer(conv)
    convert_precision(args, conv)
    convert_objective(args, conv)
    convert_outputs(args, conv)
    convert_sampling(args, conv, prompts_file)
    for key in args.unused():
        item = args.source(key).removeprefix("kohya ")
        if key in CONVERTED:  # read by no mapping: a bug of from-kohya, but never a silent drop
            conv.skip(item, "from-kohya did not convert it (please report this)")
        else:
            conv.skip(item, REASON.get(key, NOT_KOHYA))
    conv.header = [
        "Written by python -m bespoke_pl from-kohya from the kohya sd-scripts config",
        f"  {toml}",
        "Each option's comment names the kohya key it came from; 'changed:' says where bespoke_pl",
        "deliberately differs, and why. Options the TOML does not set keep bespoke_pl's defaults",
        "(fit --print_config), except where kohya's own default shaped the run ('kohya default').",
        f"  python -m bespoke_pl fit --config {out}",
        "",
    ]
    return conv
