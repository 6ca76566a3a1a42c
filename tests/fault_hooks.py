"""Test helpers: a callback that makes a real run fail at a chosen step (``--trainer.callbacks+``), and
the arguments of a small ``fit``."""

import os
import signal
from pathlib import Path

import lightning as L


class FaultAtStep(L.Callback):
    """At the end of global step ``step`` of a run that is not resuming: SIGKILL / SIGTERM / SIGINT this
    process, or raise (a crash that, like a kill, leaves only the files on disk).

    Args:
        step: Global step after which the fault happens.
        fault: ``kill``, ``term``, ``int`` or ``raise``.
    """

    def __init__(self, step: int, fault: str = "kill") -> None:
        self.step, self.fault = step, fault

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or trainer.ckpt_path is not None:
            return
        if self.fault == "raise":
            raise RuntimeError(f"injected crash at step {self.step}")
        signum = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[self.fault]
        os.kill(os.getpid(), signum)


def fit_args(base: Path, data: Path, logs: Path, *extra: str, epochs: int = 3) -> list[str]:
    """A small, fast ``fit`` command: tiny model, literal 24x24 (k=1), 4 steps per epoch, no sampling."""
    return [
        "fit",
        f"--model.base_model={base}",
        "--model.pixel_scale=1",
        "--model.rank=2",
        "--model.optimizer.lr=0.01",
        f"--data.root={data}",
        "--data.batch_size=4",
        f"--trainer.max_epochs={epochs}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--sample.every_n_epochs=0",
        *extra,
    ]
