"""Validation: the held-out split, the fixed timesteps and noise, and a loss that repeats bit for bit."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from bespoke_pl.callbacks.resume import RunCheckpoint
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.data.pairs import load_pairs, split_off
from bespoke_pl.training.module import PixelLoRAModule
from bespoke_pl.training.validation import LossSums, batch_loss_sum, fixed_noise, fixed_timesteps


def test_fixed_timesteps_are_the_middles_of_equal_bins():
    assert fixed_timesteps(4, 1000).tolist() == [125, 375, 625, 875]
    assert fixed_timesteps(1, 1000).tolist() == [500]
    with pytest.raises(ValueError, match="between 1 and 1000"):
        fixed_timesteps(0, 1000)


def test_fixed_noise_depends_on_seed_and_item_only():
    torch.manual_seed(1)
    a = fixed_noise((4, 3, 3), seed=0, item=5, count=2)
    torch.manual_seed(2)  # the global RNG does not enter
    assert torch.equal(a, fixed_noise((4, 3, 3), seed=0, item=5, count=2))
    assert a.shape == (2, 4, 3, 3) and not torch.equal(a[0], a[1])
    assert not torch.equal(a, fixed_noise((4, 3, 3), seed=0, item=6, count=2))
    assert not torch.equal(a, fixed_noise((4, 3, 3), seed=1, item=5, count=2))


def test_batch_loss_sum_is_the_sum_of_per_image_means_over_timesteps():
    calls = []

    def loss_fn(latents, embeds, t, noise):  # per-image loss: its timestep / 1000 + its latent's mean
        calls.append(t.clone())
        return ((t.float() / 1000) + latents.flatten(1).mean(1)).mean()

    latents = torch.stack([torch.zeros(4, 2, 2), torch.ones(4, 2, 2)])
    total = batch_loss_sum(loss_fn, latents, None, torch.tensor([0, 1]), fixed_timesteps(2, 1000), seed=0)
    # image 0: mean(0.25, 0.75) = 0.5; image 1: 1.5; the batch-mean loss times 2, averaged over timesteps
    assert total == pytest.approx(2.0)
    assert [c.tolist() for c in calls] == [[250, 250], [750, 750]]
    sums = LossSums.empty()
    sums.add("val/loss", total, 2)
    sums.add("val/train_loss", 1.0, 2)
    assert sums.means() == {"val/loss": 1.0, "val/train_loss": 0.5, "val/gap": 0.5}


def test_split_is_spread_over_the_names_and_refuses_to_leave_nothing(demo_data):
    pairs = load_pairs(demo_data)  # 16 images
    train, held = split_off(pairs, 0.2, demo_data)  # ceil(3.2) = 4
    assert [p.name for p in held.paths] == [f"punk_{i:03d}.png" for i in (2, 6, 10, 14)]
    assert len(train.captions) == 12 and not set(train.paths) & set(held.paths)
    assert torch.equal(held.images[1], pairs.images[6])
    assert len(split_off(pairs, 3, demo_data)[1].captions) == 3
    with pytest.raises(ValueError, match="holds out 16 of the 16 images .* leaving none"):
        split_off(pairs, 16, demo_data)
    with pytest.raises(ValueError, match="neither a fraction below 1 nor a whole count"):
        split_off(pairs, 2.5, demo_data)


def _validated_run(root: Path, tiny: Path, demo_data: Path, callbacks=(), **data) -> tuple[L.Trainer, Path]:
    L.seed_everything(7, verbose=False)
    module = PixelLoRAModule(
        str(tiny), family="sd15", pixel_scale=1, rank=4, alpha=4, min_snr_gamma=5.0, validation_timesteps=3,
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-2),
    )  # fmt: skip
    trainer = L.Trainer(
        default_root_dir=root, accelerator="cpu", max_epochs=2, limit_train_batches=2, callbacks=list(callbacks),
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(root, name="run", version=0),
    )  # fmt: skip
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=4, **data))
    return trainer, root / "run" / "version_0" / "metrics.csv"


def _val_rows(metrics: Path) -> list[tuple[str, str, str]]:
    import csv

    rows = list(csv.DictReader(metrics.open()))
    return [(r["val/loss"], r["val/train_loss"], r["val/gap"]) for r in rows if r.get("val/loss")]


def test_validation_loss_is_logged_per_epoch_and_bit_identical_across_runs(tmp_path, tiny_sd15, demo_data):
    best = RunCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min", save_top_k=1)
    stop = EarlyStopping(monitor="val/loss", patience=5)
    trainer, metrics = _validated_run(tmp_path / "a", tiny_sd15, demo_data, [best, stop], val_split=5)
    first = _val_rows(metrics)
    assert len(first) == 2, "one validation per epoch"
    (loss, train_loss, gap) = (float(v) for v in first[-1])
    assert loss > 0 and train_loss > 0 and gap == pytest.approx(loss - train_loss, abs=1e-6)
    assert first[0] != first[1], "the LoRA trained between the two epochs"
    # usable as the checkpoint monitor and for early stopping
    assert best.best_model_path and Path(best.best_model_path).is_file()
    assert best.best_model_score == pytest.approx(min(float(r[0]) for r in first))
    assert stop.best_score == pytest.approx(best.best_model_score)
    # the data module trained on the 11 others: the held-out images never reached the optimizer
    assert len(trainer.datamodule.pairs.captions) == 11

    _, again = _validated_run(tmp_path / "b", tiny_sd15, demo_data, val_split=5)
    assert _val_rows(again) == first, "same seed, same data: the same validation loss, bit for bit"


def test_val_root_is_a_separate_folder_and_no_validation_without_one(tmp_path, tiny_sd15, demo_data):
    trainer, metrics = _validated_run(tmp_path / "a", tiny_sd15, demo_data, val_root=str(demo_data))
    assert len(_val_rows(metrics)) == 2 and len(trainer.datamodule.pairs.captions) == 16
    trainer, metrics = _validated_run(tmp_path / "b", tiny_sd15, demo_data)
    assert _val_rows(metrics) == [] and "val/loss" not in trainer.callback_metrics


def test_fit_validates_monitors_and_writes_the_ema_file(tmp_path, tiny_sd15, demo_data, capsys):
    from failing import fails, run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    command = [
        "fit", "--model.base_model", str(tiny_sd15), "--model.family", "sd15", "--model.rank", "2",
        "--model.pixel_scale", "1", "--data.root", str(demo_data), "--data.batch_size", "4",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--roundtrip.enabled", "false",
        "--sample.num_prompts", "2", "--sample.steps", "2", "--sample.contact_sheet", "false",
    ]  # fmt: skip
    validated = [
        "--data.val_split", "0.25", "--ema.decay", "0.9", "--ema.use_for_samples", "true",
        "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min", "--checkpoint.save_top_k", "1",
        "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss",  # as the README says
    ]  # fmt: skip
    code, _, err = run([*command, *validated], capsys)
    assert code == 0, err[-2000:]
    run_dir = tmp_path / "logs" / "bespoke" / "version_0"
    assert {"bespoke-000002.safetensors", "bespoke-000002-ema.safetensors"} <= {
        p.name for p in run_dir.iterdir()
    }
    events = EventAccumulator(str(run_dir)).Reload()
    assert len(events.Scalars("val/loss")) == 2 and len(events.Scalars("val/gap")) == 2
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1  # the best epoch's only
    # the same data with impossible values: refused before anything loads
    line = fails([*command, "--data.val_split", "2.5", "--model.validation_timesteps", "0"], capsys)
    assert "data.val_split must be a fraction in [0, 1) or a whole count of images, got 2.5" in line
    assert "model.validation_timesteps must be >= 1, got 0" in line


def test_plain_validation_loss_is_the_mse_whatever_the_objective(tiny_sd15):
    from bespoke_pl.diffusion.objective import add_noise

    module = PixelLoRAModule(
        str(tiny_sd15), family="sd15", pixel_scale=1, rank=2, min_snr_gamma=1.0, loss_type="huber",
        debiased_estimation=True, validation_loss="mse",
    )  # fmt: skip
    module.configure_model()
    torch.manual_seed(0)
    latents, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    timesteps = torch.tensor([100, 900])
    embeds = module.encode_text(["a", "b"])
    with torch.no_grad():
        plain = module.compute_loss(latents, embeds, timesteps, noise, plain=True)
        weighted = module.compute_loss(latents, embeds, timesteps, noise)
        noisy = add_noise(latents, noise, timesteps, module.alphas_cumprod)
        mse = (module.predict(noisy, timesteps, embeds).float() - noise).pow(2).mean()
    assert plain == pytest.approx(float(mse), rel=1e-6)
    assert abs(float(weighted) - float(mse)) > 1e-4, "the training objective is not plain MSE here"
