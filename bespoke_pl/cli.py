"""The command line: LightningCLI for ``fit`` (and friends) plus project commands such as ``tiny``.

``main(args=None)`` takes an argument list so tests run the real CLI in-process.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from bespoke_pl.callbacks import SampleImages, SaveLoRAEveryEpoch
from bespoke_pl.data import PixelArtDataModule
from bespoke_pl.module import PixelLoRAModule
from bespoke_pl.roundtrip import RoundTripCheck

log = logging.getLogger("bespoke_pl")

TRAINER_DEFAULTS = {
    "max_epochs": 3,
    "precision": None,  # chosen per device in before_instantiate_classes
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "bespoke"},
    },
}


def default_precision(accelerator: str | None) -> str:
    """A precision that is safe on the device: bf16 (else fp16) mixed on CUDA, fp32 on MPS and CPU."""
    wants_cuda = accelerator in ("cuda", "gpu") or (
        accelerator in (None, "auto") and torch.cuda.is_available()
    )
    if wants_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def find_last_checkpoint(save_dir: Path, name: str) -> Path | None:
    """The newest ``last.ckpt`` among the runs ``save_dir/name/version_*``."""
    candidates = sorted((save_dir / name).glob("*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


class BespokeCLI(LightningCLI):
    """``fit`` with the project's callbacks as first-class sections (``--save_lora.*``, ``--sample.*``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SaveLoRAEveryEpoch, "save_lora")
        parser.add_lightning_class_args(SampleImages, "sample")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(RoundTripCheck, "roundtrip")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:04d}-step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
                "lr_monitor.logging_interval": "step",
            }
        )
        # The art's side is a data fact; the model needs it for SDXL's size ids and the sample size.
        parser.link_arguments("data.resolution", "model.resolution")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.precision is None:
            trainer.precision = default_precision(trainer.accelerator)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            self._resume_last(config)

    def _resume_last(self, config) -> None:
        """Make ``--ckpt_path last`` find the newest run's checkpoint and continue in that run's folder.

        Lightning alone looks only in the new run's (empty) version folder and would start from scratch.
        """
        logger = config.trainer.logger
        init = logger.init_args if logger and hasattr(logger, "init_args") else None
        if init is None:
            return
        found = find_last_checkpoint(Path(init.save_dir), init.name or "")
        if found is None:
            log.warning(
                "--ckpt_path last: no checkpoint under %s/%s; starting a new run", init.save_dir, init.name
            )
            config.ckpt_path = None
            return
        init.version = found.parent.parent.name
        config.ckpt_path = str(found)
        log.info("resuming %s in %s", found, found.parent.parent)


def tiny_command(argv: list[str]) -> None:
    """Write tiny offline SD-shaped models (``python -m bespoke_pl tiny --family sdxl --out DIR``)."""
    from jsonargparse import CLI

    from bespoke_pl.tiny import write_tiny_model

    def tiny(family: Literal["sd15", "sdxl"] = "sdxl", out: str | None = None, seed: int = 0) -> None:
        """Write a tiny SD 1.5- or SDXL-shaped diffusers folder with random weights.

        Args:
            family: Which architecture to mimic.
            out: Output folder (must not exist or be empty); default ``./tiny-<family>``.
            seed: Seed of the random weights.
        """
        path = write_tiny_model(family, out or f"tiny-{family}", seed=seed)
        print(f"wrote tiny {family} model to {path}")

    CLI(tiny, args=argv)


def generate_command(argv: list[str]) -> None:
    """Generate 24x24 images with a LoRA file (``python -m bespoke_pl generate --help``)."""
    from jsonargparse import CLI

    from bespoke_pl.generate import generate_images

    written = CLI(generate_images, args=argv, as_positional=False)
    print(f"wrote {len(written) - 1} images and the preview sheet {written[-1]}")


def evaluate_command(argv: list[str]) -> None:
    """Measure generated images against the training folder (``python -m bespoke_pl evaluate --help``)."""
    from jsonargparse import CLI

    from bespoke_pl.evaluate import evaluate

    print(CLI(evaluate, args=argv, as_positional=False))


def join_list_values(argv: list[str], flag: str) -> list[str]:
    """Let ``--scales 1 8 16`` mean ``--scales [1,8,16]`` (jsonargparse takes one value per flag)."""
    if flag not in argv:
        return argv
    start = argv.index(flag) + 1
    end = start
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    if end - start <= 1:
        return argv
    return argv[:start] + [f"[{','.join(argv[start:end])}]"] + argv[end:]


def roundtrip_command(argv: list[str]) -> None:
    """VAE round trip of the training set at several pixel scales (``python -m bespoke_pl roundtrip --help``)."""
    from jsonargparse import CLI

    from bespoke_pl.roundtrip import roundtrip

    results = CLI(roundtrip, args=join_list_values(argv, "--scales"), as_positional=False)
    print("\n".join(result.line() for result in results))


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "tiny": tiny_command,
    "generate": generate_command,
    "evaluate": evaluate_command,
    "roundtrip": roundtrip_command,
}


def main(args: list[str] | None = None) -> BespokeCLI | None:
    argv = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The frozen base stays in eval mode on purpose (no dropout/norm updates); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
        return None
    if not argv or argv[0] in ("-h", "--help"):
        print("extra commands: " + ", ".join(f"{name} (see '{name} --help')" for name in COMMANDS))
    return BespokeCLI(
        PixelLoRAModule,
        PixelArtDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=42,
        args=argv,
        parser_kwargs={"default_env": False},
    )
