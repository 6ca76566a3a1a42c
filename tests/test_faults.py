"""Faults during a run: kill, SIGTERM/SIGINT, NaN, a failed write. Each test checks the message and that
nothing already written was lost (checksums), and resumed runs against an uninterrupted one.

Runs: 16 demo punks, batch 8 -> 2 steps per epoch, 3 epochs, a checkpoint every 3 steps.
"""

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bespoke_pl.callbacks.faults import AtomicCheckpointIO
from bespoke_pl.callbacks.resume import RunCheckpoint
from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.commands.cli import main
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.errors import OutputError
from bespoke_pl.training.module import PixelLoRAModule
from tests.fault_hooks import fit_args

REPO = Path(__file__).resolve().parents[1]
FAST = ("--data.batch_size=8", "--checkpoint.every_n_train_steps=3")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fault(step: int, kind: str) -> list[str]:
    return [
        "--trainer.callbacks+=tests.fault_hooks.FaultAtStep",
        f"--trainer.callbacks.step={step}",
        f"--trainer.callbacks.fault={kind}",
    ]


def assert_same_lora(a: Path, b: Path) -> None:
    """Tolerance: none. On CPU a resumed run repeats the uninterrupted run's arithmetic bit for bit."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), "resumed LoRA differs from the uninterrupted run's"


def run_folder(logs: Path) -> Path:
    assert sorted(p.name for p in (logs / "bespoke").iterdir()) == ["version_0"], "a second run folder"
    return logs / "bespoke" / "version_0"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sd15, demo_data) -> Path:
    """The uninterrupted run's folder."""
    logs = tmp_path_factory.mktemp("reference")
    main(fit_args(tiny_sd15, demo_data, logs, *FAST))
    return logs / "bespoke" / "version_0"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_with_ckpt_path_last(tmp_path, tiny_sd15, demo_data, reference):
    logs = tmp_path / "logs"
    command = fit_args(tiny_sd15, demo_data, logs, *FAST, *fault(4, "kill"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-m", "bespoke_pl", *command], cwd=REPO, env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    folder = run_folder(logs)
    epoch1 = folder / "bespoke-000001.safetensors"
    before = sha(epoch1)
    assert not (folder / "bespoke-000002.safetensors").exists()
    # The newest checkpoint is mid-epoch 2 (step 3); it loads without unpickling code.
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    main([*command, "--ckpt_path=last"])
    assert run_folder(logs) == folder  # continued in the killed run's folder
    assert sha(epoch1) == before
    for epoch in (1, 2, 3):
        name = f"bespoke-00000{epoch}.safetensors"
        assert_same_lora(folder / name, reference / name)


def test_sigterm_saves_a_resumable_checkpoint(tmp_path, tiny_sd15, demo_data, reference, capsys):
    logs = tmp_path / "logs"
    command = fit_args(tiny_sd15, demo_data, logs, *FAST, *fault(5, "term"))
    with pytest.raises(SystemExit) as raised:
        main(command)
    assert raised.value.code == 143
    folder = run_folder(logs)
    last = folder / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == f"stopped: stopped by SIGTERM at step 5 (epoch 3); resumable checkpoint {last}"
    assert err[-1].startswith(f"kept in {folder}: LoRA files up to bespoke-000002.safetensors, checkpoint")
    assert torch.load(last, weights_only=True)["global_step"] == 5  # SafeStop's; the schedule saves at 3, 6
    stamps = {p.name: sha(p) for p in folder.glob("*.safetensors")}

    main([*command, "--ckpt_path=last"])
    assert {name: sha(folder / name) for name in stamps} == stamps
    assert_same_lora(folder / "bespoke-000003.safetensors", reference / "bespoke-000003.safetensors")

    # TensorBoard has no hole: every step (the one before the stop too), the interrupted epoch's mean loss
    # over all its batches (before and after the resume), and `epoch` counted from 1 as the files are.
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    steps = {e.step: e.value for e in events.Scalars("train/loss_step")}
    assert sorted(steps) == [0, 1, 2, 3, 4, 5]
    epoch_means = {e.step: e.value for e in events.Scalars("train/loss_epoch")}
    assert sorted(epoch_means) == [1, 3, 5]
    assert epoch_means[5] == pytest.approx((steps[4] + steps[5]) / 2, rel=1e-5)  # batch 1 before the stop
    assert epoch_means[1] == pytest.approx((steps[0] + steps[1]) / 2, rel=1e-5)
    assert sorted({e.value for e in events.Scalars("epoch")}) == [1.0, 2.0, 3.0]


def test_sigint_at_an_epochs_last_batch_stops_after_the_epochs_files(tmp_path, tiny_sd15, demo_data, capsys):
    logs = tmp_path / "logs"
    handler = signal.getsignal(signal.SIGINT)
    command = fit_args(tiny_sd15, demo_data, logs, *FAST, *fault(2, "int"))
    with pytest.raises(SystemExit) as raised:
        main(command)
    assert raised.value.code == 130
    assert signal.getsignal(signal.SIGINT) is handler
    folder = run_folder(logs)
    last = folder / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGINT at step 2 (epoch 1); resumable checkpoint {last}" in capsys.readouterr().err
    # Step 2 ends epoch 1: the stop waits for the epoch's LoRA file (Lightning would skip it on resume).
    epoch1 = folder / "bespoke-000001.safetensors"
    before = sha(epoch1)
    main([*command, "--ckpt_path=last"])
    assert sha(epoch1) == before
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        f"bespoke-00000{e}.safetensors" for e in (1, 2, 3)
    ]


def test_nan_loss_stops_with_the_step_and_keeps_earlier_files(
    tmp_path, tiny_sd15, demo_data, reference, monkeypatch, capsys
):
    compute_loss = PixelLoRAModule.compute_loss

    def nan_at_step_3(self, latents, embeds, *args, **kwargs):
        loss = compute_loss(self, latents, embeds, *args, **kwargs)
        return loss * float("nan") if self.global_step == 3 else loss

    monkeypatch.setattr(PixelLoRAModule, "compute_loss", nan_at_step_3)
    logs = tmp_path / "logs"
    with pytest.raises(SystemExit) as raised:
        main(fit_args(tiny_sd15, demo_data, logs, *FAST))
    assert raised.value.code == 1
    folder = run_folder(logs)
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == (
        "error: loss is nan at global step 3 (epoch 2, batch 1); lower the learning rate or check the data"
    )
    assert err[-1].startswith(
        f"kept in {folder}: bespoke-000001.safetensors, checkpoint checkpoints/last.ckpt"
    )
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["bespoke-000001.safetensors"]
    assert_same_lora(folder / "bespoke-000001.safetensors", reference / "bespoke-000001.safetensors")
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def trainer_for(root: Path, *callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root, accelerator="cpu", callbacks=list(callbacks), enable_progress_bar=False,
        enable_model_summary=False, logger=L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0),
        plugins=[AtomicCheckpointIO()], **kwargs,
    )  # fmt: skip


