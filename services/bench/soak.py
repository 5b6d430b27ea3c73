"""The soak (``modelwatch bench --soak``, run by hand, not in ``make test``): one replica and the Faust
monitor under the storefront simulator at a steady rate for ``minutes`` after ``warmup_minutes``, and
whether the monitor's resident memory stays flat (within 10% of its first reading after the warm-up, as
issue 14 asks). It is :func:`services.bench.steady.run_steady` with the monitor, longer, telling its
progress every minute; it reports first, last and largest resident memory after the warm-up, the
least-squares slope and the drift, for the monitor and for the replica, and the monitor's lag.

With ``trace_memory`` the monitor traces its allocations (:mod:`services.bench.memory_trace`) and the soak
reports the sites that grew most over the measured minutes, and by how many bytes a request; its CPU
figures are then those of a traced process, and the table says so.

Always, the monitor writes its memory accounts a minute (:mod:`services.bench.memory_accounts`: resident,
Python's live blocks, glibc's heap and its free part), which cost nothing measurable, and the soak reports
how each moved over the measured minutes: whether live objects or only the memory around them grew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from schemas.errors import BenchmarkError
from services.bench.cpu import cpu_pressure_us, machine
from services.bench.memory_accounts import ACCOUNTS, accounts_growth
from services.bench.memory_trace import growth
from services.bench.rig import Rig
from services.bench.stats import TARGETS, judge_targets
from services.bench.steady import SteadyRun, run_steady
from services.bench.table import verdict
from services.config import Settings
from services.model.training import DEFAULT_SESSIONS
from services.registry import Registry
from services.sandbox.versions import train_on_world

Say = Callable[[str], None]


@dataclass(frozen=True)
class SoakPlan:
    minutes: float = 30.0
    rate: float = 300.0
    warmup_minutes: float = 5.0
    train_sessions: int = DEFAULT_SESSIONS
    #: How often the run says how it goes.
    progress_every_s: float = 60.0
    #: Trace the monitor's allocations and report what grew (its CPU figures are then a traced process's).
    trace_memory: bool = False
    trace_every_s: float = 60.0

    @property
    def command(self) -> str:
        return (
            f"modelwatch bench --soak --minutes {self.minutes:g} --rate {self.rate:g}"
            + ("" if self.warmup_minutes == 5.0 else f" --warmup-minutes {self.warmup_minutes:g}")
            + (" --trace-memory" if self.trace_memory else "")
        )


def run_soak(base: Settings, plan: SoakPlan, say: Say = print) -> dict[str, Any]:
    """Run the soak; return its figures (the run, the targets judged, the machine), as JSON-ready data."""
    rig = Rig(base, say=say)
    started, pressure = time.monotonic(), cpu_pressure_us()
    failed = True
    grown: dict[str, Any] | None = None
    moved: dict[str, Any] | None = None
    try:
        rig.start_broker()
        settings = rig.settings("soak")
        say("training a version")
        version = train_on_world(
            settings, seed=0, sessions=plan.train_sessions, registry=Registry(rig.registry)
        ).version
        say(f"soak: {plan.warmup_minutes:g} min warm-up, then {plan.minutes:g} min at {plan.rate:,.0f}/s")
        traces = rig.workdir / "memory-trace"
        accounts = rig.workdir / "memory-accounts.jsonl"
        run = run_steady(
            rig,
            version,
            plan.rate,
            plan.minutes * 60.0,
            warmup_s=plan.warmup_minutes * 60.0,
            timeout=180.0,
            monitor=True,
            progress=say,
            progress_every_s=plan.progress_every_s,
            monitor_args=[
                *(["--trace-memory", str(traces)] if plan.trace_memory else ()),
                *("--memory-accounts", str(accounts), "--trace-every", f"{plan.trace_every_s:g}"),
            ],
        )
        # The measured minutes ended as run_steady returned (give or take its teardown).
        moved = accounts_growth(accounts, since=time.time() - plan.minutes * 60.0)
        if plan.trace_memory:
            grown = growth(traces, since=time.time() - plan.minutes * 60.0)
            if grown is None:
                say(f"--trace-memory: fewer than two snapshots after the warm-up in {traces}")
        failed = False
    except (TimeoutError, RuntimeError, BenchmarkError) as exc:
        raise BenchmarkError(f"{exc} (logs kept in {rig.workdir / 'logs'})") from exc
    finally:
        rig.close(keep_files=failed)
    pressure_end = cpu_pressure_us()
    contended = None
    if pressure is not None and pressure_end is not None:
        contended = (pressure_end - pressure) / 1e4 / (time.monotonic() - started)
    summary = soak_summary(plan, run, {**machine(), "cpu_pressure_pct": contended})
    if grown is not None:
        # The requests worked off in the minutes between the two snapshots, at the run's average pace.
        worked = (run.monitor_requests_worked or 0) * grown["minutes"] / plan.minutes
        per_request = grown["traced_grown_mb"] * 2**20 / worked if worked else None
        summary["memory_growth"] = {**grown, "bytes_per_request": per_request}
    summary["memory_accounts"] = moved
    return summary


def soak_summary(plan: SoakPlan, run: SteadyRun, on: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "mode": "soak",
        "command": plan.command,
        "machine": on,
        "soak": run.as_dict(),
        "soak_monitor_rss_drift": run.monitor_rss_drift,
        "soak_replica_rss_drift": run.rss_drift,
        "trace_memory": plan.trace_memory,
    }
    summary["targets"] = [t for t in judge_targets(summary) if t["key"].startswith("soak_")]
    return summary


def soak_table(summary: dict[str, Any]) -> Table:
    run, on = summary["soak"], summary["machine"]
    pressure = on.get("cpu_pressure_pct")
    table = Table(
        title=f"{summary['command']}  {summary['date']}  ({on.get('nproc')} cores"
        + ("" if pressure is None else f"; tasks waited for a CPU {pressure:.0f}% of the run")
        + f"); after {run['warmup_s'] / 60:g} min warm-up, {run['seconds'] / 60:g} min measured"
        + (
            "; the monitor traced its allocations, so its CPU is not comparable"
            if summary.get("trace_memory")
            else ""
        ),
        title_justify="left",
    )
    for column in ("process", "resident first", "last", "max", "slope", "drift", "share of a core", "target"):
        table.add_column(column, justify="left" if column in ("process", "target") else "right")
    drift_target = next(t for t in TARGETS if t.key == "soak_monitor_rss_drift")

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} MB"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    for name, prefix in (("monitor", "monitor_"), ("replica", "")):
        slope = run.get(f"{prefix}rss_slope_mb_per_min")
        table.add_row(
            name,
            mb(run.get(f"{prefix}rss_first_mb")),
            mb(run.get(f"{prefix}rss_last_mb")),
            mb(run.get(f"{prefix}rss_max_mb")),
            "-" if slope is None else f"{slope:+.3f} MB/min",
            pct(run.get(f"{prefix}rss_drift")),
            pct(run.get(f"{prefix}cpu_share")),
            f"drift {drift_target.describe()}: {verdict(drift_target, run.get('monitor_rss_drift'))}"
            if name == "monitor"
            else "",
        )
    lag = (
        f"monitor lag p50 {run.get('lag_p50_s') or 0:.2f} s, max {run.get('lag_max_s') or 0:.2f} s; "
        f"monitor CPU {run.get('monitor_cpu_us_per_worked') or 0:,.0f} µs per request it worked off "
        f"({run.get('monitor_requests_worked') or 0:,}); "
        f"{run.get('answered_per_s') or 0:,.0f}/s answered of {run['rate']:,.0f}/s offered"
    )
    table.caption = lag
    return table


def growth_table(summary: dict[str, Any]) -> Table | None:
    """The allocation sites that grew most in the traced monitor, or ``None`` without ``--trace-memory``."""
    grown = summary.get("memory_growth")
    if grown is None:
        return None
    per_request = grown.get("bytes_per_request")
    table = Table(
        title=f"what grew in the monitor over {grown['minutes']:g} min (tracemalloc): "
        f"{grown['traced_grown_mb']:+.1f} MB traced"
        + ("" if per_request is None else f", {per_request:,.0f} bytes per request worked off"),
        title_justify="left",
    )
    for column in ("allocated at", "grown", "held", "blocks", "via (outermost first)"):
        table.add_column(
            column, justify="left" if column in ("allocated at", "via (outermost first)") else "right"
        )
    for site in grown["sites"]:
        table.add_row(
            site["where"],
            f"{site['grown_kb'] / 1024:+.2f} MB",
            f"{site['held_kb'] / 1024:.2f} MB",
            f"{site['blocks_grown']:+,}",
            " > ".join(site["via"][:-1]),
        )
    return table


#: How each memory account reads in the soak's table.
_ACCOUNT_NAMES = {
    "rss_kb": "resident",
    "rss_anon_kb": "resident, anonymous",
    "py_blocks": "Python's live blocks (a count)",
    "heap_kb": "glibc's heaps",
    "heap_free_kb": "  of which free",
    "mmapped_kb": "glibc's own mappings",
    "other_anon_kb": "other anonymous (Python's arenas, stacks)",
}


def accounts_table(summary: dict[str, Any]) -> Table | None:
    """How the monitor's memory accounts moved over the measured minutes, or ``None`` if not read."""
    moved = summary.get("memory_accounts")
    if moved is None:
        return None
    table = Table(
        title=f"the monitor's memory accounts over {moved['minutes']:g} min ({moved['readings']} readings)",
        title_justify="left",
    )
    for column in ("account", "first", "last", "change"):
        table.add_column(column, justify="left" if column == "account" else "right")
    for name in ACCOUNTS:
        row = moved["accounts"][name]
        if name == "py_blocks":
            cells = [f"{v:,}" if v is not None else "-" for v in (row["first"], row["last"])]
            cells.append("-" if row["change"] is None else f"{row['change']:+,}")
        else:
            cells = [f"{v / 1024:,.1f} MB" if v is not None else "-" for v in (row["first"], row["last"])]
            cells.append("-" if row["change"] is None else f"{row['change'] / 1024:+,.1f} MB")
        table.add_row(_ACCOUNT_NAMES[name], *cells)
    return table
