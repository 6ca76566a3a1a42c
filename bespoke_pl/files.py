"""Where the project keeps generated files, and the one way it writes a file: atomically.

Every file bespoke_pl writes (LoRA files, checkpoints, reports, generated models and data sets) is
written beside its target under a temporary name and renamed into place, so a crash, a kill or a full
disk leaves either the earlier file or none, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root(override: str | Path | None = None) -> Path:
    """Returns the folder for generated models and data: override, $BESPOKE_PL_CACHE, or ~/.cache/bespoke_pl."""
    if override is not None:
        return Path(override)
    env = os.environ.get("BESPOKE_PL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bespoke_pl"


def spec_name(spec: str, prefix: str, names: Iterable[str], kind: str) -> str | None:
    """The name of a ``prefix:name`` spec (``tiny:sdxl``, ``demo:punks``...), or None for a spec without it.

    Args:
        spec: What the user gave (a spec, a path or a hub id).
        prefix: ``"tiny:"``, ``"tiny-punks:"``, ``"demo:"``.
        names: The valid names after the prefix.
        kind: What the specs name, for the message (``"tiny model"``).

    Raises:
        ValueError: The spec has the prefix but none of the names; the message lists the valid specs.
    """
    if not spec.startswith(prefix):
        return None
    name, names = spec.removeprefix(prefix), list(names)
    if name not in names:
        raise ValueError(f"unknown {kind} {spec!r}; valid: {', '.join(prefix + n for n in names)}")
    return name


def is_free_folder(path: Path) -> bool:
    """Whether a folder may be created at ``path``: nothing there, or an empty folder."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``.

    A failure anywhere (including in ``write``) removes the temporary file and leaves any earlier file at
    ``path`` untouched. The file gets the permissions the user's umask gives a new file (not mkstemp's
    0600), since other tools and users read these files.

    Args:
        path: The file to write.
        write: Writes the content to the path it is given (it may replace the file there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling of ``out`` to fill, renamed to ``out`` when the block succeeds.

    A killed or failing build leaves no half-written ``out`` behind, and a reader never sees one.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder, before or after building.
    """
    out = Path(out)
    if not is_free_folder(out):
        raise FileExistsError(f"refusing to overwrite non-empty {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        try:
            # rename(2) replaces an empty folder atomically and fails on a non-empty one.
            os.rename(tmp, out)
        except OSError as err:
            if out.exists():
                raise FileExistsError(f"refusing to overwrite non-empty {out}") from err
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