def test_nonfinite_batches_can_be_skipped(tmp_path, tiny_sd15, demo_data, monkeypatch):
    calls = []
    compute_loss = PixelLoRAModule.compute_loss

    def nan_twice(self, latents, embeds, *args, **kwargs):
        calls.append(1)
        loss = compute_loss(self, latents, embeds, *args, **kwargs)
        return loss * float("inf") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(PixelLoRAModule, "compute_loss", nan_twice)
    module = PixelLoRAModule(str(tiny_sd15), pixel_scale=1, rank=2, skip_nonfinite_loss=2)
    trainer = trainer_for(tmp_path, max_epochs=2, log_every_n_steps=1)
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=4))
    assert module.skipped_batches == 2
    # Lightning still counts a skipped batch as a step, but no gradient reached the optimizer.
    adam_steps = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
    assert trainer.global_step == 8 and adam_steps == {8 - 2}
    assert trainer.logged_metrics["train/skipped_batches"] == 2
    assert all(torch.isfinite(p).all() for p in module.trainable_parameters())

    calls.clear()
    module = PixelLoRAModule(str(tiny_sd15), pixel_scale=1, rank=2, skip_nonfinite_loss=1)
    with pytest.raises(
        FloatingPointError, match=r"loss is inf at global step 2 .*\(1 batches skipped before\)"
    ):
        trainer_for(tmp_path / "b", max_epochs=1).fit(
            module, PixelArtDataModule(str(demo_data), batch_size=4)
        )


