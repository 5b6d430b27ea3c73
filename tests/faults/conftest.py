"""The fault suite's ledger: each fault test records one row (requests sent, answered, lost, duplicated,
whether the control loop still worked), and the session ends with the table, printed and written to
``out/faults/summary.md`` and ``summary.json`` (``MODELWATCH_FAULT_REPORT_DIR`` to put them elsewhere).

Faults that other suites already cover (the owners' integration tests) are listed in the same table with
the test that covers them and its result, so one table answers "what was tried": from this session, or
else from the last session that ran it (``make test`` runs them in the parallel run before the fault
suite; that session leaves their results in ``covered-elsewhere.json`` beside the table).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.model.recommender import Recommender
from services.sandbox.world import World

# The integration tests' collector and replicas fixtures, shared: a fixture is found by its name here.
from tests.integration.conftest import collector, replicas  # noqa: F401


@dataclass
class FaultRow:
    """One fault and what it cost. ``None`` means "not measured by this test"."""

    fault: str
    test: str
    sent: int | None = None
    answered: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    control_loop_ok: bool | None = None
    notes: list[str] = field(default_factory=list)
    result: str = "not finished"
    seconds: float = 0.0

    def measured(
        self, sent: int, answered: int, duplicated: int, control_loop_ok: bool | None = None
    ) -> None:
        """Set the counts: ``answered`` distinct requests out of ``sent``, ``duplicated`` extra answers."""
        self.sent, self.answered, self.duplicated = sent, answered, duplicated
        self.lost = sent - answered
        if control_loop_ok is not None:
            self.control_loop_ok = control_loop_ok

    def note(self, text: str) -> None:
        self.notes.append(text)


#: Faults whose tests live with their owners: (fault, test node id). Their result comes from this session.
COVERED_ELSEWHERE: tuple[tuple[str, str], ...] = (
    (
        "tampered artifact, forged / unsigned command with a key, unknown version, replayed and older "
        "commands: each rejected with a model-event, the current model keeps serving",
        "tests/integration/test_serve.py::"
        "test_tampered_forged_replayed_and_unknown_commands_are_rejected_and_serving_goes_on",
    ),
    (
        "malformed requests of every kind (null, non-UTF-8, over 1 MB, schema breaks): dead-lettered with "
        "the reason, every valid one answered",
        "tests/integration/test_serve.py::"
        "test_malformed_requests_are_dead_lettered_and_every_valid_one_answered",
    ),
    (
        "storefront principal writes a model command on a SASL/SCRAM broker with ACLs: refused "
        "(TOPIC_AUTHORIZATION_FAILED); operator and monitor may",
        "tests/integration/test_security.py::test_only_operators_and_the_monitor_may_write_commands",
    ),
    (
        "wrong SCRAM password: authentication refused",
        "tests/integration/test_security.py::test_a_wrong_password_is_refused",
    ),
    (
        "monitor SIGKILLed mid-stream, restarted with the faust CLI: windows continue, exact vs "
        "scikit-learn, the firing alert neither lost nor repeated",
        "tests/integration/test_monitor_restart.py::test_sigkill_mid_stream_then_restart",
    ),
    (
        "outcomes with ts in microseconds, in seconds, years ahead and years behind on every partition, "
        "amid healthy traffic: each dead-lettered naming ts, none expires a healthy request, no alert",
        "tests/integration/test_join_time.py::test_bad_outcome_timestamps_are_dead_lettered_and_expire_nothing",
    ),
    (
        "requests with ts in microseconds, in seconds, years ahead and years behind on every partition: "
        "each dead-lettered by the service naming ts, every valid one answered with its request_ts",
        "tests/integration/test_join_time.py::"
        "test_requests_with_an_implausible_ts_are_dead_lettered_by_the_service",
    ),
    (
        "storefront clock 3 minutes ahead, a replica's 4 minutes behind: every request labelled, no alert",
        "tests/integration/test_join_time.py::test_skewed_storefront_and_replica_clocks_label_as_before",
    ),
    (
        "storefront on confluent-kafka's default partitioner (consistent_random) beside the service's "
        "murmur2: every outcome joins, none with an outcome expires",
        "tests/integration/test_join_time.py::"
        "test_every_outcome_joins_whatever_partitioner_the_producers_use[murmur2_random-default]",
    ),
    (
        "scoring service on the default partitioner beside a storefront on murmur2: every outcome joins",
        "tests/integration/test_join_time.py::"
        "test_every_outcome_joins_whatever_partitioner_the_producers_use[default-murmur2_random]",
    ),
    (
        "one outcome partition quiet, then all: pending predictions expire within the label window, the "
        "allowance and the idle timeout, then by the clock less the past tolerance; nothing left pending",
        "tests/integration/test_join_time.py::test_quiet_outcome_partitions_close_their_windows",
    ),
)

_ROW = pytest.StashKey[FaultRow]()
_ROW_PROPERTY = "fault_row"


@pytest.fixture(scope="session")
def world() -> World:
    return World.generate(11, n_users=400, n_items=150)


@pytest.fixture(scope="session")
def models(world: World) -> tuple[Recommender, Recommender]:
    """Two real, quickly trained versions (different ranks, so their scores differ)."""
    log = world.interactions(3000, seed=1)
    return Recommender(n_components=4).fit(log), Recommender(n_components=2).fit(log)


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Iterator[FaultRow]:
    """This test's row in the table; the test names the fault and fills in what it measured."""
    doc = (request.function.__doc__ or request.node.name).strip().splitlines()[0]
    row = FaultRow(fault=doc.rstrip("."), test=request.node.nodeid)
    request.node.stash[_ROW] = row
    started = time.monotonic()
    yield row
    row.seconds = round(time.monotonic() - started, 1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: Any = yield
    row = item.stash.get(_ROW, None)
    if row is not None:
        if report.when == "call" or (report.when == "setup" and report.failed):
            row.result = report.outcome
        elif report.when == "teardown":
            if report.failed and row.result == "passed":
                row.result = "failed in teardown"
            # The row travels with the report: under pytest-xdist the test ran in a worker, and the table is
            # made where the reports end up.
            report.user_properties.append((_ROW_PROPERTY, asdict(row)))
    return report


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _outcomes(terminalreporter: Any) -> dict[str, str]:
    seen: dict[str, str] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", None)
            if nodeid and getattr(report, "when", "call") in ("call", "setup"):
                seen.setdefault(nodeid, outcome)
    return seen


def markdown(rows: list[FaultRow], elsewhere: list[dict[str, str]]) -> str:
    lines = [
        "| fault | sent | answered | lost | duplicated | control loop ok | result | s | notes |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in rows:
        cells = [r.fault, r.sent, r.answered, r.lost, r.duplicated, r.control_loop_ok, r.result, r.seconds]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " | " + _cell("; ".join(r.notes)) + " |")
    if elsewhere:
        lines += ["", "| also covered (by the owners' tests) | test | result |", "| --- | --- | --- |"]
        lines += [f"| {_cell(e['fault'])} | `{e['test']}` | {e['result']} |" for e in elsewhere]
    return "\n".join(lines) + "\n"


class FaultLedger:
    """The table's rows, read from the test reports, and the table at the end of the session.

    A plugin that tests/conftest.py registers in the process that shows the session (under pytest-xdist the
    controller, which never loads this conftest: it collects nothing)."""

    def __init__(self) -> None:
        self.rows: list[FaultRow] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.rows += [FaultRow(**value) for name, value in report.user_properties if name == _ROW_PROPERTY]

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        out = Path(os.environ.get("MODELWATCH_FAULT_REPORT_DIR") or config.rootpath / "out" / "faults")
        earlier = out / "covered-elsewhere.json"
        outcomes = _outcomes(terminalreporter)
        ran_here = {test: outcomes[test] for _, test in COVERED_ELSEWHERE if test in outcomes}
        if not self.rows:
            # make test runs the owners' tests first, in another session: their results wait for the table.
            if ran_here:
                out.mkdir(parents=True, exist_ok=True)
                at = time.strftime("%Y-%m-%d %H:%M")
                earlier.write_text(json.dumps({t: f"{r} (pytest run of {at})" for t, r in ran_here.items()}))
            return
        before: dict[str, str] = json.loads(earlier.read_text()) if earlier.exists() else {}
        elsewhere = [
            {"fault": fault, "test": test, "result": ran_here.get(test) or before.get(test, "not run")}
            for fault, test in COVERED_ELSEWHERE
        ]
        table = markdown(self.rows, elsewhere)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(table)
        (out / "summary.json").write_text(
            json.dumps({"faults": [asdict(r) for r in self.rows], "covered_elsewhere": elsewhere}, indent=2)
        )
        terminalreporter.write_sep("=", "fault suite")
        for line in table.splitlines():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(written to {out / 'summary.md'} and summary.json)")
