"""kohya's ``sample_prompts`` (a ``.txt`` with ``--n --w --h --s --l --d`` options per line, or its
``.toml`` / ``.json`` forms) as a bespoke_pl prompts file and ``sample.*`` settings.

bespoke_pl samples every prompt with the same settings, so a per-line option carries over when every line
agrees on it (a line without it counts as kohya's default); anything else is named in the warning.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bespoke_pl.errors import ConfigError
from bespoke_pl.kohya.reading import read_table
from bespoke_pl.kohya.record import Conversion

# kohya's per-line options and the prompt-dict keys its .toml / .json files use for them
LINE_OPTIONS = {
    "n": "negative_prompt",
    "w": "width",
    "h": "height",
    "d": "seed",
    "s": "sample_steps",
    "l": "scale",
    "ss": "sample_sampler",
    "g": "guidance_scale",
    "cn": "controlnet_image",
    "ctr": "cfg_trunc_ratio",
    "rcfg": "renorm_cfg",
    "fs": "flow_shift",
}
FLAG = {key: f"--{flag}" for flag, key in LINE_OPTIONS.items()}
NUMBERS = {"width": int, "height": int, "seed": int, "sample_steps": int, "scale": float}
KOHYA_DEFAULTS = {"sample_steps": 30, "scale": 7.5, "width": 512, "height": 512}  # sample_image_inference's
OTHER_MODELS = "an option for other models (Flux guidance, Lumina, ControlNet); nothing to carry over here"
# kohya's sample_sampler names -> bespoke_pl's (sample.sampler); kohya's dpmsolver++ is DPM++ 2M
SAMPLERS = {
    "ddim": "ddim",
    "euler": "euler",
    "k_euler": "euler",
    "euler_a": "euler_a",
    "k_euler_a": "euler_a",
    "dpmsolver++": "dpmpp_2m",
}


def parse_line(line: str, number: int, conv: Conversion) -> dict[str, Any]:
    """One line of a kohya prompts ``.txt``: the prompt, then `` --x value`` options (kohya's split)."""
    prompt, *options = line.split(" --")
    parsed: dict[str, Any] = {"prompt": prompt.strip()}
    for option in options:
        match = re.match(r"(\w+)\s+(.*\S)", option, re.S)
        key = LINE_OPTIONS.get(match[1].lower()) if match else None
        if key is None:
            conv.skip(f"sample prompt {number} --{option.strip()}", "not one of kohya's prompt options")
            continue
        parsed[key] = match[2].strip()
    return parsed


def read_prompts(path: Path, conv: Conversion) -> list[dict[str, Any]]:
    """kohya's prompt dicts from a ``.txt``, ``.toml`` or ``.json`` prompts file."""
    what = "kohya sample_prompts"
    suffix = path.suffix.lower()
    if suffix == ".toml":  # [prompt] holds the defaults, [[prompt.subset]] one entry per prompt
        defaults = read_table(path, what).get("prompt") or {}
        subsets = defaults.get("subset") if isinstance(defaults, dict) else None
        if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
            raise ConfigError(f"{what} {path} has no [prompt] table with [[prompt.subset]] entries")
        entries = [{k: v for k, v in defaults.items() if k != "subset"} | subset for subset in subsets]
    elif suffix == ".json":
        entries = read_table(path, what, list)
    elif path.is_file():  # kohya skips blank lines and lines starting with #
        lines = path.read_text(encoding="utf-8").splitlines()
        return [
            parse_line(line, i + 1, conv) for i, line in enumerate(lines) if line.strip() and line[0] != "#"
        ]
    else:
        raise ConfigError(f"{what} {path} does not exist (relative paths are read from the current folder)")
    return [e if isinstance(e, dict) else parse_line(str(e), i + 1, conv) for i, e in enumerate(entries)]


def _values(prompts: list[dict[str, Any]], key: str, conv: Conversion) -> list[Any]:
    """Each prompt's value of ``key`` (kohya's default where a prompt has none), numbers converted."""
    values = []
    for i, prompt in enumerate(prompts):
        value = prompt.get(key, KOHYA_DEFAULTS.get(key))
        if value is not None and key in NUMBERS:
            try:
                value = NUMBERS[key](value)
            except (TypeError, ValueError):
                conv.skip(f"sample prompt {i + 1} {FLAG[key]} {value}", "not a number (kohya ignores it too)")
                value = KOHYA_DEFAULTS.get(key)
        values.append(value)
    return values


def _common(values: list[Any], flag: str, option: str, conv: Conversion, source: str) -> None:
    """Set ``option`` from a per-prompt value: exactly when all prompts agree, else to the first one's."""
    agree = len(set(values)) == 1
    conv.set(
        option, values[0], f"{source} {flag} {values[0]}" + (" (every prompt)" if agree else " (the first)")
    )
    if not agree:
        shown = ", ".join(str(v) for v in dict.fromkeys(values))
        conv.skip(
            f"sample prompts {flag} {shown}", f"every prompt is sampled alike: {option} is the first one's"
        )


def set_sampler(name: str, source: str, conv: Conversion) -> None:
    """``sample.sampler`` from one of kohya's sampler names, or a warning for one bespoke_pl lacks."""
    if name.lower() in SAMPLERS:
        conv.set("sample.sampler", SAMPLERS[name.lower()], source)
    else:
        conv.skip(
            source.removeprefix("kohya "),
            "bespoke_pl samples with euler (its default), euler_a, ddim or dpmpp_2m (kohya's dpmsolver++)",
        )


def convert_prompts(path: Path, source: str, conv: Conversion, image_side: int) -> None:
    """Put the prompts into ``conv.prompts`` and their shared options into ``sample.*``.

    Args:
        path: kohya's ``sample_prompts`` file.
        source: How the YAML names the file (``kohya sample_prompts``).
        image_side: The side bespoke_pl samples at, ``resolution * pixel_scale`` px.
    """
    prompts = [p for p in read_prompts(path, conv) if str(p.get("prompt", "")).strip()]
    if not prompts:
        raise ConfigError(f"kohya sample_prompts {path} has no prompt")
    header = f"# Sample prompts converted from kohya's {path} by python -m bespoke_pl from-kohya"
    conv.prompts = [header] + [" ".join(str(p["prompt"]).split()) for p in prompts]
    negatives = [str(p.get("negative_prompt") or "") for p in prompts]
    if any(negatives):
        _common(negatives, "--n", "sample.negative_prompt", conv, source)
    for key, flag, option in (
        ("sample_steps", "--s", "sample.steps"),
        ("scale", "--l", "sample.guidance_scale"),
    ):
        values = _values(prompts, key, conv)
        if any(key in p for p in prompts):
            _common(values, flag, option, conv, source)
        else:
            conv.set(option, values[0], f"kohya's default for prompts without {flag} ({values[0]})")
    seeds = _values(prompts, "seed", conv)
    if all(seed is None for seed in seeds):
        why = (
            "kohya draws a random seed per sample; prompt i gets sample.seed + i every epoch: epochs compare"
        )
        conv.note("sample", f"{source}: no --d: {why}")
    elif None not in seeds and all(seed == seeds[0] + i for i, seed in enumerate(seeds)):
        conv.set("sample.seed", seeds[0], f"{source} --d {', '.join(map(str, seeds))}")
    else:
        first = next(seed for seed in seeds if seed is not None)
        conv.set("sample.seed", first, f"{source} --d (first seed given)")
        conv.skip(
            f"sample prompts --d {', '.join(map(str, seeds))}", f"prompt i is sampled with seed {first} + i"
        )
    sizes = set(zip(_values(prompts, "width", conv), _values(prompts, "height", conv), strict=True))
    if sizes != {(image_side, image_side)}:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        if not any("width" in p or "height" in p for p in prompts):
            shown = f"not given (kohya's default {shown})"
        why = f"samples are drawn at {image_side} px (data.resolution x pixel_scale), then reduced to the art"
        conv.skip(f"sample prompts --w/--h {shown}", why)
    samplers = [p.get("sample_sampler") for p in prompts]
    if any(samplers):
        if len(set(samplers)) > 1:
            shown = ", ".join(str(s) for s in dict.fromkeys(samplers))
            conv.skip(
                f"sample prompts --ss {shown}", "every prompt is sampled alike: the first prompt's sampler"
            )
        set_sampler(str(samplers[0]), f"{source} --ss {samplers[0]}", conv)
    for key in ("guidance_scale", "controlnet_image", "cfg_trunc_ratio", "renorm_cfg", "flow_shift"):
        given = [str(p[key]) for p in prompts if key in p]
        if given:
            conv.skip(f"sample prompts {FLAG[key]} {', '.join(dict.fromkeys(given))}", OTHER_MODELS)
    unknown = sorted({k for p in prompts for k in p} - {"prompt", *LINE_OPTIONS.values(), "enum"})
    if unknown:
        conv.skip(f"sample prompts {', '.join(unknown)}", "not one of kohya's prompt options")
