"""A deterministic demo data set of 24x24 CryptoPunk-style heads with captions, drawn in code.

Each image comes with a caption built from the traits actually drawn, so a trained LoRA can be
checked against known attributes. Two styles share the drawing and the captions and differ in the skin
tones: ``base`` (the tones the pretrained tiny bases learned, :mod:`bespoke_pl.tinybases.pretrain`) and ``neon``
(saturated tones those bases never saw; the demo's training set, so what the LoRA learns is visible).
The named, cached sets (``"demo:punks"`` wherever a data folder is expected) are
:mod:`bespoke_pl.data.demo_sets`'.
"""

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bespoke_pl.files import atomic_folder

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

CAPTION_PREFIX = "pixel art, 24x24, portrait of bespoke punk"
SIZE = 24

BACKGROUNDS: dict[str, RGB] = {
    "blue": (110, 150, 200),
    "green": (120, 180, 130),
    "purple": (150, 120, 190),
    "pink": (230, 170, 190),
    "grey": (160, 160, 160),
    "teal": (100, 170, 170),
    "orange": (235, 160, 100),
    "yellow": (235, 215, 120),
}
SKINS: dict[str, RGB] = {
    "light": (219, 177, 128),
    "medium": (174, 139, 97),
    "dark": (113, 63, 29),
    "albino": (234, 217, 217),
    "zombie": (125, 162, 105),
    "alien": (200, 251, 251),
}
_SKIN_WEIGHTS = (3, 3, 3, 1, 1, 1)
# The demo style: the same skin names in saturated tones, each at least 0.14 OKLab from every base skin
# and 0.11 from every background, so a sample's face says which style drew it.
NEON_SKINS: dict[str, RGB] = {
    "light": (40, 225, 60),
    "medium": (240, 40, 220),
    "dark": (30, 30, 200),
    "albino": (40, 240, 200),
    "zombie": (240, 40, 90),
    "alien": (200, 245, 50),
}
SKIN_TONES: dict[str, dict[str, RGB]] = {"base": SKINS, "neon": NEON_SKINS}
STYLES = tuple(SKIN_TONES)
HAIR_COLOURS: dict[str, RGB] = {
    "black": (40, 36, 36),
    "brown": (100, 60, 30),
    "blonde": (240, 210, 110),
    "red": (200, 50, 40),
    "orange": (230, 120, 30),
    "purple": (120, 50, 160),
    "green": (50, 150, 60),
    "blue": (40, 80, 200),
    "white": (225, 225, 225),
    "pink": (240, 100, 170),
}
LIPSTICKS: dict[str, RGB] = {"red": (190, 30, 50), "pink": (230, 90, 150), "purple": (110, 40, 120)}
HAIR_STYLES = ("bald", "short hair", "mohawk", "wild hair", "long hair", "cap", "beanie")
HATS = ("cap", "beanie")
EYE_WHITE, PUPIL = (240, 240, 240), (30, 25, 40)
SHADES_FRAME, SHADES_LENS, SHADES_GLARE = (20, 20, 20), (45, 50, 80), (170, 190, 230)
GLASSES_FRAME = (60, 45, 30)
GOLD, GOLD_DARK = (235, 195, 50), (160, 120, 20)
PAPER, EMBER, SMOKE = (245, 245, 235), (240, 90, 30), (200, 200, 205)


@dataclass(frozen=True)
class PunkTraits:
    """What one punk looks like; every field ends up in the caption."""

    gender: str
    skin: str
    background: str
    hair: str
    hair_colour: str  # colour of hair and facial hair
    hat_colour: str  # colour of a cap or beanie, if the hair style is one
    facial_hair: str | None
    eyewear: str | None
    earring: bool
    cigarette: bool
    lipstick: str | None
    variant: int  # seeds the irregular bits (wild hair), so drawing is a pure function of the traits


def sample_traits(rng: random.Random) -> PunkTraits:
    """Draws a random set of traits."""
    gender = rng.choice(("male", "female"))
    male = gender == "male"
    return PunkTraits(
        gender=gender,
        skin=rng.choices(list(SKINS), weights=_SKIN_WEIGHTS)[0],
        background=rng.choice(list(BACKGROUNDS)),
        hair=rng.choice(HAIR_STYLES),
        hair_colour=rng.choice(list(HAIR_COLOURS)),
        hat_colour=rng.choice(list(HAIR_COLOURS)),
        facial_hair=rng.choice((None, None, "mustache", "beard")) if male else None,
        eyewear=rng.choice((None, None, "sunglasses", "nerd glasses")),
        earring=rng.random() < 0.3,
        cigarette=rng.random() < 0.25,
        lipstick=None if male or rng.random() < 0.4 else rng.choice(list(LIPSTICKS)),
        variant=rng.randrange(1 << 16),
    )


