"""How exactly does a snap recover 24x24 art from what generators and files make of it?

The project's own art (demo punks, neon style, seed 0, and procedural base-style punks, seed 1), through the
pretrained tiny VAE (tiny-punks:sdxl) at several k, and through the degradations of
:mod:`bespoke_pl.pixelart.degrade` (blur, noise, colour shift, JPEG, shifted and non-integer grids). Each
method gets the training palette; the table gives % pixels exact / % images exact against the original art:

- ``bespoke_pl snap``: :func:`bespoke_pl.pixelart.snap.snap_image`, grid found (no size or scale given);
- ``snap, grid known``: the same snap told the grid (k = side / 24), as the trainer's samples, ``generate``
  and the round trip call it;
- ``today's lock``: the code before the snap command, kept here as the baseline: integer k x k blocks
  (``reduce_blocks``) then the nearest palette colour in OKLab; it refuses sides that are no multiple of 24;
- the PyPI tools of ``benchmarks/snap_peers.py`` (``pip install -e .[bench]``), skipped with a note if absent.

``--spaces`` compares the colour distances of the lock instead (same reduction, one lock per space).

    python benchmarks/snap.py                      # full table: 48 images, every set, every peer
    python benchmarks/snap.py --spaces             # colour distances
    python benchmarks/snap.py --images 4 --sets blur,1024px --peers none   # seconds
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from snap_peers import PEERS, available, peer_art  # noqa: E402

from bespoke_pl.data.demo import demo_traits, draw_punk  # noqa: E402
from bespoke_pl.pixelart.colour import SPACES, lock_to_palette  # noqa: E402
from bespoke_pl.pixelart.degrade import DEGRADATIONS  # noqa: E402
from bespoke_pl.pixelart.find_grid import NoGridError, find_grid  # noqa: E402
from bespoke_pl.pixelart.grid import reduce_blocks, to_model_range, to_uint8, upscale_nearest  # noqa: E402
from bespoke_pl.pixelart.palette import nearest_in_palette, palette_of  # noqa: E402
from bespoke_pl.pixelart.snap import reduce_cells, snap_image, to_art  # noqa: E402

VAE_SCALES = (4, 8, 16)
BASELINE = "today's lock"
OURS = "bespoke_pl snap"
KNOWN = "snap, grid known"  # the trainer's path (to_art at its own k): integer sides only


def project_art(count: int) -> torch.Tensor:
    """``count`` punks, half demo (neon, seed 0), half procedural base-style (seed 1): uint8 (N, 3, 24, 24)."""
    half = (count + 1) // 2
    images = [draw_punk(demo_traits(i, 0), "neon") for i in range(half)]
    images += [draw_punk(demo_traits(i, 1), "base") for i in range(count - half)]
    return torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images])


@torch.no_grad()
def vae_round_trip(art: torch.Tensor, k: int) -> torch.Tensor:
    """The art nearest-upscaled by k, through the tiny pretrained SDXL VAE (posterior mean), decoded."""
    from bespoke_pl.commands.roundtrip import load_vae

    vae = load_vae("tiny-punks:sdxl")
    out = []
    for start in range(0, len(art), 8):
        x = to_model_range(upscale_nearest(art[start : start + 8], k))
        out.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample))
    return torch.cat(out)


def todays_lock(image: torch.Tensor, palette: torch.Tensor) -> torch.Tensor | None:
    """The old path: integer blocks and the OKLab lock; None where the side is no multiple of 24."""
    side = image.shape[-1]
    if side % 24 or image.shape[-2] != side:
        return None
    reduced = reduce_blocks(image[None], side // 24)
    index, _ = nearest_in_palette(reduced, palette)
    return palette[index].permute(0, 3, 1, 2)[0]


def method_art(method: str, image: torch.Tensor, palette: torch.Tensor) -> torch.Tensor | None:
    """One method's 24x24 art of one image, or None where it refuses or fails."""
    if method == OURS:
        try:
            return snap_image(image, palette).art
        except NoGridError:
            return None
    if method == BASELINE:
        return todays_lock(image, palette)
    if method == KNOWN:
        side = image.shape[-1]
        return to_art(image[None], side // 24, palette)[1][0] if side % 24 == 0 else None
    return peer_art(method, image, image.shape[-1] / 24, palette)


def score(results: list[torch.Tensor | None], art: torch.Tensor) -> tuple[float, float]:
    """% pixels exact and % images exact; a refused image counts as all wrong."""
    same = [
        (r == a).all(0) if r is not None else torch.zeros(a.shape[1:], dtype=torch.bool)
        for r, a in zip(results, art, strict=True)
    ]
    stack = torch.stack(same)
    return 100 * stack.float().mean().item(), 100 * stack.flatten(1).all(1).float().mean().item()


def degraded_sets(art: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """name -> degraded images, in the order asked; ``vae k=8`` names a VAE round trip."""
    sets = {}
    for name in names:
        if name.startswith("vae k="):
            sets[name] = vae_round_trip(art, int(name.split("=")[1]))
        else:
            sets[name] = DEGRADATIONS[name](art, 0)
    return sets


def compare_methods(
    sets: dict[str, torch.Tensor], art: torch.Tensor, palette: torch.Tensor, peers: list[str]
) -> None:
    methods = [OURS, KNOWN, BASELINE, *peers]
    print("| images | " + " | ".join(methods) + " |")
    print("| --- |" + " --- |" * len(methods))
    for name, images in sets.items():
        cells = []
        for method in methods:
            started = time.perf_counter()
            pixels, whole = score([method_art(method, im, palette) for im in images], art)
            logging.info("%s / %s: %.1f s", name, method, time.perf_counter() - started)
            refused = method in (BASELINE, KNOWN) and images.shape[-1] % 24 != 0
            cells.append("refused (no multiple of 24)" if refused else f"{pixels:.2f} / {whole:.0f}")
        print(f"| {name} ({images.shape[-1]} px) | " + " | ".join(cells) + " |", flush=True)


def compare_spaces(sets: dict[str, torch.Tensor], art: torch.Tensor, palette: torch.Tensor) -> None:
    print("| images | " + " | ".join(SPACES) + " |")
    print("| --- |" + " --- |" * len(SPACES))
    for name, images in sets.items():
        reduced = []
        for image in images:
            try:
                reduced.append(reduce_cells(image[None], find_grid(image)))
            except NoGridError:
                reduced.append(None)
        cells = []
        for space in SPACES:
            locked = [lock_to_palette(r, palette, space)[0] if r is not None else None for r in reduced]
            pixels, whole = score(locked, art)
            cells.append(f"{pixels:.2f} / {whole:.0f}")
        print(f"| {name} ({images.shape[-1]} px) | " + " | ".join(cells) + " |", flush=True)


def near_black(palette: torch.Tensor) -> None:
    """Where noise-lifted black lands in each space, against the issue's example (#1c1a00 brown)."""
    palette = torch.cat([palette, torch.tensor([[0, 0, 0], [28, 26, 0]], dtype=torch.uint8)]).unique(dim=0)
    pixel = torch.tensor([8, 8, 8], dtype=torch.uint8).view(1, 3, 1, 1)
    found = {
        s: "#{:02x}{:02x}{:02x}".format(*tuple(lock_to_palette(pixel, palette, s).flatten().tolist()))
        for s in SPACES
    }
    print("(8, 8, 8) locks to: " + ", ".join(f"{s} {c}" for s, c in found.items()))


def figure(path: str, art: torch.Tensor, palette: torch.Tensor) -> None:
    """One punk as another tool might hand it over (1024 px, blurred, noised, colour-cast, JPEG) beside
    its snapped 24x24 art, both shown at 1024 px."""
    from PIL import Image

    from bespoke_pl.pixelart.degrade import add_noise, colour_shift, gaussian_blur, jpeg, resize_nearest

    source = art[3:4]
    image = jpeg(colour_shift(add_noise(gaussian_blur(resize_nearest(source, 1024), 2.0), 6.0), 4), 75)
    snapped = snap_image(image[0], palette).art
    exact = bool((snapped == source[0]).all())
    print(f"{path}: the snapped art is {'exactly' if exact else 'NOT'} the original")
    shown = resize_nearest(snapped[None], 1024)[0]
    canvas = torch.full((3, 1024, 2 * 1024 + 32), 255, dtype=torch.uint8)
    canvas[:, :, :1024], canvas[:, :, 1024 + 32 :] = image[0], shown
    Image.fromarray(canvas.permute(1, 2, 0).numpy(), "RGB").save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=48, help="punks in the set (half demo, half procedural)"
    )
    everything = [f"vae k={k}" for k in VAE_SCALES] + list(DEGRADATIONS)
    parser.add_argument(
        "--sets", default="all", help=f"comma-separated, spaces dropped: {', '.join(everything)}"
    )
    parser.add_argument("--peers", default="all", help="comma-separated PyPI tools, 'all' or 'none'")
    parser.add_argument("--spaces", action="store_true", help="compare the lock's colour distances instead")
    parser.add_argument("--figure", help="write docs/snap-1024.png's picture to this file instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("unfake").setLevel(logging.ERROR)
    logging.getLogger("unfake.py").setLevel(logging.ERROR)
    wanted = {s.strip().replace(" ", "") for s in args.sets.split(",")}
    names = [n for n in everything if args.sets == "all" or n.replace(" ", "") in wanted]
    art = project_art(args.images)
    palette = palette_of(art)
    if args.figure:
        figure(args.figure, art, palette)
        return
    print(f"{len(art)} punks, {len(palette)} palette colours; % pixels exact / % images exact\n")
    sets = degraded_sets(art, names)
    if args.spaces:
        near_black(palette)
        compare_spaces(sets, art, palette)
        return
    installed = available()
    asked = list(PEERS) if args.peers == "all" else [p for p in args.peers.split(",") if p and p != "none"]
    for name in asked:
        if name not in installed:
            print(f"note: {name} is not installed (pip install -e .[bench]); skipped")
    compare_methods(sets, art, palette, [p for p in asked if p in installed])


if __name__ == "__main__":
    main()
