"""Two-process DDP on CPU (gloo) through the real CLI: one set of per-epoch files, written by rank zero."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_fit_writes_one_set_of_files(tmp_path, tiny_sdxl, demo_data):
    command = [
        sys.executable, "-m", "bespoke_pl", "fit",
        "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.base_model", str(tiny_sdxl),
        "--data.root", str(demo_data),
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--sample.steps", "2", "--sample.num_prompts", "2",
        "--data.num_repeats", "1", "--model.conv_rank", "null", "--sample.sample_at_start", "false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "demo").iterdir())
    assert [r.name for r in runs] == ["version_0"], "both ranks must share one run folder"
    run = runs[0]
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "demo-000001.safetensors",
        "demo-000002.safetensors",
    ]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    art = sorted(p.name for p in (run / "samples" / "epoch-000002").glob("??-seed??.png"))
    assert art == ["00-seed42.png", "01-seed43.png"]
    assert (run / "contact_sheet.png").is_file()
    assert "Starting with 2 processes" in done.stderr + done.stdout
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files left behind"
