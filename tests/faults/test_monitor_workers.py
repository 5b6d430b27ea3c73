"""Two monitor workers in one group; the one that counts the bad version's stream is SIGKILLed mid-stream
while its rollback is pending.

Each worker rebuilds only the trackers of the labelled partitions it owns, and only the owner of a
version's stream emits its metrics and decides on it. The survivor takes the dead worker's partitions,
restores their windows from the changelog, fires the alert once and orders the rollback once; the totals
are exact.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.deployment.commands import read_history
from tests.faults.conftest import FaultRow
from tests.faults.support import KEY
from tests.faults.test_monitor_kill import MONITOR, PARTITIONS, RULE, N, Shop, alerts_of, rollbacks, total
from tests.integration.monitor_support import (
    READY,
    MonitorProcess,
    read_labelled,
    topic_world,
    trace_requests,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.faults

#: What the survivor's table recovery fetched and received, in its log: once its recovery never ended,
#: three changelog partitions receiving nothing (README, Reliability; streams.fetch_guard is the mend).
#: Should it happen again, the log says where their records went.
DIAGNOSE = {"MODELWATCH_MONITOR__DEBUG_LOGGERS": '["aiokafka.consumer.fetcher", "faust.tables.recovery"]'}


def counting(monitor: MonitorProcess, version: str) -> bool:
    return re.search(rf"counting {re.escape(version)} from labelled partition \d+", monitor.log()) is not None


def test_two_monitor_workers_one_sigkilled_with_a_rollback_pending(
    kafka_bootstrap: str, tmp_path: Path, fault: FaultRow
) -> None:
    """Two monitor workers, the owner of the bad version's stream SIGKILLed with its rollback pending."""
    with topic_world(kafka_bootstrap, PARTITIONS) as plain:
        settings = plain.model_copy(update={"signing_key": SecretStr(KEY)})
        config = write_config(tmp_path / "monitor.toml", MONITOR, [RULE])
        workers = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            workers.append(
                MonitorProcess(settings, config, tmp_path / name, {"MODELWATCH_SIGNING_KEY": KEY, **DIAGNOSE})
            )
        a, b = workers
        shop = Shop(settings)
        a.start()
        b.start()
        # b's arrival moves partitions away from a: a is ready again once the group has settled.
        wait_for(lambda: a.log().count(READY) >= 2, 60, "worker a to settle with b in the group")
        try:
            shop.deploy("v1")
            shop.serve("v1", 300, seed=1, exact=(2, 0))  # healthy: F1 1.0
            wait_for(lambda: total(settings, "v1") == 300, 60, "v1 counted", every=0.2)
            shop.deploy("v2")
            stream = shop.serve_in_background("v2", 4000, seed=2, exact=(0, 1), rate=800)  # bad: F1 0.0
            wait_for(lambda: total(settings, "v2") >= 300, 60, "v2 partly counted", every=0.05)
            owner, other = (a, b) if counting(a, "v2") else (b, a)
            # Only the owner of v2's labelled partition counts it.
            assert counting(owner, "v2") and not counting(other, "v2")
            owner.kill()
            killed_total = total(settings, "v2")
            fired_before = alerts_of(settings, "v2")
            stream.join(60)
            history = wait_for(
                lambda: (h := read_history(settings)).active_version == "v1" and h, 120, "the rollback"
            )
            try:
                wait_for(lambda: total(settings, "v2") == 4000, 120, "all of v2 counted", every=0.2)
            except TimeoutError as exc:
                # Where the missing requests stopped: never labelled (the join) or labelled but not counted.
                labelled = {i["request_id"] for i in read_labelled(settings) if i["model_version"] == "v2"}
                missing = sorted(shop.request_ids["v2"] - labelled)
                trace = trace_requests(settings, missing[:20])
                raise TimeoutError(
                    f"{exc}: v2 total {total(settings, 'v2')}, {len(labelled)} distinct v2 requests "
                    f"labelled; where those never labelled went: {trace}"
                ) from exc
            survivor_log = other.log()
        finally:
            for worker in workers:
                worker.stop()

        totals = {v: total(settings, v) for v in ("v1", "v2")}
        firing = [x for x in alerts_of(settings, "v2") if x["state"] == "firing"]
        ordered = rollbacks(settings)
        sent = sum(shop.sent.values())
        counted = sum(totals.values())
        once = len(ordered) == 1 and history.active_version == "v1"
        fault.measured(sent, min(counted, sent), max(counted - sent, 0), control_loop_ok=once)
        fault.note(f"owner killed at v2 total {killed_total:,} (rule needs {N:,}); the other took over")
        fault.note(f"alerts firing {len(firing)}, rollback commands {len(ordered)}")

        assert killed_total < N and not fired_before  # the kill left the rollback pending
        assert re.search(r"restored v2 from labelled partition \d+: \d+ labelled", survivor_log), (
            "the survivor rebuilt v2 from the changelog"
        )
        assert totals == {"v1": 300, "v2": 4000}
        assert len(firing) == 1
        assert [(c["model_version"], c["alert_id"]) for c in ordered] == [("v1", firing[0]["alert_id"])]
        assert [(c["action"], c["model_version"]) for c in history.applied] == [
            ("deploy", "v1"),
            ("deploy", "v2"),
            ("rollback", "v1"),
        ]


def restorations(log: str) -> list[tuple[list[int], list[tuple[str, int]]]]:
    """Each reload of a worker's trackers: (the labelled partitions it owned, [(version, partition)])."""
    out: list[tuple[list[int], list[tuple[str, int]]]] = []
    for line in log.splitlines():
        if m := re.search(r"watching labelled partitions \[([\d, ]*)\]", line):
            out.append(([int(p) for p in m.group(1).split(",") if p.strip()], []))
        elif (m := re.search(r"restored (\S+) from labelled partition (\d+)", line)) and out:
            out[-1][1].append((m.group(1), int(m.group(2))))
    return out


def test_a_worker_that_joins_splits_the_versions_and_each_rebuilds_only_its_own(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    versions = [f"w{i}" for i in range(6)]  # enough versions for every labelled partition to hold one
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        config = write_config(tmp_path / "monitor.toml", MONITOR, [])
        workers = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            workers.append(MonitorProcess(settings, config, tmp_path / name))
        a, b = workers
        shop = Shop(settings)
        a.start()
        try:
            for seed, v in enumerate(versions):
                shop.serve(v, 100, seed=seed, exact=(1, 1))
            wait_for(lambda: all(total(settings, v) == 100 for v in versions), 60, "a to count every version")
            b.start()
            wait_for(lambda: a.log().count(READY) >= 2, 60, "worker a to settle with b in the group")
            for seed, v in enumerate(versions):
                shop.serve(v, 100, seed=10 + seed, exact=(1, 1))
            wait_for(lambda: all(total(settings, v) == 200 for v in versions), 90, "every version counted")
            # Read while both are in the group: once one stops, the other reloads with every partition.
            reloads = {name: restorations(w.log()) for name, w in (("a", a), ("b", b))}
        finally:
            for worker in workers:
                worker.stop()
        for name, loads in reloads.items():
            for owned, restored in loads:
                assert all(p in owned for _v, p in restored), (name, owned, restored)
        # Each version was counted on, and restored by, the worker that owns its partition after b joined.
        owned_a, owned_b = set(reloads["a"][-1][0]), set(reloads["b"][-1][0])
        assert owned_a and owned_b and not owned_a & owned_b
        assert {v for v, _p in reloads["a"][-1][1]} | {v for v, _p in reloads["b"][-1][1]} <= set(versions)
