"""Every subcommand's ordinary mistakes end in one ``error:`` line naming the file or option and exit
status 2, as ``fit``'s do; ``--debug`` or ``BESPOKE_PL_DEBUG=1`` shows the traceback instead.

Each case is a command a user ran and got a traceback from. Nothing here loads a model's weights or
touches the network.
"""

from pathlib import Path

import huggingface_hub
import pytest
import torch
from failing import fails
from PIL import Image

from bespoke_pl.commands.cli import COMMANDS, main
from bespoke_pl.errors import DatasetError


@pytest.fixture
def tiny_cache(tmp_path, tiny_sd15, monkeypatch) -> None:
    """``tiny:sd15`` resolves to the session's tiny model, not to one built in the user's cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-sd15").symlink_to(tiny_sd15, target_is_directory=True)
    monkeypatch.setenv("BESPOKE_PL_CACHE", str(cache))


GENERATE = {
    # case: (extra arguments, what the line must say); {lora} is the SDXL LoRA, {tmp} the test's folder
    "missing LoRA": (["--lora", "{tmp}/missing.safetensors", "--prompt", "x"], "{tmp}/missing.safetensors"),
    "SDXL LoRA on tiny:sd15": (
        ["--lora", "{lora}", "--prompt", "x"],
        "is a LoRA for SDXL, but base model tiny:sd15 is SD 1.5; use an SDXL base model",
    ),
    "a .ckpt as the LoRA": (["--lora", "{tmp}/model.ckpt", "--prompt", "x"], "{tmp}/model.ckpt is a pickle"),
    "no prompt": (["--lora", "{lora}"], "give a --prompt or a --prompts_file"),
    "missing prompts file": (
        ["--lora", "{lora}", "--prompts_file", "{tmp}/prompts.txt"],
        "--prompts_file: prompts file {tmp}/prompts.txt does not exist",
    ),
    "no images": (["--lora", "{lora}", "--prompt", "x", "--num_images", "0"], "--num_images must be >= 1"),
    "unknown option": (
        ["--lora", "{lora}", "--prompt", "x", "--bogus", "1"],
        "unrecognized arguments: --bogus 1 (options: python -m bespoke_pl generate --help)",
    ),
}


@pytest.mark.parametrize("case", GENERATE)
def test_generate(case, tmp_path, trained_sdxl, tiny_cache, capsys):
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.ckpt")
    extra, expected = GENERATE[case]
    fill = {"tmp": str(tmp_path), "lora": str(trained_sdxl.files["kohya"])}
    args = ["generate", "--base_model", "tiny:sd15", "--out", str(tmp_path / "out")]
    line = fails(args + [a.format(**fill) for a in extra], capsys)
    assert expected.format(**fill) in line
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_to_overwrite_a_file_that_is_no_report(tmp_path, demo_data, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    args = ["evaluate", "--generated", str(demo_data), "--data_root", str(demo_data)]
    line = fails([*args, "--out", str(readme)], capsys)
    assert line == f"error: --out {readme} exists and is not an evaluation report; choose another --out"
    assert readme.read_text() == "# notes\n"
    line = fails(["evaluate", "--generated", str(tmp_path / "nope"), "--data_root", str(demo_data)], capsys)
    assert f"generated folder {tmp_path / 'nope'} does not exist" in line


@pytest.mark.parametrize("command", ["tiny", "pretrain-tiny"])
def test_output_folder_that_is_not_empty(command, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    line = fails([command, "--out", str(taken)], capsys)
    assert line == f"error: --out {taken} exists and is not an empty folder; give a new or empty folder"
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]


def test_roundtrip_with_a_hub_model_offline(tmp_path, demo_data, monkeypatch, capsys):
    """Not cached and offline: one line naming the model, at once: one probe of the hub, no retries."""
    requests = []

    class NoNetwork:
        def head(self, url, **kwargs):
            requests.append(url)
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: NoNetwork())
    repo = "bespoke-pl-tests/never-cached-sdxl"  # a real model's id could be in this machine's cache
    args = ["roundtrip", "--base_model", repo, "--data_root", str(demo_data), "--scales", "1", "8"]
    line = fails(args, capsys)
    assert line.startswith(f"error: base model {repo} is not in the Hugging Face cache")
    assert "(ConnectionError: Name or service not known), so it cannot be read offline" in line
    assert line.endswith("give a local diffusers folder or a single .safetensors file")
    assert len(requests) == 1
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "(HF_HUB_OFFLINE is set)" in fails(args, capsys)
    assert len(requests) == 1  # offline mode: not even the probe
    line = fails(["roundtrip", "--base_model", str(tmp_path / "nope"), "--data_root", str(demo_data)], capsys)
    assert line == f"error: base model {tmp_path / 'nope'} does not exist"


def test_check_data_on_a_missing_folder(tmp_path, capsys):
    line = fails(["check-data", str(tmp_path / "nope")], capsys)
    assert line == f"error: training folder {tmp_path / 'nope'} does not exist or is not a folder"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_names_the_module(command, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m bespoke_pl {command} ")
    line = fails([command, "--no_such_option", "1"], capsys)
    assert line.endswith(f"(options: python -m bespoke_pl {command} --help)")


def test_options_hint_without_a_subcommand(capsys):
    line = fails(["--no_such_option"], capsys)
    assert line == "error: unrecognized arguments: --no_such_option (options: python -m bespoke_pl --help)"


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(how, tmp_path, monkeypatch):
    args = ["check-data", str(tmp_path / "nope")]
    if how == "flag":
        args.insert(1, "--debug")  # anywhere: it is taken out before the command's own parser sees it
    else:
        monkeypatch.setenv("BESPOKE_PL_DEBUG", "1")
    with pytest.raises(DatasetError, match="does not exist or is not a folder") as raised:
        main(args)
    assert Path(raised.traceback[-1].path).name == "check_data.py"  # raised where it happened


def test_wrong_size_images_suggest_their_resolution(tmp_path, capsys):
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("pixel art")
    with pytest.raises(SystemExit) as raised:
        main(["check-data", str(folder)])
    assert raised.value.code == 2
    out = capsys.readouterr().out
    assert "all 3 images are 32x32: for art of that size give --data.resolution 32" in out
    main(["check-data", str(folder), "--resolution", "32"])  # and with it the folder is fine


def test_evaluate_on_a_samples_folder_measures_the_art_only(tmp_path, capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (24, 24), (i, 0, 0)).save(folder / f"0{i}-seed4{i}.png")
        for suffix, side in (("-raw", 192), ("-snapped", 24), ("-preview", 192)):
            Image.new("RGB", (side, side), (i, 0, 0)).save(folder / f"0{i}-seed4{i}{suffix}.png")
    main(["evaluate", "--generated", str(folder), "--data_root", "demo:punks", "--out", "null"])
    out = capsys.readouterr().out
    assert "00-seed40.png" in out and "-raw" not in out and "-preview" not in out
