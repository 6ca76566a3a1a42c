"""The command line: LightningCLI for ``fit`` and the dispatch to the other subcommands' modules.

``main(args=None)`` takes an argument list so tests run the real CLI in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import threading
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bespoke_pl.callbacks.ema import LoRAEMA
from bespoke_pl.callbacks.resume import RunCheckpoint
from bespoke_pl.callbacks.roundtrip import RoundTripCheck
from bespoke_pl.callbacks.run_folder import check_run_folder, check_writable, remove_leftover_temporaries
from bespoke_pl.callbacks.samples import SampleImages
from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.commands.failures import (
    CONFIG_ERRORS,
    DEBUG_FLAG,
    RUN_FAULTS,
    WRITE_ERRNOS,
    debug_requested,
    fail,
    quiet_tensorboard_thread,
    written_file,
)
from bespoke_pl.commands.parsing import (
    PROG,
    OneLineErrors,
    check_config_files,
    refuse_duplicate_yaml_keys,
    section_help,
)
from bespoke_pl.commands.quiet import quiet_known_noise
from bespoke_pl.commands.resume_last import KeepEveryConfig, check_ckpt_path, is_local_file, resolve_last
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.diffusion.devices import default_precision
from bespoke_pl.errors import (
    BaseModelError,
    ConfigError,
    DatasetError,
    OutputError,
    RunInterrupted,
)
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


def _tokenizer_source(base_config: str | None, base_model: str) -> str:
    return base_config or base_model


DESCRIPTION = "bespoke_pl: LoRA training of SDXL and SD 1.5 on 24x24 pixel-art portraits"
SECTIONS = {
    "save_lora": SaveLoRAEveryEpoch,
    "sample": SampleImages,
    "checkpoint": RunCheckpoint,
    "roundtrip": RoundTripCheck,
    "ema": LoRAEMA,
    "lr_monitor": LearningRateMonitor,
}
HELP_SECTIONS = ("model", "data", *SECTIONS, "trainer")
FIT_USAGE = (
    "python -m bespoke_pl fit [--config FILE] [--SECTION.OPTION VALUE ...]\n"
    f"       sections: {', '.join(HELP_SECTIONS)}; one section's options: fit --SECTION.help"
)


class OneLineErrorParser(OneLineErrors, LightningArgumentParser):
    """``fit``'s parser, with one-line mistakes."""


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
                resolve_last(config)

    def _parse_ckpt_path(self) -> None:
        # Lightning's own torch.loads a --ckpt_path file first (for its hyperparameters): check it before that.
        ckpt_path = (
            self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        )
        if is_local_file(ckpt_path):
            check_ckpt_path(Path(ckpt_path).expanduser())
        super()._parse_ckpt_path()

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
        folder = Path(self.trainer.log_dir)
        check_writable(folder)
        check_run_folder(folder, resuming=self.config.fit.get("ckpt_path") is not None)
        remove_leftover_temporaries(folder)


# Each subcommand's module has ``command(argv)``; imported on use, so ``fit`` starts without them.
COMMANDS: dict[str, str] = {
    "tiny": "bespoke_pl.commands.tiny",
    "pretrain-tiny": "bespoke_pl.commands.pretrain",
    "generate": "bespoke_pl.commands.generate",
    "evaluate": "bespoke_pl.commands.evaluate",
    "roundtrip": "bespoke_pl.commands.roundtrip",
    "check-data": "bespoke_pl.commands.check_data",
    "from-kohya": "bespoke_pl.commands.from_kohya",
    "export": "bespoke_pl.commands.export",
    "snap": "bespoke_pl.commands.snap",
}


def _build_cli(args: list[str]) -> BespokeCLI:
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
            "prog": PROG,
            "allow_abbrev": False,
            "description": DESCRIPTION,
            "fit": {"usage": FIT_USAGE, "allow_abbrev": False},
        },
        parser_class=OneLineErrorParser,
    )


def main(args: list[str] | None = None) -> BespokeCLI | None:
    """Run a command; known mistakes and faults end in a short message and an exit status, not a traceback.

    Exit status 2: bad configuration, data or input file (nothing was trained or written). 1: the run failed
    (NaN loss, a file that could not be written). 130/143: stopped by SIGINT/SIGTERM after saving a
    checkpoint. The same for every subcommand; ``--debug`` anywhere in ``args`` (or ``BESPOKE_PL_DEBUG=1``)
    lets the exception through with its traceback.

    Args:
        args: The command line without the program; None reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    refuse_duplicate_yaml_keys()
    threading.excepthook = quiet_tensorboard_thread
    # LightningCLI always gets argv (sys.argv less --debug), so its warning about an argument list given
    # besides sys.argv would be about this function, not about the user's command.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # diffusers passes huggingface_hub an argument it deprecated; nothing the user can or needs to do about it.
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated")
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
        check_config_files(argv)
        return _build_cli(argv)
    except CONFIG_ERRORS as error:
        fail("error", error, 2, debug)
    except RunInterrupted as error:
        fail("stopped", error, error.exit_code, debug)
    except RUN_FAULTS as error:
        fail("error", error, 1, debug)
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        # A write that failed outside the project's own writers (TensorBoard's event file, Lightning's
        # folders): still one line and what is kept, not a traceback.
        fault = OutputError(f"could not write {written_file(error)}: {error.strerror or error}")
        fault.kept = getattr(error, "kept", None)  # type: ignore[attr-defined]
        fail("error", fault, 1, debug)
