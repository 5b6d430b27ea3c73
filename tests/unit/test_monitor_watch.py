"""The watch agent's plain state: a batch of the labelled stream (labelled requests and model failures) is
counted per version; after a rebalance only the owned partitions' versions are rebuilt."""

from __future__ import annotations

from typing import Any

from schemas.metrics import Counts
from services.config import AlertRule
from services.deployment.commands import make
from streams.alerts import no_baseline
from streams.decisions import Decisions
from streams.failures import Failure, encode_failures
from streams.fleet import Fleet
from streams.join import Labelled, encode_bundle
from streams.rollback import RollbackPolicy
from streams.tracker import TrackerConfig
from streams.watch import Watch

RULE = AlertRule(name="f1-low", metric="f1", below=0.3, min_samples=5, action="rollback")
CONFIG = TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,))


def watch() -> Watch:
    return Watch(CONFIG, Decisions(RollbackPolicy(0), no_baseline), no_baseline)


def bundle(version: str, start: int, n: int) -> bytes:
    return encode_bundle(
        [Labelled(f"{version}-{i}", version, 1000 * i, Counts(1, 0, 0, 1)) for i in range(start, start + n)]
    )


def test_a_batch_counts_each_version_s_requests_and_failures_and_skips_what_it_cannot_read() -> None:
    w = watch()
    failures = encode_failures("v2", [Failure("v2", "f-1", 5), Failure("v2", "f-2", 6)])
    emissions, touched = w.count(
        [(bundle("v1", 0, 5), 0, 10), (failures, 1, 3), (b"[{]", 0, 11), (b'{"v": 1}', 1, 4)],
        Fleet.of_commands([make("deploy", "v1", "r")]),
    )
    assert {t.version for t in touched} == {"v1", "v2"} and w.invalid == 2
    assert (w.trackers["v1"].total, w.trackers["v2"].failed) == (5, 2)
    assert [m["total"] for t, e in emissions for m in e.metrics if t.version == "v1"] == [5, 5]
    assert w.trackers["v1"].changes()  # persisted
    again, _ = w.count([(bundle("v1", 0, 5), 0, 10)], None)  # the same message again: nothing new
    assert again == [] and w.trackers["v1"].total == 5 and w.trackers["v1"].changes() == []


def test_after_a_rebalance_only_the_versions_of_owned_partitions_are_rebuilt() -> None:
    w = watch()
    w.count([(bundle("v1", 0, 7), 0, 1), (bundle("v2", 0, 9), 2, 1)], None)
    table: dict[str, dict[str, Any]] = {}
    for tracker in w.trackers.values():
        table.update((k, v) for k, v in tracker.changes() if v is not None)
    table["v3|000000000000"] = {"v": "v3", "b": 0, "e": []}  # blocks without a meta: never counted for good

    other = watch()
    left = other.restore(table.items(), owned={0})
    assert set(other.trackers) == {"v1"} and left == 2
    assert other.trackers["v1"].total == 7 and other.trackers["v1"].partition == 0
    assert watch().restore(table.items(), owned={0, 1, 2}) == 1
