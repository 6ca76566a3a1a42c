"""The rules a training folder must meet, checked in one pass that reports every problem at once.

``scan_folder`` reads a folder of PNGs and captions, decodes what is usable and collects findings: errors
(the run cannot use the folder as it is) and warnings (it can, but something is probably not what the user
meant). ``data.load_pairs`` raises on errors, so training and ``python -m bespoke_pl check-data`` apply the
same rules; the summary (colours, caption lengths, tags) is for ``check-data``.

Decisions, and why:
- Other image formats (``.jpg``, ``.webp``, ...) are errors: they look like training data that would be
  skipped silently, and lossy formats do not keep pixel art's exact colours. Other files (notes, ``.json``)
  are warnings: nobody mistakes them for training data. Hidden files (``.DS_Store``) are ignored.
- Grayscale images are accepted with a warning: grey maps to RGB exactly, but one grey image in a colour
  set is more often a wrong export than a choice.
- 16-bit images are errors: Pillow would cut them to 8 bits, changing colours without a word.
- Transparency (alpha, or a palette/colour key that some pixel really uses) needs ``background`` or
  ``alpha_mask``; blending semi-transparent pixels onto the background makes colours the art did not have,
  which is a warning. With ``alpha_mask`` the alpha is kept (opaque images: all 255) to weight the loss,
  and the art is composited on ``background``, or on black where it is unset.
- Captions longer than the text encoder's 77 tokens are warnings naming the part that is cut.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bespoke_pl.data.image_checks import check_image
from bespoke_pl.data.report import CLIP_MAX_LENGTH, MISSING_FOLDER, DataReport

log = logging.getLogger(__name__)

OTHER_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".jxl"}
# CLIP's pre-tokenizer splits letters runs, single digits and punctuation runs; each is about one token.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


@dataclass
class FolderScan:
    """The usable pairs of a folder (in file-name order) and the report on all of it."""

    report: DataReport
    paths: list[Path] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # each (H, W, 3) uint8
    alphas: list[np.ndarray] = field(default_factory=list)  # each (H, W) uint8; only with alpha_mask
    captions: list[str] = field(default_factory=list)


def count_tokens(caption: str, tokenizer=None) -> tuple[int, str]:
    """Tokens of a caption without start/end tokens, and the text past the encoder's limit ('' if none).

    Args:
        caption: The caption text.
        tokenizer: A Hugging Face CLIP tokenizer (the base model's); unset: a CLIP-like estimate.
    """
    if tokenizer is not None:
        limit = min(tokenizer.model_max_length, 1_000_000) - 2
        ids = tokenizer(caption, add_special_tokens=False, truncation=False)["input_ids"]
        return len(ids), tokenizer.decode(ids[limit:]).strip() if len(ids) > limit else ""
    limit = CLIP_MAX_LENGTH - 2
    pieces = list(_CLIP_PIECES.finditer(caption))
    # CLIP's 49k vocabulary holds most words whole; count an extra token per 8 letters past 12.
    costs = [1 + max(0, len(m.group()) - 5) // 8 if m.group()[0].isalpha() else 1 for m in pieces]
    total, cut_at = 0, None
    for match, cost in zip(pieces, costs, strict=True):
        total += cost
        if total > limit and cut_at is None:
            cut_at = match.start()
    return total, caption[cut_at:].strip() if cut_at is not None else ""


def _dangling_link(path: Path) -> str:
    """Why a symbolic link leads nowhere: a loop, or a target that does not exist."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11-3.12 report a loop so
        return "symbolic link loop"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    return "unreadable symbolic link"


def _read_caption(path: Path | None, expected: str, default: str | None, report: DataReport) -> str | None:
    """The caption text, the default for a missing/empty one if allowed, or None (problem recorded)."""
    caption = None
    if path is not None:
        try:
            caption = path.read_text(encoding="utf-8-sig").strip()  # -sig: a BOM is not part of the caption
        except UnicodeDecodeError as error:
            report.add("error", "caption is not UTF-8", f"{path.name} (byte {error.start})")
            return None
    if caption:
        return caption
    kind = "missing caption" if caption is None else "empty caption"
    if default is None:
        report.add("error", f"{kind} (set `default_caption` to allow)", expected)
        return None
    report.add("warning", f"{kind}, `default_caption` used", expected)
    return default


def scan_folder(
    root: str | Path,
    resolution: int = 24,
    caption_extension: str = ".txt",
    background: tuple[int, int, int] | None = None,
    default_caption: str | None = None,
    tokenizer=None,
    alpha_mask: bool = False,
) -> FolderScan:
    """Check every file of a training folder and decode the usable image-caption pairs.

    Args:
        root: The folder of ``*.png`` images and same-stem caption files.
        resolution: The only accepted image side.
        caption_extension: Suffix of the caption files (matched without regard to case).
        background: RGB composited under transparent pixels; unset: transparency is an error.
        default_caption: Caption for images without one; unset: a missing or empty caption is an error.
        tokenizer: The base model's CLIP tokenizer for caption lengths; unset: an estimate.
        alpha_mask: Accept transparency without a background (composited on black) and keep each
            image's alpha in ``alphas``.
    """
    folder = Path(root).expanduser()
    report = DataReport(folder)
    scan = FolderScan(report)
    if tokenizer is not None:
        report.token_counter = f"{type(tokenizer).__name__} of the base model"
    if not folder.is_dir():
        report.add("error", MISSING_FOLDER, "")
        return scan

    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    pngs = [p for p in entries if p.is_file() and p.suffix.lower() == ".png"]
    png_set = set(pngs)
    captions: dict[str, list[Path]] = {}
    for p in entries:
        if p.is_file() and p.suffix.lower() == caption_extension.lower():
            captions.setdefault(p.stem, []).append(p)
    stems: dict[str, list[Path]] = {}
    for p in pngs:
        stems.setdefault(p.stem, []).append(p)
    report.images = len(pngs)

    for p in entries:
        if p.is_symlink() and not p.exists():
            problem = _dangling_link(p)
            level = "error" if p.suffix.lower() in (".png", caption_extension.lower()) else "warning"
            report.add(level, problem, p.name)
        elif p.is_dir():
            inside = sum(1 for q in p.iterdir() if q.suffix.lower() == ".png")
            if inside:
                report.add("warning", "subfolders are not read", f"{p.name}/ ({inside} .png)")
        elif p.suffix.lower() in OTHER_IMAGE_SUFFIXES:
            report.add(
                "error", "not PNG (only lossless PNG keeps exact colours; convert or move it out)", p.name
            )
        elif p not in png_set and p.stem not in stems and p.suffix.lower() == caption_extension.lower():
            report.add("warning", "caption without an image", p.name)
        elif p not in png_set and p.suffix.lower() != caption_extension.lower():
            report.add("warning", "ignored (not a PNG or caption)", p.name)
    if not pngs:
        report.add("error", "no .png images", "")
        return scan
    for stem, same in stems.items():
        if len(same) > 1:
            names = ", ".join(p.name for p in same)
            report.add("error", "same name, different extension case (one caption for two images)", names)
        if len(captions.get(stem, [])) > 1:
            report.add("error", "more than one caption file", ", ".join(p.name for p in captions[stem]))
    folded = Counter(stem.lower() for stem in stems)
    for stem in stems:
        if folded[stem.lower()] > 1 and stem != stem.lower():
            report.add("warning", "names differ only in case (clash on macOS/Windows disks)", stem)

    for path in pngs:
        if len(stems[path.stem]) > 1:
            continue
        decoded = check_image(path, resolution, background, report, alpha_mask)
        pixels, alpha = decoded if decoded is not None else (None, None)
        found = captions.get(path.stem, [])
        expected = path.stem + caption_extension
        caption = _read_caption(found[0] if len(found) == 1 else None, expected, default_caption, report)
        if len(found) > 1 or pixels is None or caption is None:
            continue
        tokens, cut = count_tokens(caption, tokenizer)
        if cut:
            # The cut words' start and count, not the words: a 5,000-word caption made a 44 KB line.
            words = cut.split()
            start = " ".join(words[:6]) + (" ..." if len(words) > 6 else "")
            report.add(
                "warning",
                f"caption longer than {CLIP_MAX_LENGTH - 2} tokens, the end is cut",
                f"{expected} ({tokens} tokens; {len(words)} words cut, from {start!r})",
            )
        scan.paths.append(path)
        scan.images.append(pixels)
        if alpha_mask:
            scan.alphas.append(alpha if alpha is not None else np.full(pixels.shape[:2], 255, np.uint8))
        scan.captions.append(caption)
        report.colours.append(len(np.unique(pixels.reshape(-1, 3), axis=0)))
        report.caption_tokens.append(tokens)
        report.tags.update(tag.strip().lower() for tag in caption.split(",") if tag.strip())
    _suggest_resolution(report)
    return scan


def _suggest_resolution(report: DataReport) -> None:
    """When every image is refused for one other square size, that size is most likely the art's own."""
    sizes = report.refused_sizes
    if len(sizes) == 1 and sum(sizes.values()) == report.images:
        ((width, height),) = sizes
        if width == height:
            report.add(
                "error",
                f"all {report.images} images are {width}x{height}: for art of that size give "
                f"--data.resolution {width} (check-data: --resolution {width})",
                "",
            )
