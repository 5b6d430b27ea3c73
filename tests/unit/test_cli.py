"""The CLI reads clearly: help everywhere, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.cli import app, main


def _commands(group=app, path=()):  # type: ignore[no-untyped-def]
    import typer.main

    cmd = typer.main.get_command(group)
    stack = [(cmd, list(path))]
    while stack:
        c, p = stack.pop()
        yield p
        for name, sub in getattr(c, "commands", {}).items():
            stack.append((sub, [*p, name]))


@pytest.mark.parametrize("path", list(_commands()), ids=lambda p: " ".join(p) or "modelwatch")
def test_every_command_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out
    assert len(out.strip().splitlines()) >= 3


def test_wrong_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "start", "--bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modelwatch: error: No such option: --bogus")
    assert len(err.splitlines()) == 1


def test_domain_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "start", "--nodes", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "modelwatch: error: --nodes must be 1 or 3, not 2"


def test_console_script_runs_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "topics", "create", "--partitions", "zero"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--partitions" in proc.stderr
