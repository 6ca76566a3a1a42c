"""How every subcommand ends on a known mistake or fault: one line on stderr and an exit status.

Exit status 2: the user's mistake (configuration, data, input file; nothing was trained or written). 1: the
run failed (NaN loss, a file that could not be written). 130 / 143: stopped by a signal after saving.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import traceback
from typing import NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException

from bespoke_pl.commands.parsing import one_line
from bespoke_pl.errors import (
    BaseModelError,
    ConfigError,
    DatasetError,
    LoRAFileError,
    OutputError,
)

log = logging.getLogger("bespoke_pl")

# The user's mistakes (exit status 2) and the run's failures (1), for every subcommand. Nothing broader:
# any other exception is a bug and keeps its traceback.
CONFIG_ERRORS = (DatasetError, BaseModelError, ConfigError, LoRAFileError, MisconfigurationException)
RUN_FAULTS = (FloatingPointError, OutputError)
# A full disk or quota, a read-only file system, no permission, an I/O error: faults of the machine, not bugs.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
DEBUG_FLAG = "--debug"
DEBUG_ENV = "BESPOKE_PL_DEBUG"


def written_file(error: OSError) -> str:
    if error.filename:
        return str(error.filename)
    frames = traceback.extract_tb(error.__traceback__)
    if any("tensorboard" in frame.filename for frame in frames):
        return "the TensorBoard event file"
    return "a file of the run"


def quiet_tensorboard_thread(args) -> None:
    """TensorBoard writes its event file on a thread; a write that fails there fails again, with the same
    error, on the main thread's next write, which reports it in one line: no thread traceback too."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        log.debug("TensorBoard's writer thread stopped: %s", args.exc_value)
        return
    _THREAD_HOOK(args)


_THREAD_HOOK = threading.excepthook


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(prefix: str, error: BaseException, code: int, debug: bool = False) -> NoReturn:
    """One line (a data report: one line per problem) on stderr, and exit with ``code``.

    Args:
        prefix: ``error`` or ``stopped``.
        error: The project's exception; its message names the file or option.
        code: The exit status.
        debug: Re-raise ``error`` with its whole traceback instead (``--debug``, ``BESPOKE_PL_DEBUG=1``).
    """
    if debug:
        raise error
    message = str(error) if isinstance(error, DatasetError) else one_line(str(error))
    sys.stderr.write(f"{prefix}: {message}\n")
    if getattr(error, "kept", None):
        sys.stderr.write(f"{error.kept}\n")
    raise SystemExit(code) from error
