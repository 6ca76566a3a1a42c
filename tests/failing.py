"""Running the CLI in a test and expecting one ``error:`` line, the way a user would see a mistake."""

import pytest

from bespoke_pl.commands.cli import main


def fails(args: list[str], capsys, code: int = 2, prefix: str = "error: ") -> str:
    """Run the CLI; expect exit status ``code`` and exactly one ``prefix`` line on stderr; return it."""
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(prefix)
    return lines[0]
