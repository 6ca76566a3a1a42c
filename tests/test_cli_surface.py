"""What a user meets around `fit`: help that leads with the project's options, nothing offered that fails,
one numbering (epochs from 1), a finished run that says so, every invocation's config kept, and no noise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from failing import run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def test_fit_help_leads_with_the_projects_sections(capsys):
    code, out, _ = run(["fit", "--help"], capsys)
    assert code == 0 and out.startswith("usage: python -m bespoke_pl fit [--config FILE]")
    assert "__main__.py" not in out
    assert out.index("--model.base_model") < out.index("--data.root") < out.index("--sample.steps")
    assert out.index("--checkpoint.") < out.index("--trainer.accelerator")
    assert "--optimizer.help" not in out and "--lr_scheduler" not in out


@pytest.mark.parametrize(
    ("args", "own", "other"),
    [
        (["--model.help"], "--model.rank", "--data.root"),
        (
            ["--data.help", "PixelArtDataModule"],
            "--data.num_repeats",
            "--model.rank",
        ),  # as the README writes it
        (["--sample.help"], "--sample.guidance_scale", "--trainer.max_epochs"),
    ],
)
def test_one_section_of_help_alone(capsys, args, own, other):
    code, out, _ = run(["fit", *args], capsys)
    assert code == 0 and own in out and other not in out and len(out.splitlines()) < 300


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["validate"], "invalid choice: 'validate' (choose from 'fit')"),
        (["fit", "--optimizer", "torch.optim.SGD"], "unrecognized arguments: --optimizer"),
        (["fit", "--trainer.max_epoch", "1"], "unrecognized arguments: --trainer.max_epoch 1"),  # no prefixes
    ],
)
def test_nothing_is_offered_that_fails(capsys, args, says):
    code, _, err = run(args, capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
    assert "bespoke_pl bespoke_pl" not in err and "python -m bespoke_pl" in err


def fit_command(tmp_path, tiny, data, *extra) -> list[str]:
    return [
        "fit", "--model.base_model", str(tiny), "--model.family", "sd15", "--model.rank", "2",
        "--data.root", str(data), "--data.batch_size", "4", "--trainer.accelerator", "cpu",
        "--trainer.limit_train_batches", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--sample.every_n_epochs", "0", "--roundtrip.enabled", "false", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_one_numbering_no_noise_and_every_config_kept(tmp_path, tiny_sd15, demo_data, capsys):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bespoke_pl", *fit_command(tmp_path, tiny_sd15, demo_data)]
    done = subprocess.run(
        [*command, "--trainer.max_epochs", "2"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "logs" / "bespoke" / "version_0"
    # Epochs count from 1 in the bar, the LoRA files and the checkpoints alike; no v_num, no tips.
    printed = done.stdout + done.stderr  # Lightning's bar writes to stdout
    assert "Epoch 2/2" in printed and "Epoch 0" not in printed and "v_num" not in printed
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")) == [
        "epoch0002-step000004.ckpt"
    ]
    assert (run_dir / "bespoke-000002.safetensors").is_file()
    for noise in ("Tip:", "litlogger", "requires torchvision", "Loading weights", "module(s) in eval mode"):
        assert noise not in printed, noise
    events = EventAccumulator(str(run_dir)).Reload()
    assert "hp_metric" not in events.Tags()["scalars"]

    # Resuming a finished run says so at once (before any data, model or round trip) and changes nothing.
    code, out, err = run([*fit_command(tmp_path, tiny_sd15, demo_data), "--trainer.max_epochs", "2",
                          "--ckpt_path", "last"], capsys)  # fmt: skip
    assert code == 0 and f"{run_dir} has finished its 2 epochs already" in out
    assert "loaded" not in err and sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml"]

    # Training on: the resumed invocation's settings are kept beside the first run's, never over them.
    code, _, err = run([*fit_command(tmp_path, tiny_sd15, demo_data), "--trainer.max_epochs", "3",
                        "--ckpt_path", "last"], capsys)  # fmt: skip
    assert code == 0, err
    first = yaml.safe_load((run_dir / "config.yaml").read_text())
    resumed = yaml.safe_load((run_dir / "config-resume-1.yaml").read_text())
    assert first["trainer"]["max_epochs"] == 2 and resumed["trainer"]["max_epochs"] == 3
    assert (run_dir / "bespoke-000003.safetensors").is_file()
