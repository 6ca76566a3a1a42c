"""A run whose files cannot be written: one line naming the file and the cause, what was kept, exit status 1,
no half-written file; a run folder that cannot be written is refused before anything loads (exit 2); and an
interrupted write's temporary file is removed by the next run in that folder."""

import errno

import pytest
from failing import fails, failure_lines
from PIL import Image
from test_cli import fit_args

from bespoke_pl.commands.cli import main

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_a_sample_png_is_written(tmp_path, tiny_sd15, demo_data, capsys, monkeypatch):
    def full(image, fp, *args, **kwargs):
        raise DISK_FULL

    monkeypatch.setattr(Image.Image, "save", full)
    args = fit_args(tmp_path, tiny_sd15, demo_data, "--model.family", "sd15", "--trainer.max_epochs", "1")
    lines = failure_lines(args, capsys, 1)
    run = tmp_path / "logs" / "demo" / "version_0"
    png = run / "samples" / "epoch-000001" / "00-seed42.png"
    assert lines == [
        f"error: could not write {png}: No space left on device; no file was replaced",
        f"kept in {run}: demo-000001.safetensors",
    ]
    assert not list(run.rglob("*.png")) and not list(run.rglob(".*.tmp"))  # no half-written file either


def test_a_full_disk_inside_the_tensorboard_writer(tmp_path, tiny_sd15, demo_data, capsys, monkeypatch):
    from tensorboard.summary.writer.record_writer import RecordWriter

    writes = []

    def fills_up(self, data):
        writes.append(len(data))
        if len(writes) > 3:  # the file's header and the first records go through, then the disk is full
            raise DISK_FULL

    monkeypatch.setattr(RecordWriter, "write", fills_up)
    args = fit_args(tmp_path, tiny_sd15, demo_data, "--model.family", "sd15", "--trainer.max_epochs", "2")
    lines = failure_lines(args, capsys, 1)
    assert lines[0] == "error: could not write the TensorBoard event file: No space left on device"
    # the first records fill the disk before any epoch ends: nothing to keep, and the line says so
    assert lines[1:] == [f"nothing saved yet in {tmp_path / 'logs' / 'demo' / 'version_0'}"]


def test_a_run_folder_that_cannot_be_written_is_refused_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bespoke_pl.training.module.load_base", lambda *a, **k: pytest.fail("model loaded"))
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the logs folder would go")
    args = fit_args(tmp_path, "tiny:sd15", "demo:punks", "--model.family", "sd15")
    line = fails(args, capsys)
    assert line == (
        f"error: the run folder {blocker / 'demo' / 'version_0'} cannot be written ({blocker}: {blocker} is a "
        "file, not a folder); give a --trainer.logger.init_args.save_dir you can write to"
    )
    assert blocker.read_text() == "a file where the logs folder would go"


def test_an_interrupted_writes_temporary_file_is_removed_by_the_next_run(tmp_path, tiny_sd15, demo_data):
    args = fit_args(
        tmp_path, tiny_sd15, demo_data, "--model.family", "sd15", "--sample.every_n_epochs", "0"
    )  # fmt: skip
    main([*args, "--trainer.max_epochs", "1"])
    run = tmp_path / "logs" / "demo" / "version_0"
    # what a kill during atomic_write leaves: a hidden, empty temporary file beside its target
    leftovers = [run / ".demo-000002.safetensors.k1ll3d.tmp", run / "checkpoints" / ".last.ckpt.x.tmp"]
    for path in leftovers:
        path.write_bytes(b"")
    main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert not any(path.exists() for path in leftovers)
    assert (run / "demo-000002.safetensors").is_file()
