"""The command line: LightningCLI for ``fit`` and the dispatch to the other subcommands' modules.

``main(args=None)`` takes an argument list so tests run the real CLI in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from bespoke_pl.callbacks.resume import RunCheckpoint
from bespoke_pl.callbacks.roundtrip import RoundTripCheck
from bespoke_pl.callbacks.run_folder import check_run_folder
from bespoke_pl.callbacks.samples import SampleImages
from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.commands.quiet import quiet_known_noise
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.diffusion.devices import default_precision
from bespoke_pl.errors import BaseModelError, ConfigError, DatasetError, OutputError, RunInterrupted
from bespoke_pl.training.module import PixelLoRAModule
from bespoke_pl.training.preflight import check_base, check_options

log = logging.getLogger("bespoke_pl")

TRAINER_DEFAULTS = {
    "max_epochs": 3,
    "precision": None,  # chosen per device in before_instantiate_classes
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # default_hp_metric: Lightning's placeholder hp_metric = -1 means nothing in this project.
        "init_args": {"save_dir": "logs", "name": "bespoke", "default_hp_metric": False},
    },
}


def find_last_checkpoint(save_dir: Path, name: str) -> Path | None:
    """The newest ``last.ckpt`` among the runs ``save_dir/name/version_*``."""
    # is_file: a save_last="link" symlink whose target is gone does not count
    candidates = [p for p in (save_dir / name).glob("*/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def completed_epochs(checkpoint: Path) -> int | None:
    """How many whole epochs a run's checkpoint holds (from ExactResume's state), or None if unknown."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True).get("callbacks", {})
    except Exception:  # unreadable: let Lightning's own loading report it
        return None
    resume = state.get("ExactResume", {})
    return resume["epoch"] if resume.get("batches_done") == 0 and "epoch" in resume else None


class KeepEveryConfig(SaveConfigCallback):
    """``config.yaml`` for a run's first invocation, ``config-resume-1.yaml``, ``-2`` ... for each resume
    (Lightning's own overwrites the first run's settings with the resumed command's)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank
        n = 0
        while (folder / self.config_filename).exists():
            n += 1
            self.config_filename = f"config-resume-{n}.yaml"
        super().setup(trainer, pl_module, stage)


def one_line(message: str) -> str:
    """A parser message on one line, with ``<class 'int'>`` written ``int``."""
    return re.sub(r"<class '([\w.]+)'>", r"\1", " ".join(part.strip() for part in message.splitlines()))


def _tokenizer_source(base_config: str | None, base_model: str) -> str:
    return base_config or base_model


DESCRIPTION = "bespoke_pl: LoRA training of SDXL and SD 1.5 on 24x24 pixel-art portraits"
SECTIONS = {
    "save_lora": SaveLoRAEveryEpoch,
    "sample": SampleImages,
    "checkpoint": RunCheckpoint,
    "roundtrip": RoundTripCheck,
    "lr_monitor": LearningRateMonitor,
}
HELP_SECTIONS = ("model", "data", *SECTIONS, "trainer")
FIT_USAGE = (
    "python -m bespoke_pl fit [--config FILE] [--SECTION.OPTION VALUE ...]\n"
    f"       sections: {', '.join(HELP_SECTIONS)}; one section's options: fit --SECTION.help"
)


def section_help(full_help: str, section: str) -> str:
    """The part of ``fit --help`` that documents ``--section.*``: its heading and its options."""
    lines = full_help.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  --{section} CONFIG"))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines)
    )
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(
        [f"usage: python -m bespoke_pl fit --{section}.OPTION VALUE ...", "", *lines[start - 1 : end]]
    )


class OneLineErrorParser(LightningArgumentParser):
    """Unknown keys and wrong types as one ``error:`` line, not a usage listing of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        last = parser.prog.split()[-1]
        command = last if last in BespokeCLI.subcommands() else ""
        help_command = " ".join(["python -m bespoke_pl", command, "--help"]).replace("  ", " ")
        sys.stderr.write(f"error: {one_line(message)} (options: {help_command})\n")
        self.exit(2)


