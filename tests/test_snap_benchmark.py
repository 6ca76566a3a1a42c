"""benchmarks/snap.py in its small CPU mode, so it cannot rot: a few punks through the tiny VAE and two
degradations, the snap against today's lock, peers left out (they are an optional extra)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("snap_benchmark", ROOT / "benchmarks" / "snap.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def cell(row: str, column: int) -> float:
    """% pixels exact in one column of a table row (``| set | 99.10 / 50 | ...``); -1 for a refusal."""
    text = row.split("|")[column + 2].strip()
    return -1.0 if text.startswith("refused") else float(text.split("/")[0])


def test_small_benchmark_runs_and_the_snap_wins(capsys):
    benchmark.main(["--images", "4", "--sets", "vae k=8,noise,1000px", "--peers", "unfake"])
    out = capsys.readouterr().out
    rows = {
        line.split("(")[0].strip("| "): line
        for line in out.splitlines()
        if line.startswith("| ") and "px)" in line
    }
    assert set(rows) == {"vae k=8", "noise", "1000 px"}
    header = next(line for line in out.splitlines() if line.startswith("| images"))
    assert header.split("|")[2:5] == [" bespoke_pl snap ", " snap, grid known ", " today's lock "]
    assert cell(rows["vae k=8"], 0) >= cell(rows["vae k=8"], 2) > 90  # found grid >= today's lock
    assert cell(rows["noise"], 0) >= 96
    assert cell(rows["1000 px"], 0) == 100 and cell(rows["1000 px"], 2) == -1  # today's code refuses 1000 px


def test_colour_distances_mode_prints_every_space(capsys):
    benchmark.main(["--images", "2", "--sets", "noise", "--spaces"])
    out = capsys.readouterr().out
    assert "(8, 8, 8) locks to: srgb #000000" in out
    assert "| images | srgb | linear | oklab | cielab | ciede2000 |" in out
