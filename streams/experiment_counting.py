"""How one evidence message counts into its experiment's comparison
(:meth:`streams.experiments.Experiments.count`).

The message (:mod:`streams.evidence`) carries a canary's arms (rows ``[arm, user, ts, tp, fp, fn,
request_id]``, arm 1 for the candidate's) or a shadow's pairs (rows ``[ts, the candidate's tp, fp, fn, the
incumbent's tp, fp, fn, request_id]``), and the join's event-time clock. From it: the run's clock
(:func:`run_clock`), the rows whose request was not counted before (:func:`fresh_rows`, against the join's
replays), those rows added to the comparison (:func:`add_rows`), and the end of a run that has taken too
long (:func:`deadline`). Functions of the run and the message alone: no Kafka, no state of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from streams.comparison import Comparison, Decision, Mode, request_f1
from streams.pre_periods import PrePeriods, add_canary

if TYPE_CHECKING:
    from streams.experiments import Run


def run_clock(run: Run, arms: list[list[Any]], pairs: list[list[Any]], watermark: int | None) -> int | None:
    """The experiment's event-time clock by this message: the join's watermark, where the message has it
    (one far-future timestamp cannot move it: it is the least of the source partitions' latest
    plausible event times); else, from an older monitor's join, the latest request of the evidence.
    The first one is where the experiment started as far as the monitor knows
    (:attr:`streams.experiments.Run.since_ms`)."""
    ts = [int(p[0]) for p in pairs] if run.comparison.mode is Mode.SHADOW else [int(a[2]) for a in arms]
    clock = watermark if watermark is not None else max(ts, default=None)
    if run.since_ms is None and clock is not None and clock >= 0:
        # Not before the command was issued: a monitor behind its traffic (a backlog, a restart after an
        # outage) first sees the experiment at a clock that old, and would count the backlog against
        # max_duration_s. The issuer's clock can only make the deadline later, never a decision wrong.
        issued = run.experiment.issued_ms
        run.since_ms = clock if issued is None else max(clock, issued)
    return clock


def fresh_rows(run: Run, rows: list[list[Any]], width: int, clock: int) -> list[list[Any]]:
    """The rows whose request was not counted before (a row from an older join has no request id)."""
    ids = [str(r[width]) if len(r) > width else None for r in rows]
    fresh = iter(run.counted.fresh([rid for rid in ids if rid is not None], clock))
    return [r for r, rid in zip(rows, ids, strict=True) if rid is None or next(fresh)]


def add_rows(
    comparison: Comparison,
    arms: list[list[Any]],
    pairs: list[list[Any]],
    watermark: int | None = None,
    pre_periods: PrePeriods | None = None,
    incumbent: str = "",
) -> None:
    """Add a message's fresh rows to the comparison: a shadow's pairs as paired observations; a canary's
    arms from the experiment's start on (the earliest request of its first candidate evidence: the
    incumbent's requests from before it are left out), with the users' pre-periods under ``incumbent``."""
    if comparison.mode is Mode.SHADOW:
        if not pairs:
            return
        a = np.asarray([p[1:7] for p in pairs], dtype=np.float64)
        ts = [int(p[0]) for p in pairs]
        if comparison.started_ms is None:
            comparison.started_ms = min(ts)
        clock = watermark if watermark is not None else max(ts)
        comparison.add_paired(request_f1(*a[:, 0:3].T), request_f1(*a[:, 3:6].T), clock)
        return
    if comparison.started_ms is None:
        first = [int(a[2]) for a in arms if a[0] == 1]
        if not first:
            return  # no candidate answer labelled yet: the experiment's start is not known
        comparison.started_ms = min(first)
    start = comparison.started_ms
    kept = [a for a in arms if a[0] == 1 or int(a[2]) >= start]
    if not kept:
        return
    c = [a for a in kept if a[0] == 1]
    i = [a for a in kept if a[0] == 0]

    def f1(rows: list[list[Any]]) -> np.ndarray:
        counts = np.asarray([r[3:6] for r in rows], dtype=np.float64).reshape(-1, 3)
        return request_f1(counts[:, 0], counts[:, 1], counts[:, 2])

    latest = watermark if watermark is not None else max(int(a[2]) for a in kept)
    # With the users' pre-periods under the incumbent before the start (a shadow's pairs need none:
    # a request's own difficulty, and its user's, cancels in its paired difference).
    c_users, i_users = [str(r[1]) for r in c], [str(r[1]) for r in i]
    add_canary(comparison, f1(c), c_users, f1(i), i_users, latest, pre_periods, incumbent)


def deadline(run: Run, clock: int | None) -> None:
    """Move the run's clock to ``clock``, and end it as inconclusive once ``max_duration_s`` of event
    time has passed since its start: the earliest of its first labelled candidate request and the
    clock when the monitor first saw it run, so an experiment without labelled traffic ends too."""
    comparison = run.comparison
    if clock is None or comparison.decision is not Decision.RUNNING:
        return
    latest = comparison.latest_ms = max(clock, comparison.latest_ms or clock)
    starts = [t for t in (comparison.started_ms, run.since_ms) if t is not None]
    if starts and latest - min(starts) >= comparison.settings.max_duration_s * 1000:
        # Moved only now, as it decides (a decision is final): a canary's arms never saw this start.
        comparison.started_ms = min(starts)
        comparison.tick(latest)
