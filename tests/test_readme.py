"""Every shell command the README shows, run as written, in README order, in a fresh folder.

Offline, the way a user without a download would run them: hub ids become the tiny specs of the same
family, ``~/bespokepunks`` is a folder of demo punks in a temporary ``$HOME``, and the real configs'
runs are cut to one batch per epoch, one two-step sample and a one-timestep validation (``SMALL_RUN``),
generating with their LoRA to two steps, the pretraining to a few steps measured on two samples. A command
whose comment says ``[download]`` or ``[gpu]`` is not run (and must say so); ``python -m pytest -q`` is the
test command ``.ci/run`` runs. The kohya configs find the same punks in ``train/10_bespokepunks`` (kohya's
folder naming).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bespoke_pl.data.demo import write_demo_dataset

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
SKIP_MARKERS = ("[download]", "[gpu]")
HUB_IDS = {
    "stabilityai/stable-diffusion-xl-base-1.0": "tiny:sdxl",
    "runwayml/stable-diffusion-v1-5": "tiny:sd15",
}
# At the real configs' 960 / 576 px even the tiny VAE is slow on a CPU: one batch of one image per epoch,
# its own image encoded (no cache of all 48), one prompt of two steps sampled, two images round-tripped,
# the validation (3 held-out punks and 3 training ones) at one timestep instead of four.
SMALL_RUN = (
    "--trainer.limit_train_batches 1 --data.batch_size 1 --model.cache_latents false --sample.steps 2 "
    "--sample.num_prompts 1 --roundtrip.max_images 2 --model.validation_timesteps 1"
)
FAST = {
    "configs/sdxl.yaml": f"--model.base_model tiny:sdxl {SMALL_RUN}",
    "configs/sd15.yaml": f"--model.base_model tiny:sd15 {SMALL_RUN}",
    # from-kohya's SDXL config: one epoch at 192 px, no samples (test_from_kohya checks its native scale
    # and trains with its prompts file); at its 960 px the tiny VAE alone took over a minute here
    "--config kohya-sdxl.yaml": f"--model.base_model tiny:sdxl {SMALL_RUN} --trainer.max_epochs 1 "
    "--sample.every_n_epochs 0 --model.pixel_scale 8",
    "--lora logs/bespoke-sdxl/": "--steps 2",
    "pretrain-tiny --family": "--vae_steps 2 --decoder_steps 2 --refine_steps 2 --unet_steps 2 --batch_size 2 --samples 2",
}


def readme_commands() -> list[tuple[str, str]]:
    """``(command, comment)`` for every line of every ```bash block, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            code, _, comment = line.partition(" #") if not line.lstrip().startswith("#") else ("", "", line)
            if code.strip():
                commands.append((" ".join(code.split()), comment.strip()))
    return commands


def offline(command: str) -> str:
    """The command as a user without a download runs it (see the module docstring)."""
    for hub_id, spec in HUB_IDS.items():
        command = command.replace(hub_id, spec)
    for needle, extra in FAST.items():
        if needle in command:
            command += " " + extra
    return command


def run_tensorboard(command: str, cwd: Path, env: dict) -> None:
    """A server: it must come up and say where, then it is stopped."""
    process = subprocess.Popen(
        shlex.split(command) + ["--port", "0"], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if "http://" in line:
                return
            if not line and process.poll() is not None:
                break
        pytest.fail(f"{command}: tensorboard did not start")
    finally:
        process.kill()
        process.wait()


def test_every_command_is_run_or_marked():
    commands = readme_commands()
    assert len(commands) >= 15
    for command, comment in commands:
        assert command.startswith(("python -m bespoke_pl", "python -m pytest", "pip install", "tensorboard",
                                   "ruff")) or any(m in comment for m in SKIP_MARKERS), command  # fmt: skip
    # The README's test command is the one CI runs.
    assert "python -m pytest -q" in [c for c, _ in commands]
    assert "\npython -m pytest -q\n" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_the_readme_commands_run_as_written(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    write_demo_dataset(home / "bespokepunks")
    (work / "train").mkdir(parents=True)
    (work / "train" / "10_bespokepunks").symlink_to(home / "bespokepunks", target_is_directory=True)
    shutil.copytree(ROOT / "configs", work / "configs")
    # ruff formats and checks the sources: on a copy, so that the test never edits the tree it tests.
    for name in ("bespoke_pl", "tests", "benchmarks", "pyproject.toml"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, work / name)
    env = os.environ | {"HOME": str(home), "PYTHONPATH": str(ROOT)}
    ran = []
    for command, comment in readme_commands():
        if any(marker in comment for marker in SKIP_MARKERS) or command == "python -m pytest -q":
            continue
        command = offline(command)
        if command.startswith("tensorboard"):
            run_tensorboard(command, work, env)
        else:
            shell = command.replace("python -m", f"{sys.executable} -m")
            done = subprocess.run(shell, shell=True, cwd=work, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr, f"{command}\n{done.stderr[-3000:]}"
        ran.append(command)
    assert len(ran) >= 12
    # What the demo and the commands after it wrote, where the README says.
    demo = work / "logs" / "demo" / "version_0"
    assert (demo / "demo-000003.safetensors").is_file() and (demo / "contact_sheet.png").is_file()
    assert (work / "logs" / "demo" / "evaluation.json").is_file()
    assert len(list((work / "generated").glob("*.png"))) >= 4
    kohya_run = work / "kohya_output_sdxl" / "bespoke_sdxl" / "version_0"
    assert (kohya_run / "bespoke_sdxl-000001.safetensors").is_file() and (work / "kohya-sd15.yaml").is_file()