def caption(traits: PunkTraits) -> str:
    """Returns the caption: the fixed prefix, then each drawn trait in a fixed order."""
    t = traits
    parts = [CAPTION_PREFIX, t.gender, f"{t.skin} skin", f"{t.background} background"]
    if t.hair == "bald":
        parts.append("bald")
    else:
        parts.append(f"{t.hat_colour if t.hair in HATS else t.hair_colour} {t.hair}")
    if t.facial_hair:
        parts.append(f"{t.hair_colour} {t.facial_hair}")
    if t.lipstick:
        parts.append(f"{t.lipstick} lipstick")
    parts += [t.eyewear] if t.eyewear else []
    parts += ["earring"] if t.earring else []
    parts += ["cigarette"] if t.cigarette else []
    return ", ".join(parts)


def _scale(colour: RGB, factor: float) -> RGB:
    return tuple(min(255, round(c * factor)) for c in colour)  # type: ignore[return-value]


def _fill(canvas: np.ndarray, pixels: set[tuple[int, int]], base: RGB) -> None:
    """Paints a region with a darker 1-px outline, shading on its right and bottom, and a top-left rim light."""

    # Off-canvas counts as inside, so a neck running off the bottom edge gets no outline there.
    def inside(x: int, y: int) -> bool:
        return (x, y) in pixels or not (0 <= x < SIZE and 0 <= y < SIZE)

    def edge(x: int, y: int) -> bool:
        return (x, y) in pixels and not all(
            inside(x + dx, y + dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
        )

    ys = [y for _, y in pixels]
    middle = (min(ys, default=0) + max(ys, default=0)) / 2
    for x, y in pixels:
        if edge(x, y):
            colour = _scale(base, 0.55)
        elif edge(x + 1, y):
            colour = _scale(base, 0.82)
        elif edge(x - 1, y - 1):
            colour = _scale(base, 1.12)
        else:  # light from above: the lower half a shade darker
            colour = base if y <= middle else _scale(base, 0.93)
        canvas[y, x] = colour


def _span(y: int, top: int, left: int, right: int) -> tuple[int, int] | None:
    """Returns the head's columns in row y: skull, face, jaw jutting forward, chin, then neck."""
    if y < top:
        return None
    if y == top:
        return left + 1, right - 1
    return {17: (left + 1, right), 18: (left + 2, right - 1), 19: (left + 2, right - 2)}.get(
        y, (left, right) if y < 17 else (10, 13)
    )


def _rect(x0: int, x1: int, y0: int, y1: int) -> set[tuple[int, int]]:
    return {(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}


def _hair_pixels(style: str, top: int, left: int, right: int, variant: int) -> set[tuple[int, int]]:
    """Returns the pixels a hair style or hat covers; drawn over the head."""
    if style == "short hair":
        return (
            _rect(left + 1, right - 1, top - 1, top - 1)
            | _rect(left, right, top, top + 1)
            | _rect(left, left + 1, top + 2, top + 4)
        )
    if style == "mohawk":
        return _rect(10, 12, 1, top + 1)
    if style == "long hair":
        return (
            _rect(left, right, top - 1, top + 1)
            | _rect(left - 1, left, top, 18)
            | _rect(right, right + 1, top, 18)
        )
    if style == "cap":
        return _rect(left, right, top - 1, top + 1) | _rect(left + 1, right + 3, top + 2, top + 2)
    if style == "beanie":
        return _rect(left + 2, right - 2, top - 3, top - 3) | _rect(left, right, top - 2, top + 1)
    if style == "wild hair":
        jitter = random.Random(variant)
        pixels = set()
        for y in range(2, 15):
            x0, x1 = left - 2 - jitter.randint(0, 1), right + 2 + jitter.randint(0, 1)
            if y <= top + 1:
                pixels |= _rect(x0 + (y == 2) * 3, x1 - (y == 2) * 3, y, y)
            else:  # around the face, not over it
                pixels |= _rect(x0, left - 1 + (y < 10), y, y) | _rect(right + 1 - (y < 10), x1, y, y)
        return pixels
    return set()


def draw_punk(traits: PunkTraits, style: str = "base", skin: RGB | None = None) -> Image.Image:
    """Draws the traits as a 24x24 opaque RGB image: a head and neck, no torso, in ``style``'s skin tones
    (or in ``skin``, one colour whatever the trait, which the tiny VAE's decoder trains on)."""
    t = traits
    top, left, right, ear = (5, 7, 16, 6) if t.gender == "male" else (6, 8, 15, 7)
    canvas = np.empty((SIZE, SIZE, 3), np.uint8)
    canvas[:] = BACKGROUNDS[t.background]
    skin = SKIN_TONES[style][t.skin] if skin is None else skin
    head = {(x, y) for y in range(SIZE) if (s := _span(y, top, left, right)) for x in range(s[0], s[1] + 1)}
    _fill(canvas, head | _rect(ear, ear, 10, 12), skin)
    canvas[20, 11:13] = _scale(skin, 0.7)  # shadow under the chin
    canvas[11, left] = canvas[13, 12] = _scale(skin, 0.82)  # inner ear, nose
    canvas[14, 12] = _scale(skin, 0.7)  # nostril
    canvas[10, [9, 10, 13, 14]] = _scale(skin, 0.6)  # brows
    canvas[11, [9, 13]], canvas[11, [10, 14]] = EYE_WHITE, PUPIL
    mouth = LIPSTICKS[t.lipstick] if t.lipstick else _scale(skin, 0.5)
    canvas[16, 10:14], canvas[16, 13] = mouth, _scale(mouth, 0.75)  # the far corner in shadow
    hair_rgb = HAIR_COLOURS[t.hair_colour]
    if t.facial_hair == "mustache":
        canvas[15, 10:14] = _scale(hair_rgb, 0.8)
    elif t.facial_hair == "beard":
        beard = {
            (x, y) for y in (17, 18, 19) if (s := _span(y, top, left, right)) for x in range(s[0], s[1] + 1)
        }
        _fill(canvas, beard | _rect(left, left + 1, 13, 16) | _rect(right - 1, right, 13, 16), hair_rgb)
    hair = _hair_pixels(t.hair, top, left, right, t.variant)
    _fill(canvas, hair, HAIR_COLOURS[t.hat_colour if t.hair in HATS else t.hair_colour])
    if t.eyewear == "sunglasses":
        canvas[10, left : right + 1] = SHADES_FRAME
        canvas[11, [9, 10, 13, 14]] = SHADES_LENS
        canvas[11, [9, 13]] = SHADES_GLARE
    elif t.eyewear == "nerd glasses":
        for x0 in (8, 12):  # a square rim around each eye
            canvas[[10, 12], x0 : x0 + 4] = GLASSES_FRAME
            canvas[11, [x0, x0 + 3]] = GLASSES_FRAME
    if t.earring:
        canvas[13, ear], canvas[14, ear] = GOLD, GOLD_DARK
    if t.cigarette:
        canvas[16, 14:19], canvas[16, 19] = PAPER, EMBER
        canvas[[15, 13, 12], [19, 20, 19]] = SMOKE
    return Image.fromarray(canvas, "RGB")


def demo_traits(index: int, seed: int = 0) -> PunkTraits:
    """The traits of punk ``index`` of the demo set of ``seed``; it depends on nothing else."""
    return sample_traits(random.Random(seed * 1_000_003 + index))


def write_demo_dataset(out: str | Path, count: int = 48, seed: int = 0, style: str = "base") -> Path:
    """Writes ``punk_000.png`` + ``punk_000.txt`` ... into a new folder.

    Image i depends only on (seed, i), so a smaller set is a prefix of a larger one, and the two styles
    of one seed draw the same punks with the same captions.

    Args:
        out: Folder to create; it must not exist or be empty.
        count: Number of image/caption pairs.
        seed: Seed for the traits; the same seed gives byte-identical files.
        style: ``base`` or ``neon`` skin tones.

    Raises:
        FileExistsError: ``out`` is not empty.
    """
    with atomic_folder(out) as tmp:
        for i in range(count):
            traits = demo_traits(i, seed)
            draw_punk(traits, style).save(tmp / f"punk_{i:03d}.png", format="PNG")
            (tmp / f"punk_{i:03d}.txt").write_text(caption(traits) + "\n", encoding="utf-8")
    log.info("Wrote %d %s-style demo punks to %s", count, style, out)
    return Path(out)
