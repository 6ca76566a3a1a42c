"""A tiny two-epoch fit through the CLI: samples are snapped and palette-locked, measured, logged, and
collected on the epoch contact sheet; the VAE round trip is logged at the start."""

import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bespoke_pl.callbacks import SampleImages
from bespoke_pl.cli import main
from bespoke_pl.data import load_pairs
from bespoke_pl.pixels import palette_of
from bespoke_pl.roundtrip import RoundTripCheck


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
    assert 0 <= metrics["quality/raw/grid_fidelity"] <= 1 and "quality/art/grid_fidelity" not in metrics
    assert metrics["quality/art/palette_share"] == 1  # palette lock is on by default

    # the files: final art in the training palette, the snapped grid before the lock, the raw decode
    palette = palette_of(load_pairs(demo_data).images)
    folder = run / "samples" / "epoch-000002"
    sizes = {
        name: Image.open(folder / f"00-seed42{name}.png").size
        for name in ("", "-snapped", "-raw", "-preview")
    }
    assert sizes == {"": (24, 24), "-snapped": (24, 24), "-raw": (192, 192), "-preview": (192, 192)}
    art = torch.from_numpy(__import__("numpy").array(Image.open(folder / "00-seed42.png"))).reshape(-1, 3)
    assert all((palette == colour).all(1).any() for colour in art.unique(dim=0))
    sampler = next(c for c in cli.trainer.callbacks if isinstance(c, SampleImages))
    raw, last_art = sampler.last_samples
    assert last_art.shape == (2, 3, 24, 24) and raw.shape == (2, 3, 192, 192)

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
    assert 0 <= check.result.pixels_exact <= 1