class BespokeCLI(LightningCLI):
    """``fit`` with the project's callbacks as first-class sections (``--save_lora.*``, ``--sample.*``)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only fit: there is no validation, test or predict step, and a subcommand that is offered must work.
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def add_core_arguments_to_parser(self, parser) -> None:
        # The project's sections first, Lightning's ~370 lines of trainer options last, so that
        # `fit --help` leads with what a user tunes (and `fit --model.help` shows one section alone).
        parser.add_lightning_class_args(self._model_class, "model")
        parser.add_lightning_class_args(self._datamodule_class, "data")
        for section, callback in SECTIONS.items():
            parser.add_lightning_class_args(callback, section)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def add_arguments_to_parser(self, parser) -> None:
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
        # The captions are measured with the base model's own tokenizer (a single file has none: its config).
        parser.link_arguments(
            ("model.base_config", "model.base_model"), "data.tokenizer_from", compute_fn=_tokenizer_source
        )

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

    def before_fit(self) -> None:
        """Everything that can be checked without the model's weights, before they are loaded."""
        model = self.model.hparams
        if isinstance(self.datamodule, PixelArtDataModule):
            self.datamodule.load()  # the data's errors first: they are the user's to fix before anything else
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
        done = completed_epochs(found)
        max_epochs = config.trainer.max_epochs
        if done is not None and max_epochs is not None and 0 <= max_epochs <= done:
            # Say so before the round trip, the caches and the model load, not after them.
            print(
                f"{found.parent.parent} has finished its {done} epochs already (max_epochs {max_epochs}); "
                "to train on, give a larger --trainer.max_epochs with --ckpt_path last"
            )
            raise SystemExit(0)
        init.version = found.parent.parent.name
        config.ckpt_path = str(found)
        log.info("resuming %s in %s", found, found.parent.parent)


# Each subcommand's module has ``command(argv)``; imported on use, so ``fit`` starts without them.
COMMANDS: dict[str, str] = {
    "tiny": "bespoke_pl.commands.tiny",
    "pretrain-tiny": "bespoke_pl.commands.pretrain",
    "generate": "bespoke_pl.commands.generate",
    "evaluate": "bespoke_pl.commands.evaluate",
    "roundtrip": "bespoke_pl.commands.roundtrip",
    "check-data": "bespoke_pl.commands.check_data",
}
CONFIG_ERRORS = (DatasetError, BaseModelError, ConfigError, MisconfigurationException)
RUN_FAULTS = (FloatingPointError, OutputError)


def _fail(prefix: str, error: BaseException, code: int) -> None:
    message = str(error) if isinstance(error, DatasetError) else one_line(str(error))
    sys.stderr.write(f"{prefix}: {message}\n")
    if getattr(error, "kept", None):
        sys.stderr.write(f"{error.kept}\n")
    raise SystemExit(code) from error


def _build_cli(args: list[str] | None) -> BespokeCLI:
    if args is not None:  # given from Python (tests, notebooks, section help): sys.argv is not ours
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    return BespokeCLI(
        PixelLoRAModule,
        PixelArtDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=KeepEveryConfig,
        save_config_kwargs={"overwrite": False},
        seed_everything_default=42,
        args=args,
        # No top-level --optimizer / --lr_scheduler: the module owns both (model.optimizer, lr_schedule),
        # and Lightning's would only fail with "optimizer got an empty parameter list".
        auto_configure_optimizers=False,
        # allow_abbrev: --trainer.max_epoch must be an error, not silently --trainer.max_epochs.
        parser_kwargs={
            "default_env": False,
            "prog": "python -m bespoke_pl",
            "allow_abbrev": False,
            "description": DESCRIPTION,
            "fit": {"usage": FIT_USAGE, "allow_abbrev": False},
        },
        parser_class=OneLineErrorParser,
    )


def main(args: list[str] | None = None) -> BespokeCLI | None:
    """Run a command; known mistakes and faults end in a short message and an exit status, not a traceback.

    Exit status 2: bad configuration or data (nothing was trained). 1: the run failed (NaN loss, a file
    that could not be written). 130/143: stopped by SIGINT/SIGTERM after saving a checkpoint.
    """
    argv = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    try:
        if argv and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).command(argv[1:])
            return None
        if not argv or argv[0] in ("-h", "--help"):
            print("extra commands: " + ", ".join(f"{name} (see '{name} --help')" for name in COMMANDS))
        asked = [
            a.split(".")[0][2:] for a in argv if a.endswith(".help") and a.split(".")[0][2:] in HELP_SECTIONS
        ]
        if argv[:1] == ["fit"] and asked:
            with contextlib.redirect_stdout(io.StringIO()) as full, contextlib.suppress(SystemExit):
                _build_cli(["fit", "--help"])
            print(section_help(full.getvalue(), asked[0]))
            return None
        return _build_cli(None if args is None else argv)  # None reads sys.argv (LightningCLI warns on both)
    except CONFIG_ERRORS as error:
        _fail("error", error, 2)
    except RunInterrupted as error:
        _fail("stopped", error, error.exit_code)
    except RUN_FAULTS as error:
        _fail("error", error, 1)
    return None
