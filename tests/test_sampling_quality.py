"""A tiny two-epoch fit through the CLI: samples are snapped and palette-locked, measured, logged, and
collected on the epoch contact sheet; the VAE round trip is logged at the start."""

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bespoke_pl.callbacks.roundtrip import RoundTripCheck
from bespoke_pl.callbacks.samples import SampleImages
from bespoke_pl.commands.cli import main
from bespoke_pl.data.pairs import load_pairs
from bespoke_pl.pixelart.metrics import GridFidelity
from bespoke_pl.pixelart.palette import palette_of
from bespoke_pl.pixelart.roundtrip import vae_round_trip


def pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()


def test_two_epoch_fit_logs_quality_and_writes_the_contact_sheet(tmp_path, monkeypatch, tiny_sdxl, demo_data):
    monkeypatch.chdir(tmp_path)
    cli = main(
        ["fit", "--model.base_model", str(tiny_sdxl), "--model.family", "sdxl", "--model.rank", "2",
         "--data.root", str(demo_data), "--data.batch_size", "2",
         "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1", "--trainer.accelerator", "cpu",
         "--trainer.enable_progress_bar", "false",
         "--sample.num_prompts", "2", "--sample.steps", "2", "--sample.kid", "true", "--sample.sample_at_start", "true",
         "--roundtrip.max_images", "2"]
    )  # fmt: skip
    run = tmp_path / "logs" / "bespoke" / "version_0"
    metrics = cli.trainer.callback_metrics
    for stage in ("raw", "art"):
        for name in ("colours", "colours_in_range", "palette_share", "silhouette_iou", "torso_ratio",
                     "torso_share", "copy_distance", "exact_copies", "kid"):  # fmt: skip
            assert f"quality/{stage}/{name}" in metrics, f"quality/{stage}/{name} not logged"
    assert "quality/art/grid_fidelity" not in metrics
    assert metrics["quality/art/palette_share"] == 1  # palette lock is on by default

    # the files: final art in the training palette, the snapped grid before the lock, the raw decode
    palette = palette_of(load_pairs(demo_data).images)
    folder = run / "samples" / "epoch-000002"
    sizes = {
        name: Image.open(folder / f"00-seed42{name}.png").size
        for name in ("", "-snapped", "-raw", "-preview")
    }
    assert sizes == {"": (24, 24), "-snapped": (24, 24), "-raw": (192, 192), "-preview": (192, 192)}
    art = pixels(folder / "00-seed42.png").permute(1, 2, 0).reshape(-1, 3)
    assert all((palette == colour).all(1).any() for colour in art.unique(dim=0))
    sampler = next(c for c in cli.trainer.callbacks if isinstance(c, SampleImages))
    raw, last_art = sampler.last_samples
    assert last_art.shape == (2, 3, 24, 24) and raw.shape == (2, 3, 192, 192)
    # The logged grid fidelity is that of the saved decodes (the last sampled epoch's).
    saved = torch.stack([pixels(folder / f"{i:02d}-seed{42 + i}-raw.png") for i in range(2)])
    assert torch.equal(saved, raw)
    fidelity = GridFidelity(8)
    fidelity.update(saved)
    assert float(metrics["quality/raw/grid_fidelity"]) == pytest.approx(
        float(fidelity.compute()["grid_fidelity"])
    )

    # one contact sheet row per sampled epoch (0, 1, 2), two prompts per row, 8x cells and a label column
    sheet = Image.open(run / "contact_sheet.png")
    assert sheet.size == (64 + 2 + 2 * (192 + 2), 2 + 3 * (192 + 2))

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert len(events.Scalars("quality/art/silhouette_iou")) == 3  # before training, after epochs 1 and 2
    assert {"roundtrip/pixels_exact", "roundtrip/images_exact"} <= set(scalars)
    assert "samples/contact_sheet" in events.Tags()["images"]

    check = next(c for c in cli.trainer.callbacks if isinstance(c, RoundTripCheck))
    assert check.result.pixel_scale == 8 and check.result.images == 2
    again = vae_round_trip(cli.model.vae, load_pairs(demo_data).images[:2], 8, palette)
    assert check.result.pixels_exact == again.pixels_exact and check.result.images_exact == again.images_exact
