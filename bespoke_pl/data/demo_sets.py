"""The named demo sets: ``"demo:punks"`` (neon, the demo's training set) and ``"demo:base-punks"``
wherever a data folder is expected, written once (seed 0) into the cache and reused."""

from pathlib import Path

from bespoke_pl.data.demo import write_demo_dataset
from bespoke_pl.files import cache_root, spec_name

DEMO_PREFIX = "demo:"


def demo_dataset_path(cache_dir: str | Path | None = None, count: int = 48, style: str = "neon") -> Path:
    """Returns the cached demo set ``<cache>/demo-punks-<style>-<count>``, writing it (seed 0) if missing.

    Args:
        cache_dir: Cache folder; defaults to $BESPOKE_PL_CACHE, else ~/.cache/bespoke_pl.
        count: Number of image/caption pairs.
        style: ``neon`` (the demo's training set) or ``base``.
    """
    path = cache_root(cache_dir) / f"demo-punks-{style}-{count}"
    if not (path.is_dir() and any(path.iterdir())):
        try:
            write_demo_dataset(path, count=count, style=style)
        except FileExistsError:
            # Another process finished first; its folder is complete because it was renamed into place.
            if not any(path.iterdir()):
                raise
    return path


DEMO_SETS = {"punks": "neon", "base-punks": "base"}


def resolve_demo(spec: str) -> str | None:
    """Returns the local folder for ``"demo:punks"`` (neon) or ``"demo:base-punks"``, None for other specs.

    Raises:
        ValueError: The spec starts with ``"demo:"`` but names no known data set.
    """
    name = spec_name(spec, DEMO_PREFIX, DEMO_SETS, "demo data set")
    return None if name is None else str(demo_dataset_path(style=DEMO_SETS[name]))
