"""Session-wide fixtures: tiny models and a demo data set, generated once per test run.

They are shared by every test in the session, so tests must treat them as read-only.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from documented import DEMO, Workspace

from bespoke_pl.data.demo import write_demo_dataset
from bespoke_pl.offline.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1.5-shaped pipeline folder (seed 0)."""
    return write_tiny_model("sd15", tmp_path_factory.mktemp("tiny") / "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-shaped pipeline folder (seed 0)."""
    return write_tiny_model("sdxl", tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 16 demo punks: punk_000.png + punk_000.txt ... punk_015."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "punks", count=16)


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """The README's demo command, run as written once per session in a user's checkout (tests/documented.py).

    Returns the workspace and the run folder, ``logs/demo/version_0``. Tests read it, never change it.
    """
    workspace = Workspace.create(tmp_path_factory.mktemp("documented"))
    workspace.run(DEMO)
    return workspace, workspace.work / "logs" / "demo" / "version_0"


@dataclass
class TrainedLoRA:
    """A short training run's module and its LoRA files: ``kohya`` and ``diffusers`` in float32."""

    family: str
    tiny: Path
    module: torch.nn.Module
    files: dict[str, Path]


def _lora_files(folder: Path, **names: str) -> dict[str, Path]:
    return {key: folder / f"{stem}-000001.safetensors" for key, stem in names.items()}


@pytest.fixture(scope="session")
def trained_sd15(tmp_path_factory, tiny_sd15, demo_data) -> TrainedLoRA:
    """Tiny SD 1.5, UNet (with conv) and text-encoder LoRA, one step of four images at a high learning rate.

    alpha != rank and conv_alpha != conv_rank, so a loader that ignores alpha gets different outputs.
    Also saved with the callback's defaults (kohya, float16) as ``default``.
    """
    import lightning as L

    from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
    from bespoke_pl.data.datamodule import PixelArtDataModule
    from bespoke_pl.training.module import PixelLoRAModule

    root = tmp_path_factory.mktemp("trained-sd15")
    module = PixelLoRAModule(
        str(tiny_sd15), family="sd15", pixel_scale=1, clip_skip=2, rank=4, alpha=2, conv_rank=2,
        conv_alpha=1, train_text_encoder=True, optimizer=lambda p: torch.optim.AdamW(p, lr=5e-2),
    )  # fmt: skip
    callbacks = [
        SaveLoRAEveryEpoch("kohya", save_dtype="float32"),
        SaveLoRAEveryEpoch("diffusers", save_dtype="float32", format="diffusers"),
        SaveLoRAEveryEpoch("default"),
    ]
    trainer = L.Trainer(
        default_root_dir=root, accelerator="cpu", max_epochs=1, limit_train_batches=1, callbacks=callbacks,
        logger=L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0),
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=4))
    files = _lora_files(root / "run" / "version_0", kohya="kohya", diffusers="diffusers", default="default")
    return TrainedLoRA("sd15", tiny_sd15, module.eval(), files)


@pytest.fixture(scope="session")
def trained_sdxl(tmp_path_factory, tiny_sdxl, demo_data) -> TrainedLoRA:
    """The demo config (configs/demo.yaml) through the CLI on the tiny SDXL model: one step of two images,
    with text-encoder and conv LoRA; kohya format from ``save_lora`` and a second, diffusers-format
    ``SaveLoRAEveryEpoch`` added on the command line."""
    from bespoke_pl.commands.cli import main

    root = tmp_path_factory.mktemp("trained-sdxl")
    cli = main(
        ["fit", "--config", str(Path(__file__).parents[1] / "configs" / "demo.yaml"),
         "--model.base_model", str(tiny_sdxl), "--data.root", str(demo_data),
         "--model.train_text_encoder", "true", "--model.alpha", "2", "--model.conv_rank", "2",
         "--model.conv_alpha", "1", "--model.optimizer.init_args.lr", "0.05",
         "--data.batch_size", "2", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
         "--trainer.accelerator", "cpu",
         "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(root),
         "--sample.every_n_epochs", "0", "--sample.sample_at_start", "false", "--data.num_repeats", "1",
         "--save_lora.save_dtype", "float32",
         "--trainer.callbacks+=bespoke_pl.callbacks.save_lora.SaveLoRAEveryEpoch",
         "--trainer.callbacks.output_name=demo-diffusers", "--trainer.callbacks.format=diffusers",
         "--trainer.callbacks.save_dtype=float32"]
    )  # fmt: skip
    files = _lora_files(Path(cli.trainer.log_dir), kohya="demo", diffusers="demo-diffusers")
    return TrainedLoRA("sdxl", tiny_sdxl, cli.model.eval(), files)
