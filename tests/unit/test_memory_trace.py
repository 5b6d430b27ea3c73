"""The soak's memory tracing: a traced process's snapshots name the site that grew, by how much."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from services.bench.memory_trace import ROOT, growth, snapshots
from services.bench.soak import SoakPlan, growth_table, soak_summary, soak_table
from services.bench.steady import SteadyRun
from services.cli import app as cli_app
from services.cli import main

#: A process that keeps 100 kB more every 10 ms at one line (GROWS_AT) until four snapshots are written,
#: and holds 1 MB allocated once before tracing's first snapshot (which must not show as growth).
TRACED = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from services.bench.memory_trace import snapshots, start_tracing

    out = Path(sys.argv[1])
    start_tracing(out, 0.3)
    once = bytes(1_000_000)  # HELD_ONCE
    kept, pace, deadline = [], threading.Event(), time.monotonic() + 60
    while len(snapshots(out)) < 4 and time.monotonic() < deadline:
        kept.append(bytes(100_000))  # GROWS_AT
        pace.wait(0.01)
    """
)


def test_a_traced_process_shows_the_line_that_grew(tmp_path: Path) -> None:
    script = tmp_path / "traced.py"
    script.write_text(TRACED)
    subprocess.run([sys.executable, str(script), str(tmp_path / "traces")], cwd=ROOT, check=True, timeout=90)
    assert len(snapshots(tmp_path / "traces")) >= 4
    grown = growth(tmp_path / "traces", since=0.0, top=10**6)
    assert grown is not None and grown["minutes"] > 0
    top = grown["sites"][0]
    assert top["where"].endswith(f"traced.py:{_line('GROWS_AT')}")
    [once] = [site for site in grown["sites"] if site["where"].endswith(f"traced.py:{_line('HELD_ONCE')}")]
    assert abs(once["grown_kb"]) < 1 and 970 < once["held_kb"] < 990  # held throughout: no growth
    # Three snapshot intervals of ~30 allocations of 100 kB each, at least two intervals' worth.
    assert top["grown_kb"] > 2 * 0.3 / 0.01 * 100 * 0.5
    assert top["blocks_grown"] > 0
    assert grown["traced_grown_mb"] > top["grown_kb"] / 1024 * 0.9
    assert growth(tmp_path / "traces", since=10**12) is None  # no snapshot after then


def _line(tag: str) -> int:
    return next(n for n, text in enumerate(TRACED.splitlines(), start=1) if tag in text)


def test_the_soak_reports_what_grew_per_request() -> None:
    plan = SoakPlan(minutes=30, rate=300, trace_memory=True)
    run = SteadyRun(300.0, 1800.0, warmup_s=300.0, monitor=True, monitor_requests_worked=540_000)
    summary = soak_summary(plan, run, {"nproc": 2})
    assert summary["command"].endswith("--trace-memory")
    titled = Console(width=400, record=True)
    titled.print(soak_table(summary))
    titled.print(soak_table(soak_summary(SoakPlan(minutes=30, rate=300), run, {"nproc": 2})))
    assert titled.export_text().count("traced its allocations") == 1  # the traced run's table only
    summary["memory_growth"] = {
        "from_s": 30.0,
        "minutes": 29.0,
        "traced_grown_mb": 20.0,
        "bytes_per_request": 40.0,
        "sites": [
            {
                "where": "streams/markers.py:120",
                "grown_kb": 10240.0,
                "held_kb": 12288.0,
                "blocks_grown": 3,
                "via": ["streams/join.py:317", "streams/markers.py:120"],
            },
        ],
    }
    console = Console(width=200, record=True)
    table = growth_table(orjson.loads(orjson.dumps(summary)))
    assert table is not None
    console.print(table)
    text = console.export_text()
    assert "streams/markers.py:120" in text and "+10.00 MB" in text and "40 bytes per" in text
    assert "streams/join.py:317" in text
    assert growth_table({"command": "modelwatch bench --soak"}) is None


def test_trace_memory_needs_the_soak() -> None:
    result = CliRunner().invoke(cli_app, ["bench", "--quick", "--trace-memory"])
    assert result.exit_code != 0 and "add --soak" in result.output


def test_trace_memory_into_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    assert main(["monitor", "--trace-memory", str(taken)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"modelwatch: error: --trace-memory names {taken}, which is not a directory"
    )
