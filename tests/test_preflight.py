"""Configuration mistakes end in one clear line and exit status 2, before anything is loaded or written."""

import hashlib
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from bespoke_pl.commands.cli import BespokeCLI, main
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.diffusion.base import family_of_file
from bespoke_pl.errors import BaseModelError, ConfigError, DatasetError
from bespoke_pl.pixelart.snap import snap_and_lock
from bespoke_pl.training.module import PixelLoRAModule
from bespoke_pl.training.preflight import check_pixel_grid
from tests.fault_hooks import fit_args


def fails(args: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2, return stderr's last line (the error)."""
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


@pytest.fixture
def args(tmp_path, tiny_sd15, demo_data):
    return lambda *extra: fit_args(tiny_sd15, demo_data, tmp_path / "logs", *extra)


def test_unknown_keys_and_wrong_types_are_one_line(args, tmp_path, capsys):
    assert fails(args("--model.rnak=4"), capsys) == (
        "error: unrecognized arguments: --model.rnak=4 (options: python -m bespoke_pl fit --help)"
    )
    line = fails(args("--model.rank=four"), capsys)
    assert 'key "model.rank": Expected a int. Got value: four' in line and "--help" in line
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  rnak: 3\n")
    assert "model.rnak" in fails(args(f"--config={config}"), capsys)
    assert not (tmp_path / "logs").exists()


def test_contradicting_options_are_listed_together(args, tmp_path, capsys):
    line = fails(
        args("--model.text_encoder_lr=1e-5", "--data.keep_tokens=2", "--sample.every_n_epochs=5"), capsys
    )
    assert "model.text_encoder_lr is set but model.train_text_encoder is false" in line
    assert "data.keep_tokens only applies with data.shuffle_captions: true" in line
    assert "sample.every_n_epochs 5 > trainer.max_epochs 3: no samples would be made" in line
    line = fails(args("--checkpoint.every_n_train_steps=3", "--checkpoint.every_n_epochs=1"), capsys)
    assert "should be mutually exclusive" in line  # Lightning's own check, as one line
    assert "caption_dropout must be in [0, 1]" in fails(args("--data.caption_dropout=2"), capsys)
    assert not (tmp_path / "logs").exists()


def test_pixel_scale_must_fit_the_vae_grid(args, capsys):
    for k in range(1, 17):
        check_pixel_grid(24, k)  # 24 = 3 x 8: every k gives whole latent cells
    with pytest.raises(ConfigError, match="use pixel_scale 2, 4, 6, 8"):
        check_pixel_grid(20, 1)
    with pytest.raises(ConfigError, match="use pixel_scale 8, 16"):
        check_pixel_grid(25, 4)
    line = fails(args("--data.resolution=20", "--model.pixel_scale=3"), capsys)
    assert "model.pixel_scale 3 makes 20x20 art 60 px, not a multiple of the VAE's 8" in line


def test_odd_latents_train_and_sample(tmp_path, tiny_sd15, demo_data):
    """k=3 gives a 9x9 latent: not divisible by the UNet's downsampling, and still valid in diffusers."""
    module = PixelLoRAModule(str(tiny_sd15), pixel_scale=3, rank=2)
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=2))
    assert module.encode_images(torch.zeros(1, 3, 24, 24, dtype=torch.uint8)).shape[-2:] == (9, 9)
    raw = module.sample(["pixel art"], [0], steps=2)
    assert raw.shape == (1, 3, 72, 72) and snap_and_lock(raw, 3).shape == (1, 3, 24, 24)


def test_base_model_missing_or_of_the_other_family(args, tmp_path, tiny_sd15, capsys):
    assert fails(args(f"--model.base_model={tmp_path}/nope.safetensors"), capsys) == (
        f"error: base model {tmp_path}/nope.safetensors does not exist"
    )
    line = fails(args("--model.family=sdxl"), capsys)
    assert line == f"error: the config says family sdxl but base model {tiny_sd15} is sd15"


def test_bad_data_is_reported_before_the_model_is_loaded(args, tmp_path, capsys):
    bad = tmp_path / "empty"
    bad.mkdir()
    # The base model does not exist either: the data error coming first shows the order.
    with pytest.raises(SystemExit) as raised:
        main(args(f"--data.root={bad}", f"--model.base_model={tmp_path}/missing"))
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"error: training folder {bad}; these cannot be used:\n  no .png images" in err
    assert not (tmp_path / "logs").exists(), "a failed check must not create a run folder"

    # Without the CLI, Lightning also sets the data module up before the model's configure_model.
    module = PixelLoRAModule(str(tmp_path / "missing"))
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(DatasetError, match="no .png images"):
        trainer.fit(module, PixelArtDataModule(str(bad)))
    assert module.family is None


def test_a_new_run_never_reuses_a_folder_with_outputs(args, tmp_path, capsys):
    folder = tmp_path / "logs" / "bespoke" / "version_0"
    folder.mkdir(parents=True)
    lora = folder / "bespoke-000001.safetensors"
    lora.write_bytes(b"an earlier run's LoRA")
    (folder / "config.yaml").write_text("earlier: true\n")
    stamp = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    line = fails(args("--trainer.logger.init_args.version=0"), capsys)
    assert f"{folder} already holds a run (bespoke-000001.safetensors); a new run would overwrite it" in line
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} == stamp


class RunsCode:
    """Unpickling this runs a shell command: what a malicious .ckpt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_base_checkpoints_are_refused_not_executed(tmp_path, args, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"cond_stage_model.w": torch.zeros(1)}, "extra": RunsCode(marker)}, evil)
    with pytest.raises(
        BaseModelError, match=r"holds pickled Python objects besides tensors \(.*\); refusing"
    ):
        family_of_file(evil)
    assert "refusing to load it. Use a .safetensors file" in fails(args(f"--model.base_model={evil}"), capsys)
    assert not marker.exists()

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"cond_stage_model.w": torch.zeros(1)}, "global_step": 10}, plain)
    assert family_of_file(plain) == "sd15"
    half = tmp_path / "half.safetensors"
    save_file({"conditioner.embedders.1.w": torch.zeros(64)}, half)
    half.write_bytes(half.read_bytes()[:40])
    with pytest.raises(BaseModelError, match=f"cannot read base model {half}"):
        family_of_file(half)


@pytest.mark.parametrize("name", ["demo", "sd15", "sdxl"])
def test_shipped_configs_parse_and_pass_the_checks(name, monkeypatch):
    class Checked(Exception):
        pass

    def stop(self):  # after parsing and before_instantiate_classes (the checks), before any loading
        raise Checked

    monkeypatch.setattr(BespokeCLI, "instantiate_classes", stop)
    with pytest.raises(Checked):
        main(["fit", f"--config={Path(__file__).parents[1] / 'configs' / f'{name}.yaml'}"])
