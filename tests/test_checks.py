"""Data checks: every bad input of a training folder in one report, before any model is loaded."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPTokenizer

from bespoke_pl.commands.cli import main
from bespoke_pl.data.checks import count_tokens, scan_folder
from bespoke_pl.data.pairs import load_pairs
from bespoke_pl.errors import DatasetError

CAPTION = "pixel art, 24x24, portrait of bespoke punk, male, blue background"
LONG = ", ".join(f"tag{i} word" for i in range(40))  # far beyond 75 tokens


def rgb(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def pair(folder: Path, name: str, image: Image.Image, caption: str | bytes | None = CAPTION) -> None:
    image.save(folder / name, format="PNG")
    if caption is not None:
        target = folder / (Path(name).stem + ".txt")
        target.write_bytes(caption if isinstance(caption, bytes) else caption.encode())


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """One file for every problem the checks know, next to two good pairs."""
    f = tmp_path / "set"
    f.mkdir()
    pair(f, "good.png", Image.fromarray(rgb(0)))
    pair(f, "grey.png", Image.fromarray(rgb(1)[..., 0], "L"))  # accepted, with a warning
    pair(f, "long.png", Image.fromarray(rgb(2)), LONG)  # accepted, with a warning
    pair(f, "whole.png", Image.fromarray(rgb(3)))
    data = (f / "whole.png").read_bytes()
    (f / "trunc.png").write_bytes(data[: len(data) // 2])
    (f / "trunc.txt").write_text(CAPTION)
    Image.fromarray(rgb(4)).save(f / "jpeg.png", format="JPEG")
    (f / "jpeg.txt").write_text(CAPTION)
    pair(f, "big.png", Image.fromarray(rgb(5, 48)))
    pair(f, "deep.png", Image.fromarray(np.full((24, 24), 4000, np.uint16)))  # 16-bit grey
    ghost = Image.fromarray(rgb(6)).quantize(8)
    ghost.info["transparency"] = 0
    pair(f, "ghost.png", ghost)  # palette entry 0 transparent, used by some pixels
    pair(f, "twin.png", Image.fromarray(rgb(7)))
    Image.fromarray(rgb(8)).save(f / "twin.PNG")
    pair(f, "nocap.png", Image.fromarray(rgb(9)), None)
    pair(f, "blank.png", Image.fromarray(rgb(10)), "  \n")
    pair(f, "latin.png", Image.fromarray(rgb(11)), "caf\xe9".encode("latin-1"))
    Image.fromarray(rgb(12)).save(f / "photo.jpg")
    (f / "notes.md").write_text("my set")
    (f / "orphan.txt").write_text(CAPTION)
    (f / ".DS_Store").write_bytes(b"\0")
    (f / "10_more").mkdir()
    Image.fromarray(rgb(13)).save(f / "10_more" / "x.png")
    return f


def test_every_problem_is_named_in_one_report_and_nothing_is_touched(bad_folder):
    before = checksums(bad_folder)
    with pytest.raises(DatasetError) as raised:
        load_pairs(bad_folder)
    message = str(raised.value)
    errors, warnings = message.split("warnings:")
    expected_errors = {
        "unreadable image": "trunc.png",
        "not a PNG inside": "jpeg.png (it is JPEG)",
        "not 24x24": "big.png (48x48)",
        "16 bits per channel": "deep.png",
        "transparent but no `background`": "ghost.png",
        "same name, different extension case": "twin.PNG",
        "missing caption (set `default_caption` to allow)": "nocap.txt",
        "empty caption": "blank.txt",
        "caption is not UTF-8": "latin.txt (byte 3)",
        "not PNG (only lossless PNG": "photo.jpg",
    }
    lines = errors.splitlines()
    for problem, item in expected_errors.items():
        assert any(problem in line and item in line for line in lines), (problem, message)
    for good in ("good.png", "grey.png", "long.png", "whole.png", ".DS_Store"):
        assert good not in errors
    assert "grayscale, trained as grey RGB: grey.png (L)" in warnings
    assert "caption longer than 75 tokens, the end is cut: long.txt (" in warnings
    assert "words cut, from 'tag" in warnings
    assert "ignored (not a PNG or caption): notes.md" in warnings
    assert "caption without an image: orphan.txt" in warnings
    assert "subfolders are not read: 10_more/ (1 .png)" in warnings
    assert message.startswith(f"14 images in {bad_folder}; these cannot be used:")
    assert checksums(bad_folder) == before


def test_warnings_alone_let_training_go_ahead(tmp_path, caplog):
    pair(tmp_path, "grey.png", Image.fromarray(rgb(1)[..., 0], "L"))
    pair(tmp_path, "long.png", Image.fromarray(rgb(2)), LONG)
    pairs = load_pairs(tmp_path)
    assert len(pairs.captions) == 2 and pairs.captions[1] == LONG  # the caption is kept whole; CLIP cuts it
    assert "grayscale" in caplog.text and "the end is cut" in caplog.text


def test_palette_transparency(tmp_path):
    opaque = Image.fromarray(rgb(0)).quantize(8)
    opaque.info["transparency"] = 200  # a transparent index no pixel uses: opaque in fact
    pair(tmp_path, "opaque.png", opaque)
    assert len(load_pairs(tmp_path).captions) == 1

    soft = np.dstack([rgb(1), np.full((24, 24), 128, np.uint8)])
    pair(tmp_path, "soft.png", Image.fromarray(soft, "RGBA"))
    with pytest.raises(DatasetError, match=r"transparent but no `background`.*soft\.png"):
        load_pairs(tmp_path)
    scan = scan_folder(tmp_path, background=(0, 0, 0))
    assert not scan.report.errors
    assert [f.item for f in scan.report.warnings] == ["soft.png (576 px)"]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError) as raised:
        load_pairs(tmp_path / "nope")
    assert (
        str(raised.value) == f"training folder {tmp_path / 'nope'} does not exist or is not a folder"
    )  # one line
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb(0)).save(tmp_path / "sub" / "a.png")
    with pytest.raises(DatasetError) as raised:
        load_pairs(tmp_path)
    assert "  no .png images" in str(raised.value)
    assert "subfolders are not read: sub/ (1 .png)" in str(raised.value)


def test_token_counts_match_the_models_tokenizer(tiny_sd15, demo_data):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd15, subfolder="tokenizer")
    captions = [p.read_text() for p in sorted(demo_data.glob("*.txt"))]
    for caption in captions:
        n, cut = count_tokens(caption, tokenizer)
        assert n == len(tokenizer(caption)["input_ids"]) - 2 and cut == ""
        estimate, _ = count_tokens(caption)
        assert abs(estimate - n) <= 2, (caption, estimate, n)  # the estimate is CLIP-like
    n, cut = count_tokens(LONG, tokenizer)
    kept = tokenizer.decode(tokenizer(LONG, add_special_tokens=False)["input_ids"][:75])
    assert n > 75 and cut and LONG.replace(" ", "").endswith(cut.replace(" ", ""))
    assert kept.replace(" ", "") + cut.replace(" ", "") == LONG.replace(" ", "")
    n_est, cut_est = count_tokens(LONG)
    assert n_est > 75 and LONG.endswith(cut_est)


def test_check_data_prints_report_and_summary(tmp_path, demo_data, bad_folder, tiny_sd15, capsys):
    main(["check-data", str(demo_data), "--base_model", str(tiny_sd15)])
    out = capsys.readouterr().out
    assert f"16 images in {demo_data}: no errors" in out
    assert "usable pairs: 16 of 16" in out
    assert "colours per image: min " in out
    assert "caption length in tokens (CLIPTokenizer of the base model, limit 75): min " in out
    assert "pixel art 16, 24x24 16, portrait of bespoke punk 16" in out

    with pytest.raises(SystemExit) as raised:
        main(["check-data", str(bad_folder)])
    assert raised.value.code == 2
    out = capsys.readouterr().out
    assert "not 24x24: big.png (48x48)" in out and "usable pairs: 4 of 14" in out
    assert "a CLIP-like estimate" in out


def test_animated_pngs_links_that_lead_nowhere_and_a_very_long_caption(tmp_path):
    """Each named by file: an APNG would train on its first frame only; a link loop is no image."""
    f = tmp_path / "set"
    f.mkdir()
    pair(f, "good.png", Image.fromarray(rgb(0)))
    frames = [Image.fromarray(rgb(i)) for i in (1, 2, 3)]
    frames[0].save(f / "blink.png", format="PNG", save_all=True, append_images=frames[1:])
    (f / "blink.txt").write_text(CAPTION)
    (f / "loop.png").symlink_to(f / "loop.png")
    (f / "loop.txt").write_text(CAPTION)
    (f / "gone.png").symlink_to(tmp_path / "moved-away.png")
    (f / "gone.txt").write_text(CAPTION)
    essay = CAPTION + ", " + " ".join(f"word{i}" for i in range(5000))
    pair(f, "essay.png", Image.fromarray(rgb(4)), essay)
    report = scan_folder(f, resolution=24).report
    lines: dict[tuple[str, str], list[str]] = {}
    for finding in report.findings:
        lines.setdefault((finding.level, finding.problem), []).append(finding.item)
    assert lines[("error", "animated PNG (only its first frame would train; save one frame)")] == [
        "blink.png (3 frames)"
    ]
    assert lines[("error", "symbolic link loop")] == ["loop.png"]
    assert lines[
        ("error", f"broken symbolic link (its target {tmp_path / 'moved-away.png'} does not exist)")
    ] == ["gone.png"]
    (cut,) = lines[("warning", "caption longer than 75 tokens, the end is cut")]
    assert cut.startswith("essay.txt (") and "words cut, from 'word" in cut and len(cut) < 120
