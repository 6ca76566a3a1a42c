"""The epoch contact sheet: the same prompts and seeds, one row per sampled epoch, in one image.

Rows are read back from the sample folders the run has written (``samples/epoch-000003/00-seed42.png``),
so the sheet survives a resumed run and always shows every epoch on disk, oldest at the top.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from bespoke_pl.pixelart.grid import upscale_nearest

ART_FILE = re.compile(r"^(\d+)-seed(-?\d+)\.png$")  # the final art; -raw/-snapped/-preview files are skipped
EPOCH_FOLDER = re.compile(r"^epoch-(\d+)$")


def read_epoch_rows(samples_dir: Path) -> list[tuple[int, list[torch.Tensor]]]:
    """``[(epoch, [uint8 (3, H, W), ...]), ...]`` for every ``epoch-NNNNNN`` folder, by epoch then image index."""
    rows = []
    folders = [p for p in samples_dir.iterdir() if p.is_dir() and EPOCH_FOLDER.match(p.name)]
    for folder in sorted(folders, key=lambda p: int(EPOCH_FOLDER.match(p.name).group(1))):
        files = sorted(
            (p for p in folder.iterdir() if ART_FILE.match(p.name)),
            key=lambda p: int(ART_FILE.match(p.name).group(1)),
        )
        images = []
        for path in files:
            with Image.open(path) as image:
                images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        if images:
            rows.append((int(EPOCH_FOLDER.match(folder.name).group(1)), images))
    return rows


def _label(text: str, width: int, height: int) -> torch.Tensor:
    """White text on black, (3, height, width) uint8."""
    canvas = Image.new("RGB", (width, height))
    font = ImageFont.load_default(size=max(10, min(height // 3, 24)))
    ImageDraw.Draw(canvas).text((4, height // 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1)


def contact_sheet(
    rows: list[tuple[int, list[torch.Tensor]]], cell: int = 192, padding: int = 2
) -> torch.Tensor:
    """Tile epoch rows into one uint8 (3, H, W) image, each row labelled with its epoch.

    Every image is nearest-upscaled to ``cell`` px (a whole multiple of its size, so pixels stay square and
    sharp); rows with fewer images than the widest are padded with black.

    Args:
        rows: From :func:`read_epoch_rows`.
        cell: Side of one image on the sheet in pixels.
        padding: Black pixels between cells.
    """
    if not rows:
        raise ValueError("no sampled epochs to put on a contact sheet")
    columns = max(len(images) for _, images in rows)
    label_width = max(48, cell // 3)
    step = cell + padding
    sheet = torch.zeros(
        3, padding + len(rows) * step, label_width + padding + columns * step, dtype=torch.uint8
    )
    for r, (epoch, images) in enumerate(rows):
        top = padding + r * step
        sheet[:, top : top + cell, :label_width] = _label(f"ep {epoch}", label_width, cell)
        for c, image in enumerate(images):
            scale = max(1, cell // image.shape[-1])
            big = upscale_nearest(image.unsqueeze(0), scale)[0][:, :cell, :cell]
            left = label_width + padding + c * step
            sheet[:, top : top + big.shape[1], left : left + big.shape[2]] = big
    return sheet
