"""The shell commands the README and docs/ show, and a workspace that runs them as a user would, in-process.

A user runs them in a checkout with ``~/bespokepunks`` holding their punks and no download. Here
``python -m bespoke_pl ...`` runs in-process through ``main(argv)`` (the same function ``__main__`` calls,
without paying a fresh interpreter's imports each time) in a work folder with a copy of ``configs/``, with
``~`` meaning a temporary home. Hub ids become the tiny specs of the same family, and the real configs' runs
are cut short (``FAST``). A command whose comment says ``[download]``, ``[gpu]`` or ``[slow]`` is not run
(and must say so); ``python -m pytest -q`` is the test command ``.ci/run`` runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bespoke_pl.data.demo import write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKERS = ("[download]", "[gpu]", "[slow]")
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
    "pretrain-tiny --measure": "--samples 2",
}
DEMO = "python -m bespoke_pl fit --config configs/demo.yaml"


@dataclass(frozen=True)
class Command:
    page: str
    line: str
    comment: str

    @property
    def skipped(self) -> bool:
        return any(marker in self.comment for marker in SKIP_MARKERS) or self.line == "python -m pytest -q"


def pages() -> list[Path]:
    """The README, then every docs/ page in the order of the README's links to them."""
    linked = re.findall(r"\]\((docs/[\w.-]+\.md)\)", README.read_text())
    return [README] + [ROOT / link for link in dict.fromkeys(linked)]


def commands(page: Path) -> list[Command]:
    """Every line of every ```bash block of one page, continuation lines joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            code, _, comment = line.partition(" #") if not line.lstrip().startswith("#") else ("", "", line)
            if code.strip():
                found.append(
                    Command(page.relative_to(ROOT).as_posix(), " ".join(code.split()), comment.strip())
                )
    return found


def documented_commands() -> list[Command]:
    return [command for page in pages() for command in commands(page)]


def offline(line: str) -> str:
    """The command as a user without a download runs it (see the module docstring)."""
    for hub_id, spec in HUB_IDS.items():
        line = line.replace(hub_id, spec)
    for needle, extra in FAST.items():
        if needle in line:
            line += " " + extra
    return line


@dataclass
class Workspace:
    """A user's checkout: ``work`` (configs/, where commands run) and ``home`` (``~/bespokepunks``)."""

    home: Path
    work: Path

    @classmethod
    def create(cls, root: Path) -> Workspace:
        home, work = root / "home", root / "work"
        write_demo_dataset(home / "bespokepunks")
        (work / "train").mkdir(parents=True)
        (work / "train" / "10_bespokepunks").symlink_to(home / "bespokepunks", target_is_directory=True)
        shutil.copytree(ROOT / "configs", work / "configs")
        # ruff formats and checks the sources: on a copy, so that the test never edits the tree it tests.
        for name in ("bespoke_pl", "tests", "benchmarks"):
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work)
        return cls(home, work)

    def run(self, line: str) -> None:
        """Run one documented command line, offline; fails the test on a non-zero exit."""
        line = offline(line)
        if line.startswith("python -m bespoke_pl"):
            self._in_process(line)
        elif line.startswith("tensorboard"):
            self._tensorboard(line)
        else:
            env = os.environ | {"HOME": str(self.home), "PYTHONPATH": str(ROOT)}
            shell = line.replace("python -m", f"{sys.executable} -m")
            done = subprocess.run(shell, shell=True, cwd=self.work, env=env, capture_output=True, text=True)
            assert done.returncode == 0, (
                f"{line}\nexit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )

    def _in_process(self, line: str) -> None:
        from bespoke_pl.commands.cli import main

        # the shell expands ~ at the start of a word
        argv = [str(self.home) + arg[1:] if arg.startswith("~/") else arg for arg in shlex.split(line)[3:]]
        with _inside(self.work, self.home):
            try:
                main(argv)
            except SystemExit as stop:
                assert stop.code in (None, 0), f"{line}\nexit {stop.code}"

    def _tensorboard(self, line: str) -> None:
        """A server: it must come up and say where, then it is stopped."""
        env = os.environ | {"HOME": str(self.home)}
        process = subprocess.Popen(
            [*shlex.split(line), "--port", "0"], cwd=self.work, env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                output = process.stderr.readline()
                if "http://" in output:
                    return
                if not output and process.poll() is not None:
                    break
            raise AssertionError(f"{line}: tensorboard did not start")
        finally:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _inside(work: Path, home: Path):
    """The command's working folder and home, restored afterwards."""
    cwd, old_home = Path.cwd(), os.environ.get("HOME")
    os.chdir(work)
    os.environ["HOME"] = str(home)
    try:
        yield
    finally:
        os.chdir(cwd)
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home
