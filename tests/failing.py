"""Running the CLI in a test as a user would, and expecting the way it ends: an exit status and lines."""

from bespoke_pl.commands.cli import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """main(args) -> (exit status, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def failure_lines(args: list[str], capsys, code: int) -> list[str]:
    """Run the CLI; expect exit status ``code`` and no traceback (a thread's too); return stderr's lines."""
    status, out, err = run(args, capsys)
    assert status == code, err
    assert "Traceback" not in err + out and "Exception in thread" not in err
    return err.splitlines()


def fails(args: list[str], capsys, code: int = 2, prefix: str = "error: ") -> str:
    """Run the CLI; expect exit status ``code`` and exactly one ``prefix`` line on stderr; return it."""
    lines = failure_lines(args, capsys, code)
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix)
    return lines[0]
