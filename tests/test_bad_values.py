"""Values that cannot work, or would train nothing, are refused before any model loads: one ``error:``
line naming the option, exit status 2, and no run folder left behind. A YAML key given twice is one too."""

import pytest
from failing import fails

from bespoke_pl.commands.cli import main

CASES = {
    "--trainer.max_epochs=-1": "trainer.max_epochs must be >= 1, got -1",
    "--trainer.max_epochs=0": "trainer.max_epochs must be >= 1, got 0",
    "--trainer.max_steps=0": "trainer.max_steps 0 trains nothing",
    "--model.optimizer.lr=-1e-3": "model.optimizer.lr must be a positive number, got -0.001",
    "--model.optimizer.lr=.nan": "model.optimizer.lr must be a positive number, got nan",
    "--model.optimizer.lr=0": "model.optimizer.lr must be a positive number, got 0",
    "--model.alpha=0": "model.alpha 0.0 makes the LoRA's scale alpha / rank 0.0: it trains nothing",
    "--model.rank=0": "model.rank must be >= 1, got 0",
    "--model.lora_dropout=1.5": "model.lora_dropout must be in [0, 1), got 1.5",
    "--model.noise_offset=-0.1": "model.noise_offset must be >= 0, got -0.1",
    "--data.num_workers=-1": "data.num_workers must be >= 0 (0: load in the main process), got -1",
    "--data.batch_size=0": "data.batch_size must be >= 1, got 0",
    "--data.caption_dropout=2": "data.caption_dropout must be in [0, 1], got 2.0",
}


@pytest.mark.parametrize("value", CASES)
def test_a_value_that_cannot_work_is_refused_before_anything_loads(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        "bespoke_pl.commands.cli.check_base", lambda *a: pytest.fail("the base was looked at")
    )
    logs = tmp_path / "logs"
    args = ["fit", "--config", "configs/demo.yaml", "--trainer.logger.init_args.save_dir", str(logs), value]
    assert fails(args, capsys).startswith(f"error: {CASES[value]}")
    assert not logs.exists()


def test_two_problems_are_one_line(tmp_path, capsys):
    args = ["fit", "--config", "configs/demo.yaml", "--trainer.max_epochs=0", "--data.num_workers=-1"]
    line = fails(args, capsys)
    assert "trainer.max_epochs must be >= 1" in line and "; data.num_workers must be >= 0" in line


def test_a_yaml_key_given_twice_is_an_error_naming_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epochs: 2\nmodel:\n  rank: 4\ntrainer:\n  max_epochs: 5\n")
    line = fails(["fit", "--config", "configs/demo.yaml", "--config", str(config), "--print_config"], capsys)
    assert line == f"error: config {config}: key 'trainer' is given twice (lines 1 and 5); keep one"
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  rank: 4\n  rank: 8\n")
    line = fails(["fit", f"--config={nested}", "--print_config"], capsys)
    assert line == f"error: config {nested}: key 'rank' is given twice (lines 2 and 3); keep one"


def test_a_config_without_duplicates_still_parses(tmp_path, capsys):
    config = tmp_path / "fine.yaml"
    config.write_text("trainer:\n  max_epochs: 2\nmodel:\n  optimizer:\n    init_args:\n      lr: 1e-4\n")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/demo.yaml", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "max_epochs: 2" in out and "lr: 0.0001" in out


def test_python_gets_the_same_range_checks_as_the_command_line():
    """The ranges are checked by the module and the data module themselves, with fit's messages."""
    from bespoke_pl.data.datamodule import PixelArtDataModule
    from bespoke_pl.errors import ConfigError
    from bespoke_pl.training.module import PixelLoRAModule

    with pytest.raises(ConfigError, match=r"model.rank must be >= 1, got 0; model.noise_offset must be >= 0"):
        PixelLoRAModule("tiny:sd15", rank=0, noise_offset=-0.1)
    with pytest.raises(ConfigError, match=r"^data.batch_size must be >= 1, got 0$"):
        PixelArtDataModule("anywhere", batch_size=0)
    with pytest.raises(ConfigError, match="data.val_split and data.val_root both set"):
        PixelArtDataModule("anywhere", val_split=0.1, val_root="elsewhere")
