"""Measures of the demo punks that only a drawing of known geometry allows: which style drew the face, and
whether the background is the one the caption asked for.

The demo's punks (:mod:`bespoke_pl.data.demo`) put the same skin pixels at the same places whatever the
traits, so the face says which palette drew it: the base style the pretrained tiny bases learned, or the
neon style of the demo's training set that a LoRA has to teach. A sample counts as a style when most face
probes are nearest (OKLab) to one of that style's skin tones. Both take art on the 24x24 grid, before any
palette lock (the lock would force the base tones onto the training palette).
"""

from __future__ import annotations

import re

import torch

from bespoke_pl.data.demo import BACKGROUNDS, SKIN_TONES, STYLES
from bespoke_pl.pixelart.palette import image_oklab, oklab
from bespoke_pl.pixelart.quality import background_colours

# (row, column) of skin pixels between the eyes and the mouth that no trait covers, for both genders;
# they lie in the head's upper half, so they carry the unshaded tone.
FACE_PROBES = ((13, 10), (13, 11), (14, 10), (14, 11))
_BACKGROUND = re.compile(r"\b(" + "|".join(BACKGROUNDS) + r") background\b")


def _tones() -> tuple[torch.Tensor, torch.Tensor]:
    """Every style's skin tones in OKLab (T, 3) and the style index of each (T,)."""
    colours, owners = [], []
    for index, style in enumerate(STYLES):
        for rgb in SKIN_TONES[style].values():
            colours.append(rgb)
            owners.append(index)
    return oklab(torch.tensor(colours, dtype=torch.uint8)), torch.tensor(owners)


def face_styles(art: torch.Tensor) -> torch.Tensor:
    """The style that drew each face: index into :data:`STYLES` (B,), -1 where no style has most probes.

    Args:
        art: uint8 (B, 3, 24, 24) on the art grid.
    """
    if art.shape[-2:] != (24, 24):
        raise ValueError(f"face_styles needs 24x24 art, got {tuple(art.shape[-2:])}")
    tones, owners = _tones()
    rows, cols = zip(*FACE_PROBES, strict=True)
    probes = image_oklab(art.cpu())[:, list(rows), list(cols)]  # (B, P, 3)
    votes = owners[torch.cdist(probes, tones[None].expand(len(art), -1, -1)).argmin(-1)]  # (B, P)
    counts = torch.stack([(votes == i).sum(1) for i in range(len(STYLES))], 1)  # (B, S)
    best = counts.argmax(1)
    return torch.where(counts.max(1).values * 2 > len(FACE_PROBES), best, torch.full_like(best, -1))


def style_share(art: torch.Tensor, style: str) -> float:
    """Share of images whose face is drawn in ``style``'s skin tones."""
    return float((face_styles(art) == STYLES.index(style)).float().mean()) if len(art) else float("nan")


def prompted_background(caption: str) -> str | None:
    """The background colour a caption asks for (``"... blue background ..."``), or None."""
    match = _BACKGROUND.search(caption)
    return match.group(1) if match else None


def background_matches(art: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Per image: its border colour is nearer the prompted background than any other demo background.

    Images whose caption names no demo background count as False.

    Args:
        art: uint8 (B, 3, 24, 24).
        captions: B prompts the images were generated from.
    """
    names = list(BACKGROUNDS)
    references = oklab(torch.tensor(list(BACKGROUNDS.values()), dtype=torch.uint8))
    nearest = torch.cdist(background_colours(art.cpu()), references).argmin(1)
    wanted = [prompted_background(c) for c in captions]
    return torch.tensor([w is not None and names[int(n)] == w for n, w in zip(nearest, wanted, strict=True)])


def demo_measures(art: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """``neon_share``, ``base_share`` and ``background_match`` of generated demo punks."""
    return {
        "neon_share": style_share(art, "neon"),
        "base_share": style_share(art, "base"),
        "background_match": float(background_matches(art, captions).float().mean()),
    }
