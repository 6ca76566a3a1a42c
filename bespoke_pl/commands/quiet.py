"""Silence, at the source, the messages a user of bespoke_pl cannot act on, so that what matters is seen.

Each filter names one message and why it does not apply here; everything else still gets through.
"""

from __future__ import annotations

import logging
import warnings

# (logger, text): log records that are noise for this project's users.
_NOISE = (
    # Lightning advertises its cloud loggers on every run.
    ("lightning.pytorch", "💡 Tip"),
    ("lightning.fabric", "💡 Tip"),
    # diffusers builds pipelines with optional image processors (safety checker, IP-adapter) that we never
    # use; without torchvision transformers says it falls back to PIL, twice per pipeline.
    ("transformers", "requires torchvision"),
)


class _DropMessages(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_known_noise() -> None:
    """Install the filters (once per logger and handler, however often it is called)."""
    # Imported first: its logger's handler, which the filters below attach to, is made on import.
    from transformers.utils import logging as transformers_logging

    for name, text in _NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.text == text for f in logger.filters):
            logger.addFilter(_DropMessages(text))
        for handler in logger.handlers:  # records of child loggers reach these handlers, not the filter
            if not any(isinstance(f, _DropMessages) and f.text == text for f in handler.filters):
                handler.addFilter(_DropMessages(text))
    # The frozen base stays in eval mode on purpose (no dropout/norm updates); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    # On resume the run's checkpoint folder holds the earlier checkpoints by design; a new run is refused
    # such a folder before this point (check_run_folder), so the warning never tells a user anything.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # torch deprecates a pytree check that Lightning's own loops still call; nothing for a user to change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The per-file "Loading weights" bars of every from_pretrained: dozens of lines per run.
    transformers_logging.disable_progress_bar()
