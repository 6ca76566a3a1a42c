"""A damaged checkpoint at resume: one line, never PyTorch's advice to unpickle, nothing in the run folder
rewritten, and ``--ckpt_path last`` falls back to the run's newest readable checkpoint with a warning."""

import logging
import os

import pytest
from failing import fails
from test_cli import fit_args

from bespoke_pl.commands.cli import main
from bespoke_pl.commands.resume_last import checkpoint_problem, completed_epochs, find_last_checkpoint


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random": os.urandom(4096)}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_a_damaged_checkpoint_is_one_line(how, tmp_path, capsys):
    run = tmp_path / "logs" / "demo" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"PK\x03\x04" + bytes(64))
    damage(last, how)
    (run / "config.yaml").write_text("first run's settings\n")
    args = fit_args(tmp_path, "tiny:sd15", tmp_path / "never-read", "--model.family", "sd15")
    line = fails([*args, "--ckpt_path", "last"], capsys)
    assert line.startswith(f"error: --ckpt_path last: {last} ")
    assert line.endswith(
        f"no other checkpoint in {last.parent} can be read; start a new run (without --ckpt_path)"
    )
    assert "weights_only" not in line
    line = fails([*args, "--ckpt_path", str(last)], capsys)
    assert line.startswith(f"error: --ckpt_path {last} ") and "weights_only" not in line
    assert sorted(p.name for p in tmp_path.joinpath("logs", "demo").iterdir()) == ["version_0"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    assert (run / "config.yaml").read_text() == "first run's settings\n"


def test_ckpt_path_last_falls_back_to_the_newest_readable_checkpoint(tmp_path, tiny_sd15, demo_data, caplog):
    args = fit_args(tmp_path, tiny_sd15, demo_data, "--model.family", "sd15", "--sample.every_n_epochs", "0")
    main(
        [
            *args,
            "--trainer.max_epochs",
            "1",
            "--checkpoint.every_n_train_steps",
            "0",
            "--checkpoint.every_n_epochs",
            "1",
        ]
    )
    run = tmp_path / "logs" / "demo" / "version_0"
    (epoch_end,) = (run / "checkpoints").glob("epoch*.ckpt")
    last = run / "checkpoints" / "last.ckpt"
    damage(last, "truncated")
    damaged = last.read_bytes()
    with caplog.at_level(logging.WARNING, logger="bespoke_pl"):
        cli = main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert f"resuming from {epoch_end.name}, the newest readable checkpoint of the run" in caplog.text
    assert f"{last} cannot be read: it is truncated or damaged" in caplog.text
    assert cli.trainer.current_epoch == 2 and (run / "demo-000002.safetensors").is_file()
    # The damaged file is the user's: kept as it was; Lightning writes the new last checkpoint beside it.
    assert last.read_bytes() == damaged
    newest = find_last_checkpoint(tmp_path / "logs", "demo")
    assert (
        newest.name == "last-v1.ckpt" and checkpoint_problem(newest) is None and completed_epochs(newest) == 2
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bespoke_pl"):
        cli = main([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert "newest readable" not in caplog.text  # the new last-v1.ckpt is the newest, and intact
    assert cli.trainer.current_epoch == 3
