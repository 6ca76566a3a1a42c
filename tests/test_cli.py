"""The command line end to end, in-process: the demo config, overrides, resume, shipped configs, `tiny`."""

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from bespoke_pl.commands.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def fit_args(tmp_path, tiny, data, *extra) -> list[str]:
    return [
        "fit",
        "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.base_model", str(tiny),
        "--data.root", str(data),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.enable_progress_bar", "false",
        "--sample.steps", "2",
        "--sample.num_prompts", "2",
        # The demo's learning settings, off: these tests check the command line, not what is learned.
        "--data.num_repeats", "1",
        "--model.conv_rank", "null",
        "--sample.sample_at_start", "false",
        *extra,
    ]  # fmt: skip


def lora_ranks(path: Path) -> set[int]:
    return {v.shape[0] for k, v in load_file(path).items() if "lora_A" in k or "lora_down" in k}


def test_demo_fit_writes_lora_per_epoch_samples_events_and_config(tmp_path, tiny_sdxl, demo_data):
    cli = main(
        fit_args(
            tmp_path, tiny_sdxl, demo_data, "--trainer.max_epochs", "2", "--save_lora.output_name", "punks"
        )
    )
    run = tmp_path / "logs" / "demo" / "version_0"
    assert Path(cli.trainer.log_dir) == run
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "punks-000001.safetensors",
        "punks-000002.safetensors",
    ]
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for epoch in (1, 2):
        folder = run / "samples" / f"epoch-{epoch:06d}"
        art = Image.open(folder / "00-seed42.png")
        assert art.size == (24, 24) and art.mode == "RGB"
        assert Image.open(folder / "00-seed42-preview.png").size == (192, 192)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["base_model"] == str(tiny_sdxl)
    assert config["data"]["resolution"] == 24 and "resolution" not in config["model"]  # linked: written once
    assert cli.model.hparams.resolution == 24
    assert config["trainer"]["precision"] == "32-true"  # chosen for the CPU


def test_overrides_change_the_run(tmp_path, tiny_sd15, demo_data):
    cli = main(
        fit_args(
            tmp_path, tiny_sd15, demo_data,
            "--model.family", "sd15", "--model.clip_skip", "1", "--model.rank", "2",
            "--model.pixel_scale", "1", "--model.optimizer.lr", "0.05",
            "--trainer.max_epochs", "1", "--data.batch_size", "16",
        )
    )  # fmt: skip
    module = cli.model
    assert module.family == "sd15" and module.hparams.rank == 2 and module.hparams.pixel_scale == 1
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)
    assert cli.trainer.global_step == 1  # 16 images, batch 16
    (lora,) = (tmp_path / "logs" / "demo" / "version_0").glob("*.safetensors")
    assert lora_ranks(lora) == {2}
    sample = Image.open(next((tmp_path / "logs" / "demo" / "version_0" / "samples").rglob("00-seed42.png")))
    assert sample.size == (24, 24)


def test_ckpt_path_last_resumes_in_the_same_run_folder(tmp_path, tiny_sd15, demo_data):
    args = fit_args(tmp_path, tiny_sd15, demo_data, "--model.family", "sd15", "--sample.every_n_epochs", "0")
    main([*args, "--trainer.max_epochs", "1"])
    run = tmp_path / "logs" / "demo" / "version_0"
    first = (run / "demo-000001.safetensors").read_bytes()
    cli = main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert Path(cli.trainer.log_dir) == run
    assert not (tmp_path / "logs" / "demo" / "version_1").exists()
    assert cli.trainer.current_epoch == 2
    assert (run / "demo-000001.safetensors").read_bytes() == first
    assert (run / "demo-000002.safetensors").is_file()
    # a plain new run goes to a new folder and leaves the old one alone
    main([*args, "--trainer.max_epochs", "1"])
    assert (tmp_path / "logs" / "demo" / "version_1" / "demo-000001.safetensors").is_file()
    assert (run / "demo-000001.safetensors").read_bytes() == first


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # Near-native, grid-aligned sizes by default (960 px SDXL, 576 px SD 1.5); 192 px for the fast ones.
    scale = {"sdxl.yaml": 40, "sd15.yaml": 24}.get(config.name, 8)
    assert printed["model"]["pixel_scale"] == scale
    assert printed["trainer"]["max_epochs"] == 3
    assert printed["data"]["resolution"] == 24 and "resolution" not in printed["model"]  # linked
    assert printed["model"]["clip_skip"] == (1 if config.name.startswith("sd15") else 2)
    if config.name.startswith(("sdxl", "sd15")):  # the effective batch the learning rate is tuned for
        assert printed["data"]["batch_size"] * printed["trainer"]["accumulate_grad_batches"] == 4
    assert printed["model"]["gradient_checkpointing"] == (config.name == "sdxl.yaml")


def test_help_documents_the_settings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for text in ("--model.pixel_scale", "--data.root", "--save_lora.output_name", "--sample.every_n_epochs"):
        assert text in out
    assert "one art pixel in one latent cell" in " ".join(out.split())


def test_tiny_command_writes_a_loadable_model(tmp_path):
    out = tmp_path / "tiny-sd15"
    main(["tiny", "--family", "sd15", "--out", str(out)])
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    assert unet.config.cross_attention_dim > 0
    assert torch.isfinite(next(unet.parameters())).all()
    with pytest.raises(SystemExit) as refused:  # a folder that is not empty is never replaced
        main(["tiny", "--family", "sd15", "--out", str(out)])
    assert refused.value.code == 2
