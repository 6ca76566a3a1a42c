"""The project's own exceptions. Each names the file or option at fault in its message; the command line
turns them into one line on stderr and an exit status (2: bad configuration or data, nothing was trained;
1: the run failed; 130 / 143: stopped by SIGINT / SIGTERM after saving a checkpoint).
"""

from __future__ import annotations

import signal

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's 128 + signal number


class DatasetError(ValueError):
    """A training folder that cannot be used as it is; the message lists every offending file."""


class BaseModelError(ValueError):
    """The base model cannot be used as configured (missing, wrong family, unreadable)."""


class ConfigError(ValueError):
    """A configuration or command line that cannot work as written; the message names the options.

    This includes a file an option names that is missing or unreadable, and an output that would replace
    something that is not the command's own.
    """


class LoRAFileError(ValueError):
    """A LoRA file that cannot be used: not safetensors, not a LoRA, another model family, or a misfit."""


class OutputError(RuntimeError):
    """A file of the run could not be written; the message says what was kept instead."""


class RunInterrupted(Exception):
    """The run stopped on a signal after saving a resumable checkpoint.

    Not a KeyboardInterrupt: Lightning turns those into ``sys.exit(1)`` without a message.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = SIGNAL_EXIT.get(signum, 1)
