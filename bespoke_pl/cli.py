"""The command line: LightningCLI for ``fit`` (and friends) plus project commands such as ``tiny``.

``main(args=None)`` takes an argument list so tests run the real CLI in-process.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bespoke_pl.base import BaseModelError
from bespoke_pl.callbacks import SampleImages, SaveLoRAEveryEpoch
from bespoke_pl.checks import caption_tokenizer
from bespoke_pl.data import DatasetError, PixelArtDataModule
from bespoke_pl.devices import default_precision
from bespoke_pl.faults import AtomicCheckpointIO, OutputError, RunInterrupted, SafeStop
from bespoke_pl.module import PixelLoRAModule
from bespoke_pl.preflight import ConfigError, check_base, check_options, check_run_folder
from bespoke_pl.resume import ExactResume, RunCheckpoint
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


def find_last_checkpoint(save_dir: Path, name: str) -> Path | None:
    """The newest ``last.ckpt`` among the runs ``save_dir/name/version_*``."""
    # is_file: a save_last="link" symlink whose target is gone does not count
    candidates = [p for p in (save_dir / name).glob("*/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def one_line(message: str) -> str:
    """A parser message on one line, with ``<class 'int'>`` written ``int``."""
    return re.sub(r"<class '([\w.]+)'>", r"\1", " ".join(part.strip() for part in message.splitlines()))


class OneLineErrorParser(LightningArgumentParser):
    """Unknown keys and wrong types as one ``error:`` line, not a usage listing of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.split()[-1] if " " in parser.prog else ""
        help_command = " ".join(["python -m bespoke_pl", command, "--help"]).replace("  ", " ")
        sys.stderr.write(f"error: {one_line(message)} (options: {help_command})\n")
        self.exit(2)


class BespokeCLI(LightningCLI):
    """``fit`` with the project's callbacks as first-class sections (``--save_lora.*``, ``--sample.*``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SaveLoRAEveryEpoch, "save_lora")
        parser.add_lightning_class_args(SampleImages, "sample")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
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
        if self.subcommand == "fit":
            check_options(config)
            if config.get("ckpt_path") == "last":
                self._resume_last(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # a class refused its arguments: a configuration mistake
            if isinstance(error, (DatasetError, BaseModelError)):
                raise
            raise ConfigError(str(error)) from error

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Fresh instances per run, placed before the checkpoint callbacks (Lightning orders those last only
        # at Trainer init): checkpoints, SafeStop's too, must hold ExactResume's updated state.
        first = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)), None)
        at = len(trainer.callbacks) if first is None else first
        trainer.callbacks[at:at] = [ExactResume(), SafeStop()]
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        """Everything that can be checked without the model's weights, before they are loaded."""
        model = self.model.hparams
        if isinstance(self.datamodule, PixelArtDataModule):
            self.datamodule.load(caption_tokenizer(model.base_model, model.base_config))
        check_base(model.base_model, model.family)
        check_run_folder(Path(self.trainer.log_dir), resuming=self.config.fit.get("ckpt_path") is not None)

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


def pretrain_command(argv: list[str]) -> None:
    """Pretrain a tiny punk base (``python -m bespoke_pl pretrain-tiny --help``)."""
    from jsonargparse import CLI

    from bespoke_pl.pretrain import pretrain_command as pretrain

    print(CLI(pretrain, args=argv, as_positional=False))


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


def check_data_command(argv: list[str]) -> None:
    """Check a training folder without training (``python -m bespoke_pl check-data DIR``)."""
    from jsonargparse import CLI

    from bespoke_pl.checks import scan_folder
    from bespoke_pl.data import parse_colour

    def check_data(
        root: str,
        resolution: int = 24,
        caption_extension: str = ".txt",
        background: str | None = None,
        default_caption: str | None = None,
        base_model: str | None = None,
        base_config: str | None = None,
        top_tags: int = 15,
    ) -> None:
        """Print every problem of a training folder and a summary of the set; exit status 2 on errors.

        The rules are the ones ``fit`` applies before loading the model; the options mean what the
        ``data.*`` options of ``fit`` mean.

        Args:
            root: The training folder (``demo:punks`` for the demo set).
            resolution: The only accepted image side.
            caption_extension: Suffix of the caption files.
            background: Colour composited under transparent pixels (``#rrggbb``); unset refuses them.
            default_caption: Caption for images without one; unset refuses them.
            base_model: Measure captions with this base model's tokenizer (when it is on disk); unset:
                a CLIP-like estimate.
            base_config: For a single-file base model: the diffusers folder or hub id with its tokenizer.
            top_tags: How many of the most frequent caption tags to list.
        """
        try:
            colour = parse_colour(background) if background else None
        except ValueError as error:
            raise ConfigError(str(error)) from error
        folder = PixelArtDataModule(root).root_path
        scan = scan_folder(
            folder,
            resolution,
            caption_extension,
            colour,
            default_caption,
            caption_tokenizer(base_model, base_config),
        )
        print(scan.report.format(max_items=None))
        print(scan.report.summary(top_tags))
        if scan.report.errors:
            raise SystemExit(2)

    CLI(check_data, args=argv)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "tiny": tiny_command,
    "pretrain-tiny": pretrain_command,
    "generate": generate_command,
    "evaluate": evaluate_command,
    "roundtrip": roundtrip_command,
    "check-data": check_data_command,
}
CONFIG_ERRORS = (DatasetError, BaseModelError, ConfigError, MisconfigurationException)
RUN_FAULTS = (FloatingPointError, OutputError)


def _fail(prefix: str, error: BaseException, code: int) -> None:
    message = str(error) if isinstance(error, DatasetError) else one_line(str(error))
    sys.stderr.write(f"{prefix}: {message}\n")
    if getattr(error, "kept", None):
        sys.stderr.write(f"{error.kept}\n")
    raise SystemExit(code) from error


def main(args: list[str] | None = None) -> BespokeCLI | None:
    """Run a command; known mistakes and faults end in a short message and an exit status, not a traceback.

    Exit status 2: bad configuration or data (nothing was trained). 1: the run failed (NaN loss, a file
    that could not be written). 130/143: stopped by SIGINT/SIGTERM after saving a checkpoint.
    """
    argv = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The frozen base stays in eval mode on purpose (no dropout/norm updates); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    try:
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
            args=None if args is None else argv,  # None reads sys.argv (LightningCLI warns when given both)
            parser_kwargs={"default_env": False, "prog": "python -m bespoke_pl"},
            parser_class=OneLineErrorParser,
        )
    except CONFIG_ERRORS as error:
        _fail("error", error, 2)
    except RunInterrupted as error:
        _fail("stopped", error, error.exit_code)
    except RUN_FAULTS as error:
        _fail("error", error, 1)
    return None
