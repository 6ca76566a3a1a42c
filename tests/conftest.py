"""Session-wide fixtures: tiny models and a demo data set, generated once per test run.

They are shared by every test in the session, so tests must treat them as read-only.
"""

from pathlib import Path

import pytest

from bespoke_pl.demo_data import write_demo_dataset
from bespoke_pl.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1.5-shaped pipeline folder (seed 0)."""
    return write_tiny_model("sd15", tmp_path_factory.mktemp("tiny") / "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-shaped pipeline folder (seed 0)."""
    return write_tiny_model("sdxl", tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 16 demo punks: punk_000.png + punk_000.txt ... punk_015."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "punks", count=16)
