"""Every shell command the README and docs/ show, run as written, page by page in the README's order.

How they run offline is in ``tests/documented.py``. The README's demo command runs once per session
(the ``demo_workspace`` fixture, which ``test_learning`` reads too); the rest run after it in the same
folder, so that the commands that use the demo's LoRA and samples find them where the docs say.
"""

from pathlib import Path

import pytest
from documented import DEMO, README, ROOT, documented_commands, pages

# The front door: what the project is, the demo, the real runs, what a run writes, and where to read on.
README_LINES = 200


def test_every_command_is_run_or_marked():
    found = documented_commands()
    assert len(found) >= 15
    for command in found:
        assert command.line.startswith(("python -m bespoke_pl", "python -m pytest", "pip install", "tensorboard", "python benchmarks/",
                                        "ruff")) or command.skipped, f"{command.page}: {command.line}"  # fmt: skip
    readme = [c.line for c in found if c.page == "README.md"]
    assert readme[1] == DEMO, "the README's second command is the offline demo"
    # The README's test command is the one CI runs.
    assert "python -m pytest -q" in readme
    assert "\npython -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_a_front_door_to_every_docs_page():
    assert len(README.read_text().splitlines()) <= README_LINES
    linked = {path.name for path in pages()[1:]}
    assert linked == {path.name for path in (ROOT / "docs").glob("*.md")}, "every docs page is linked"
    for path in pages()[1:]:
        assert path.read_text().startswith("# "), f"{path.name}: one subject, one title"


@pytest.mark.slow
def test_the_documented_commands_run_as_written(demo_workspace):
    workspace, demo = demo_workspace
    ran = [DEMO]
    for command in documented_commands():
        if command.skipped or command.line == DEMO:
            continue
        workspace.run(command.line)
        ran.append(command.line)
    assert len(ran) >= 12
    work = workspace.work
    # What the demo and the commands after it wrote, where the docs say.
    assert (demo / "demo-000003.safetensors").is_file() and (demo / "contact_sheet.png").is_file()
    assert (work / "logs" / "demo" / "evaluation.json").is_file()
    assert len(list((work / "generated").glob("*.png"))) >= 4
    kohya_run = work / "kohya_output_sdxl" / "bespoke_sdxl" / "version_0"
    assert (kohya_run / "bespoke_sdxl-000001.safetensors").is_file() and (work / "kohya-sd15.yaml").is_file()
    assert (work / "logs" / "bespoke-sdxl" / "version_0").is_dir() and Path(
        work / "tiny-punks-sd15-2"
    ).is_dir()
