"""docs/python.md's "Training from Python" example, run as written: a Trainer built in Python gets the same
files as the CLI and the module's own callbacks (resume, safe stop, atomic checkpoints)."""

import os
import re
from pathlib import Path

from safetensors import safe_open

PAGE = Path(__file__).parents[1] / "docs" / "python.md"


def readme_python_example() -> str:
    section = PAGE.read_text().split("# Training from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_trains_and_writes_the_run_files(tmp_path, monkeypatch, trained_sdxl):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_example(), "docs/python.md", "exec"), namespace)
    trainer = namespace["trainer"]
    run = tmp_path / "logs" / "python" / "version_0"
    lora = run / "punks-000001.safetensors"
    with safe_open(lora, "pt") as f, safe_open(trained_sdxl.files["kohya"], "pt") as cli:
        metadata = f.metadata()
        # The same kohya names as a CLI run of the same family (that one adds conv layers).
        assert set(f.keys()) <= set(cli.keys()) and len(f.keys()) > 100
    assert metadata["ss_clip_skip"] == "2" and metadata["bespoke_pl.pixel_scale"] == "8"
    assert metadata["ss_cache_latents"] == "True"  # the latent cache is on by default
    assert len(metadata["bespoke_pl.palette"]) > 100  # the training palette, computed once, recorded
    assert sorted(p.name for p in (run / "samples" / "epoch-000001").glob("0?-seed??.png")) == [
        "00-seed42.png",
        "01-seed43.png",
    ]
    assert (run / "contact_sheet.png").is_file() and list(run.glob("events.out.tfevents.*"))
    names = [type(c).__name__ for c in trainer.callbacks]
    assert {"ExactResume", "SafeStop"} <= set(names)
    # Resume state is taken before any checkpoint is written: checkpoint callbacks run last.
    assert names.index("ExactResume") < names.index("ModelCheckpoint")
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
    assert os.listdir(run / "checkpoints")  # Lightning's default checkpoint, through the atomic writer
