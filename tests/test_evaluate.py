"""``evaluate`` against the demo training folder: reference values, reduced decodes, copies, bad input."""

import json
import shutil

import pytest
import torch
from PIL import Image

from bespoke_pl.commands.cli import main
from bespoke_pl.commands.evaluate import evaluate
from bespoke_pl.data.pairs import load_pairs
from bespoke_pl.errors import ConfigError, DatasetError
from bespoke_pl.pixelart.grid import upscale_nearest
from bespoke_pl.pixelart.quality import bottom_widths, foreground_masks


def save(image: torch.Tensor, path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(path)


def test_evaluate_on_the_training_folder_prints_the_reference_values(tmp_path, demo_data, capsys):
    out = tmp_path / "reference.json"
    main(["evaluate", "--generated", str(demo_data), "--data_root", str(demo_data), "--out", str(out)])
    printed = capsys.readouterr().out
    images = load_pairs(demo_data).images
    counts = [torch.unique(image.flatten(1), dim=1).shape[1] for image in images]  # independent count
    report = json.loads(out.read_text())
    reference = report["reference"]
    assert reference["images"] == 16 and reference["colours_min"] == min(counts)
    assert reference["colours_max"] == max(counts)
    assert reference["colours_mean"] == pytest.approx(sum(counts) / 16)
    assert reference["widest_bottom_width"] == int(bottom_widths(foreground_masks(images)).max())
    assert f"colours_mean {sum(counts) / 16:.4g}" in printed and "punk_015.png" in printed
    # leave-one-out: an original is not a copy of itself, and the table agrees with the summary
    summary, rows = report["summary"], report["images"]
    assert summary["exact_copies"] == 0 and summary["palette_share"] == 1 and summary["torso_share"] == 0
    assert summary["colours"] == pytest.approx(sum(r["colours"] for r in rows) / 16)
    assert summary["copy_distance"] == pytest.approx(sum(r["copy_distance"] for r in rows) / 16, abs=1e-6)
    assert all(r["nearest_training"] != r["file"] for r in rows)


def test_evaluate_reduces_decoded_sizes_and_flags_copies(tmp_path, demo_data):
    images = load_pairs(demo_data).images
    generated = tmp_path / "generated"
    generated.mkdir()
    save(upscale_nearest(images[2:3], 8)[0], generated / "copy-192.png")  # a decoded-size exact copy
    torso = images[5].clone()
    torso[:, -5:, 3:21] = 200
    save(torso, generated / "torso.png")
    report = tmp_path / "r.json"
    evaluate(str(generated), str(demo_data), out=str(report))
    rows = {r["file"]: r for r in json.loads(report.read_text())["images"]}
    assert rows["copy-192.png"]["pixel_scale"] == 8 and rows["copy-192.png"]["grid_fidelity"] == 1.0
    assert (
        rows["copy-192.png"]["copy"] == "exact" and rows["copy-192.png"]["nearest_training"] == "punk_002.png"
    )
    assert rows["torso.png"]["torso"] and rows["torso.png"]["grid_fidelity"] is None
    assert rows["torso.png"]["bottom_width"] == 18
    evaluate(str(generated), str(demo_data), out=str(report))  # an earlier report may be replaced


def test_evaluate_refuses_wrong_sizes_and_foreign_files(tmp_path, demo_data):
    generated = tmp_path / "generated"
    generated.mkdir()
    shutil.copy(demo_data / "punk_000.png", generated / "ok.png")
    Image.new("RGB", (25, 25)).save(generated / "odd.png")
    Image.new("RGB", (48, 24)).save(generated / "wide.png")
    with pytest.raises(DatasetError, match=r"odd.png \(25x25\).*wide.png \(48x24\)"):
        evaluate(str(generated), str(demo_data), out=None)
    (generated / "odd.png").unlink()
    (generated / "wide.png").unlink()
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    with pytest.raises(ConfigError, match="not an evaluation report"):
        evaluate(str(generated), str(demo_data), out=str(notes))
    assert json.loads(notes.read_text()) == {"mine": True}