class PoisonAfterEpoch(L.Callback):
    """Make a LoRA weight NaN at the end of epoch ``epoch`` (before the LoRA file is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            next(p for p in pl_module.trainable_parameters()).data[0] = float("nan")


def test_nan_weights_are_never_written(tmp_path, tiny_sd15, demo_data):
    module = PixelLoRAModule(str(tiny_sd15), pixel_scale=1, rank=2)
    checkpoint = RunCheckpoint(save_last=True, every_n_train_steps=5)  # no step save before the fault
    trainer = trainer_for(tmp_path, PoisonAfterEpoch(2), SaveLoRAEveryEpoch("punk"), checkpoint, max_epochs=3)
    folder = tmp_path / "run" / "version_0"
    with pytest.raises(OutputError) as raised:
        trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=8))
    assert str(raised.value).startswith(
        f"could not write {folder}/punk-000002.safetensors: refusing to write punk-000002.safetensors: "
        "non-finite values in 1 tensors"
    )
    assert str(raised.value).endswith(
        "no file was replaced; earlier files are intact, newest punk-000001.safetensors"
    )
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors") == [
        "punk-000001.safetensors"
    ]
    assert not list(folder.glob(".*tmp"))
    # The checkpoint of epoch 1's end (RunCheckpoint writes it although saves are every 5 steps) is kept.
    last = folder / "checkpoints" / "last.ckpt"
    before = sha(last)
    assert torch.load(last, weights_only=True)["global_step"] == 2
    with pytest.raises(
        FloatingPointError, match="refusing to write a checkpoint at global step 4: non-finite"
    ):
        trainer.save_checkpoint(last)
    assert sha(last) == before


def test_failed_writes_keep_the_previous_file(tmp_path, tiny_sd15, demo_data, monkeypatch):
    import bespoke_pl.lora.files

    save_file = bespoke_pl.lora.files.save_file
    calls = []

    def disk_full_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_file(*args, **kwargs)

    monkeypatch.setattr(bespoke_pl.lora.files, "save_file", disk_full_on_second)
    module = PixelLoRAModule(str(tiny_sd15), pixel_scale=1, rank=2)
    trainer = trainer_for(tmp_path, SaveLoRAEveryEpoch("punk"), max_epochs=3)
    with pytest.raises(OutputError) as raised:
        trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=8))
    folder = tmp_path / "run" / "version_0"
    assert str(raised.value) == (
        f"could not write {folder}/punk-000002.safetensors: No space left on device; no file was replaced; "
        "earlier files are intact, newest punk-000001.safetensors"
    )
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("events")) == [
        "checkpoints", "hparams.yaml", "punk-000001.safetensors",
    ]  # fmt: skip
    assert load_file(folder / "punk-000001.safetensors")  # whole and readable

    # A checkpoint that cannot be written leaves the previous one whole, and no temporary file behind.
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, last)
    before = sha(last)

    def no_permission(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(torch, "save", no_permission)
    with pytest.raises(
        OutputError, match=f"could not write {last}: Permission denied; last.ckpt was not replaced"
    ):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, last)
    assert sha(last) == before and sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == [
        "last.ckpt"
    ]


def test_resuming_from_an_older_checkpoint_never_replaces_a_finished_epoch(tmp_path, tiny_sd15, demo_data):
    def fit(epochs: int, ckpt_path: Path | None = None) -> None:
        module = PixelLoRAModule(str(tiny_sd15), pixel_scale=1, rank=2)
        keep = RunCheckpoint(dirpath=tmp_path / "keep", save_top_k=-1, filename="{epoch}")
        trainer = trainer_for(tmp_path, SaveLoRAEveryEpoch("punk"), keep, max_epochs=epochs)
        trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=8), ckpt_path=ckpt_path)

    fit(2)
    folder = tmp_path / "run" / "version_0"
    stamps = {p.name: sha(p) for p in folder.glob("*.safetensors")}
    fit(2, ckpt_path=tmp_path / "keep" / "epoch=1.ckpt")  # redo epoch 2 from epoch 1's end (epochs from 1)
    assert {name: sha(folder / name) for name in stamps} == stamps
    assert (folder / "punk-000002-1.safetensors").is_file()


class CrashAtEpochEnd(L.Callback):
    """Raise in ``on_train_epoch_end`` of epoch ``epoch`` (before the LoRA file), unless resuming."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epoch and trainer.ckpt_path is None:
            raise RuntimeError("crash before the epoch's files")


def test_a_crash_before_an_epochs_files_resumes_into_them(tmp_path, tiny_sd15, demo_data):
    def fit(ckpt_path: Path | None = None) -> None:
        module = PixelLoRAModule(str(tiny_sd15), pixel_scale=1, rank=2)
        # Every 2 steps = every epoch's last batch (2 batches per epoch).
        checkpoint = RunCheckpoint(save_last=True, every_n_train_steps=2)
        callbacks = (CrashAtEpochEnd(2), SaveLoRAEveryEpoch("punk"), checkpoint)
        trainer = trainer_for(tmp_path, *callbacks, max_epochs=2)
        trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=8), ckpt_path=ckpt_path)

    with pytest.raises(RuntimeError, match="crash before the epoch's files"):
        fit()
    folder = tmp_path / "run" / "version_0"
    last = folder / "checkpoints" / "last.ckpt"
    # Lightning's ModelCheckpoint would have saved step 4 at the batch's end, and a resume from there
    # skips epoch 2's end: its LoRA file would never be written.
    assert torch.load(last, weights_only=True)["global_step"] == 2
    fit(ckpt_path=last)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "punk-000001.safetensors",
        "punk-000002.safetensors",
    ]
