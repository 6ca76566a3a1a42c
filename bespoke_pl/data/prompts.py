"""Prompt files: one prompt per line, ``#`` lines and blank lines ignored (``generate`` and the samples)."""

from __future__ import annotations

from pathlib import Path


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    """The prompt, then the non-empty, non-``#`` lines of the prompts file."""
    prompts = [prompt] if prompt else []
    if prompts_file:
        path = Path(prompts_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError("give a --prompt or a --prompts_file with at least one prompt")
    return prompts
