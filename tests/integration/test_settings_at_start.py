"""A misspelt setting stops the long-running processes at start, in one line naming it and its file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from services.sandbox.processes import modelwatch_command


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELWATCH_CONFIG"}
    return subprocess.run(
        [*modelwatch_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", [["serve", "--instance", "typo"], ["monitor"]])
def test_a_misspelt_section_in_modelwatch_toml_stops_it_at_start(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "modelwatch.toml").write_text(
        '[[alert]]\nname = "f1-low"\nmetric = "f1"\nbelow = 0.3\naction = "rollback"\n'
    )
    done = run(command, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "modelwatch: error: unknown setting 'alert' in modelwatch.toml (a typo? see services/config/)"
    ], done.stderr[-2000:]


def test_a_misspelt_key_in_the_monitor_s_config_stops_it_at_start(tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text("[monitor]\nemit_every_s = 5\nrollback_coldown_s = 30\n")
    done = run(["monitor", "--config", str(config)], tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert f"unknown setting 'monitor.rollback_coldown_s' in {config}" in line
