"""The ablation benchmark's rows are valid fit commands (the table itself is evidence, not asserted)."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from failing import run

from bespoke_pl.commands.cli import BespokeCLI, main

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


class Checked(Exception):
    """fit got through parsing and its config checks to building the model."""


@pytest.mark.parametrize("name", list(ablation.OPTIONS))
def test_every_row_parses_and_passes_fits_checks(name, tmp_path, capsys, monkeypatch):
    args = ablation.fit_arguments(name, tmp_path, 3, ablation.OPTIONS[name])

    def stop(self):
        raise Checked

    with monkeypatch.context() as patch:
        patch.setattr(BespokeCLI, "instantiate_classes", stop)
        with pytest.raises(Checked):
            main(args)
    code, out, err = run([*args, "--print_config"], capsys)
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["data"]["val_split"] == 8 and config["model"]["validation_loss"] == "mse"
    assert config["trainer"]["logger"]["init_args"]["name"] == ablation.slug(name)


def test_the_table_reads_what_the_runs_logged(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path)
    for tag, value in {"val/loss": 0.5, "demo/neon_share": 0.25, "quality/art/colours": 33.4}.items():
        writer.add_scalar(tag, value - 0.1, 1)
        writer.add_scalar(tag, value, 2)
    writer.close()
    values = ablation.last_values(tmp_path)
    assert values == pytest.approx({"val": 0.5, "neon": 0.25, "colours": 33.4})
    text = ablation.table(
        [{"option": "x", **values, "seconds": 12.3, "peak_mb": 700}, {"option": "y", "error": "boom"}]
    )
    assert "| x | 0.500 | - | 0.250 | - | - | - | 33 | 12 | 700 |" in text and "| y | failed: boom |" in text
