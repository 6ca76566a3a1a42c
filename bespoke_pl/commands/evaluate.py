"""``python -m bespoke_pl evaluate``: a folder of generated images measured against the training folder.

Generated images may be the 24x24 art or decoded images of 24k x 24k (any whole k); larger ones are
reduced to the grid (:func:`bespoke_pl.pixelart.snap.to_art`, as samples are) and their grid fidelity is reported. Any
other size is refused, naming the files. Captions are not needed. Pointed at the training folder itself,
the command prints the reference values: how many colours the originals have, how alike their silhouettes
are, how wide their bottom rows are, and how far each is from its nearest other original (leave-one-out).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bespoke_pl.callbacks.faults import write_file
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.data.demo_sets import resolve_demo
from bespoke_pl.data.pairs import PixelPairs
from bespoke_pl.errors import ConfigError, DatasetError
from bespoke_pl.pixelart.metrics import COLOUR_RANGE, PixelArtQuality
from bespoke_pl.pixelart.quality import TOLERANCE, colour_counts
from bespoke_pl.pixelart.snap import to_art

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "*.png"
SAMPLE_SUFFIXES = ("-raw", "-snapped", "-preview")  # the callback's companions of each sample
REPORT_KEY = "bespoke_pl.evaluate"  # marks our JSON, so a re-run may replace it and nothing else


def read_generated(folder: Path, pattern: str, resolution: int) -> tuple[list[Path], list[torch.Tensor]]:
    """Every image matching ``pattern`` as uint8 (3, 24k, 24k); one error lists every unusable file."""
    if not folder.is_dir():
        raise DatasetError(f"generated folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.glob(pattern) if p.is_file())
    if pattern == DEFAULT_PATTERN:
        # A samples folder holds each sample four times (art, -raw, -snapped, -preview): measuring them all
        # would mix four kinds of image in one set. The default takes the art; --pattern chooses others.
        kinds = [p for p in paths if p.stem.endswith(SAMPLE_SUFFIXES)]
        if kinds and len(kinds) < len(paths):
            paths = [p for p in paths if p not in set(kinds)]
            log.info(
                "measuring the %d art images of %s; %d -raw/-snapped/-preview files left out "
                "(--pattern '*-raw.png' measures the decodes)",
                len(paths),
                folder,
                len(kinds),
            )
    if not paths:
        raise DatasetError(f"no images matching {pattern!r} in {folder}")
    images, problems = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                w, h = image.size
                if w != h or w % resolution:
                    problems.append(f"{path.name} ({w}x{h})")
                    continue
                images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous())
        except OSError as error:
            problems.append(f"{path.name} (unreadable: {error})")
    if problems:
        raise DatasetError(
            f"{len(problems)} of {len(paths)} images in {folder} are not square with a side that is a "
            f"multiple of {resolution} ({resolution}k x {resolution}k): " + ", ".join(problems)
        )
    return paths, images


def measure_images(
    images: list[torch.Tensor],
    paths: list[Path],
    pairs: PixelPairs,
    quality: PixelArtQuality,
    palette_lock: bool = False,
) -> list[dict]:
    """One row of numbers per generated image, from the metrics' own per-image values (``quality`` is
    updated with all of them). An image that is a training file itself is not compared with itself."""
    same_file = {p.resolve(): i for i, p in enumerate(pairs.paths)}
    rows = []
    for path, image in zip(paths, images, strict=True):
        k = image.shape[-1] // pairs.images.shape[-1]
        _, art = to_art(image[None], k, pairs.palette if palette_lock else None)
        exclude = torch.tensor([same_file.get(path.resolve(), -1)])
        v = {name: value[0] for name, value in quality.measure(art, image[None], exclude).items()}
        copy = "exact" if bool(v["exact_copies"]) else "near" if bool(v["near_copies"]) else ""
        grid = v.get("grid_fidelity")
        rows.append(
            {
                "file": path.name,
                "pixel_scale": k,
                "colours": int(v["colours"]),
                "colours_in_range": bool(v["colours_in_range"]),
                "palette_share": float(v["palette_share"]),
                "palette_distance": float(v["palette_distance"]),
                "grid_fidelity": float(grid) if grid is not None and k > 1 else None,
                "silhouette_iou": float(v["silhouette_iou"]),
                "silhouette_iou_mean": float(v["silhouette_iou_mean"]),
                "bottom_width": int(v["bottom_width"]),
                "torso": bool(v["torso_share"]),
                "nearest_training": pairs.paths[int(v["nearest"])].name,
                "copy_distance": float(v["copy_distance"]),
                "copy": copy,
            }
        )
    return rows


def reference_values(pairs: PixelPairs, quality: PixelArtQuality) -> dict:
    """What the training set itself looks like: colours, palette, silhouettes, bottom widths."""
    colours = colour_counts(pairs.images).float()
    return {
        "images": len(pairs.images),
        "palette_colours": len(pairs.palette),
        "colours_min": int(colours.min()),
        "colours_mean": float(colours.mean()),
        "colours_max": int(colours.max()),
    } | quality["head"].reference()


def format_report(reference: dict, rows: list[dict], summary: dict) -> str:
    three = "{:.3f}"
    columns = [
        *[(name, "{}") for name in ("file", "pixel_scale", "colours")],
        *[(name, three) for name in ("palette_share", "grid_fidelity", "silhouette_iou")],
        *[(name, "{}") for name in ("bottom_width", "torso", "nearest_training")],
        ("copy_distance", three),
        ("copy", "{}"),
    ]
    cells = [[name for name, _ in columns]]
    for row in rows:
        cells.append(["-" if row[n] is None else f.format(row[n]) for n, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["training set (reference): " + ", ".join(f"{k} {_num(v)}" for k, v in reference.items()), ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines += ["", f"summary over {len(rows)} images:"]
    lines += [f"  {name:<22} {_num(value)}" for name, value in summary.items()]
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def evaluate(
    generated: str,
    data_root: str,
    out: str | None = "evaluation.json",
    pattern: str = DEFAULT_PATTERN,
    resolution: int = 24,
    background: str | None = None,
    palette_lock: bool = False,
    colour_range: tuple[int, int] = COLOUR_RANGE,
    tolerance: float = TOLERANCE,
    bottom_rows: int = 3,
    torso_margin: int = 2,
    near_copy: float = 0.05,
    kid: bool = False,
) -> str:
    """Measure a folder of generated images against the training folder; print a table, write JSON.

    Args:
        generated: Folder of generated images (24x24, or 24k x 24k decoded images; no captions needed),
            or ``demo:punks``.
        data_root: The training folder (or ``demo:punks``); the reference.
        out: JSON report path (an earlier report there is replaced, any other file is refused); null: none.
        pattern: Which files of ``generated`` to measure (a glob, e.g. ``'*-raw.png'``); the default leaves a
            samples folder's -raw, -snapped and -preview companions out and measures the art.
        resolution: Side of the art in pixels.
        background: Colour under transparent training pixels (as for training).
        palette_lock: Lock the generated images to the training palette before measuring.
        colour_range: Inclusive colour count of a good image.
        tolerance: OKLab distance within which two colours are the same.
        bottom_rows: Rows the torso signal looks at.
        torso_margin: Pixels wider than the widest training bottom that count as a torso.
        near_copy: Share of differing pixels up to which an image is a near copy.
        kid: Also compute KID (download-free pixel features); needs >= 2 images.
    """
    if out:
        check_report_path(Path(out))  # refused before any work, not after it
    data = PixelArtDataModule(data_root, resolution, background=background, default_caption="")
    pairs = data.load()
    paths, images = read_generated(
        Path(resolve_demo(generated) or generated).expanduser(), pattern, resolution
    )
    # Grid fidelity wherever a file is larger than the art (its k is each file's own).
    k = max(image.shape[-1] // resolution for image in images)
    quality = PixelArtQuality(
        pairs.images,
        pixel_scale=k,
        colour_range=tuple(colour_range),
        tolerance=tolerance,
        bottom_rows=bottom_rows,
        torso_margin=torso_margin,
        near_copy=near_copy,
        kid=kid,
        palette=pairs.palette,
    )
    rows = measure_images(images, paths, pairs, quality, palette_lock)
    summary = {name: float(value) for name, value in quality.compute().items()}
    reference = reference_values(pairs, quality)
    if out:
        record = {"generated": str(generated), "training": str(data.root_path), "reference": reference}
        write_report(Path(out), record | {"summary": summary, "images": rows})
    return format_report(reference, rows, summary)


def check_report_path(path: Path) -> None:
    """Refuse ``--out`` if it is anything but a new file or an earlier report (never a file of the user's).

    Raises:
        ConfigError: ``path`` exists and is not an evaluation report.
    """
    if not path.exists():
        return
    try:
        ours = REPORT_KEY in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):  # not JSON, not text, a folder: not ours either way
        ours = False
    if not ours:
        raise ConfigError(f"--out {path} exists and is not an evaluation report; choose another --out")


def write_report(path: Path, report: dict) -> None:
    """Write the JSON report, replacing only an earlier report (never a file of the user's)."""
    check_report_path(path)
    text = json.dumps({REPORT_KEY: 1} | report, indent=1)
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    print(run_command("evaluate", evaluate, argv, as_positional=False))
