"""``python -m bespoke_pl check-data DIR``: every problem of a training folder, without training."""

from __future__ import annotations

from bespoke_pl.data.checks import scan_folder
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.data.pairs import parse_colour
from bespoke_pl.diffusion.base import caption_tokenizer
from bespoke_pl.errors import ConfigError, DatasetError


def check_data(
    root: str,
    resolution: int = 24,
    caption_extension: str = ".txt",
    background: str | None = None,
    default_caption: str | None = None,
    base_model: str | None = None,
    base_config: str | None = None,
    top_tags: int = 15,
) -> None:
    """Print every problem of a training folder and a summary of the set; exit status 2 on errors.

    The rules are the ones ``fit`` applies before loading the model; the options mean what the
    ``data.*`` options of ``fit`` mean.

    Args:
        root: The training folder (``demo:punks`` for the demo set).
        resolution: The only accepted image side.
        caption_extension: Suffix of the caption files.
        background: Colour composited under transparent pixels (``#rrggbb``); unset refuses them.
        default_caption: Caption for images without one; unset refuses them.
        base_model: Measure captions with this base model's tokenizer (when it is on disk); unset:
            a CLIP-like estimate.
        base_config: For a single-file base model: the diffusers folder or hub id with its tokenizer.
        top_tags: How many of the most frequent caption tags to list.
    """
    try:
        colour = parse_colour(background) if background else None
    except ValueError as error:
        raise ConfigError(str(error)) from error
    folder = PixelArtDataModule(root).root_path
    if not folder.is_dir():  # one line, not a report of a set that is not there
        raise DatasetError(f"training folder {folder} does not exist or is not a folder")
    tokenizer = caption_tokenizer(base_model, base_config)
    scan = scan_folder(folder, resolution, caption_extension, colour, default_caption, tokenizer)
    print(scan.report.format(max_items=None))
    print(scan.report.summary(top_tags))
    if scan.report.errors:
        raise SystemExit(2)


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    run_command("check-data", check_data, argv)
