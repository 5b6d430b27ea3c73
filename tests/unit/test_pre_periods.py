"""The users' pre-periods a canary is adjusted by (streams.pre_periods): built from the incumbent's labelled
requests before the experiment's start only, bounded, restored from the changelogged records after a
restart without losing or double-counting a message, and passed to the comparison by the monitor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.metrics import Counts
from services.config import ExperimentSettings
from services.deployment.commands import make
from services.deployment.experiments import Experiment
from services.serving.experiment import on_candidate
from streams import pre_period_records
from streams.alerts import no_baseline
from streams.decisions import Decisions
from streams.evidence import evidence
from streams.experiment_agents import ExperimentAgents
from streams.experiments import Experiments
from streams.fleet import Fleet
from streams.join import Labelled, encode_bundle
from streams.pre_periods import BUCKETS, KEY_PREFIX, PrePeriods
from streams.rollback import RollbackPolicy
from streams.tracker import TrackerConfig
from streams.watch import Watch

HIT = Counts(1, 0, 0, 2)  # per-request F1 1
MISS = Counts(0, 1, 1, 1)  # per-request F1 0
HOUR_MS = 3_600_000
BUCKET_MS = HOUR_MS // BUCKETS
T0 = 100 * HOUR_MS  # a bucket boundary


def labelled(user: str, ts: int, hit: bool, version: str = "v1", n: int = 0) -> Labelled:
    return Labelled(f"r-{user}-{ts}-{n}", version, ts, HIT if hit else MISS, False, user)


class Table(dict[str, Any]):
    """The ``windows`` table as the changelog leaves it."""

    def write(self, dirty: list[tuple[str, int, dict[str, Any] | None]]) -> None:
        for key, _partition, value in dirty:
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


def test_only_requests_before_the_start_count() -> None:
    store = PrePeriods(3600.0)
    start = T0 + 300_000  # five minutes into a bucket
    items = [
        labelled("u", T0 - HOUR_MS - 1, True),  # older than the pre-period
        labelled("u", T0 - HOUR_MS, True, n=1),  # its first millisecond
        labelled("u", T0 - 1, False),  # the last millisecond of the last whole bucket before the start
        labelled("u", T0 + 100_000, True),  # before the start, in its bucket: left out (its end is T0)
        labelled("u", start, True),  # the experiment's own requests: never a pre-period
        labelled("u", start + 10 * HOUR_MS, True),  # much later (also moves the newest bucket on)
        labelled("w", T0 - 5, True, version="v2"),  # another version's answer
        Labelled("x", "v1", T0 - 5, None, True, "u"),  # dropped by config: no label
        labelled("", T0 - 5, True),  # no user
    ]
    store.add_labelled(items, partition=0, offset=1)
    assert store.of("v1", start, ["u", "w", "nobody"]) == {}  # the newest bucket moved on, no canary held
    store = PrePeriods(3600.0)
    store.add_labelled(items[:-4], partition=0, offset=1)
    store.add_labelled(items[-3:], partition=0, offset=2)
    assert store.of("v1", start, ["u", "w"]) == {"u": (1.0, 2)}
    assert store.of("v2", start, ["w"]) == {"w": (1.0, 1)}
    # Every request counted in it is before the start's bucket, so before the start.
    assert store.of("v1", T0, ["u"]) == {"u": (1.0, 2)}
    assert store.of("v1", T0 - 1, ["u"]) == {"u": (1.0, 1)}
    # The monitor's pre-periods end a label window (here half an hour) before the start: all labelled.
    lagged = PrePeriods(3600.0, lag_ms=HOUR_MS // 2)
    lagged.add_labelled(items[:-4], partition=0, offset=1)
    assert lagged.of("v1", T0 + HOUR_MS // 2, ["u"]) == {"u": (1.0, 2)}
    # From the start less half an hour, rounded down to a bucket, back an hour: T0 - 1 is too recent,
    # T0 - HOUR - 1 (older than an hour before the start) is in.
    assert lagged.of("v1", start, ["u"]) == {"u": (2.0, 2)}


def test_a_running_canary_holds_its_pre_period_and_each_user_stays_bounded() -> None:
    store = PrePeriods(3600.0)
    store.add_labelled([labelled("u", T0 - 1000, True)], 0, 1)
    store.hold_ms = T0 + 5  # a canary started here
    for hour in range(1, 30):  # the experiment runs on, the user comes back
        items = [labelled("u", T0 + hour * HOUR_MS + k * BUCKET_MS, False) for k in range(BUCKETS)]
        store.add_labelled(items, 0, 1 + hour)
    record = store.versions["v1"].users["u"]
    assert (len(record) - 1) // 3 <= 2 * BUCKETS + 1
    assert store.of("v1", T0 + 5, ["u"]) == {"u": (1.0, 1)}  # still there, hours later
    store.hold_ms = None  # it ended
    store.add_labelled([labelled("u", T0 + 31 * HOUR_MS, False)], 0, 99)
    assert store.of("v1", T0 + 5, ["u"]) == {}
    assert (len(store.versions["v1"].users["u"]) - 1) // 3 <= BUCKETS + 1


def test_the_users_and_versions_kept_are_bounded() -> None:
    store = PrePeriods(3600.0, max_users=50)
    store.add_labelled([labelled(f"u{i}", T0 - 10 * i, True) for i in range(200)], 0, 1)
    assert store.users("v1") == 50
    store.add_labelled([labelled("u0", T0 - 5, True, n=1)], 0, 2)  # u0 is recent again, u150 the oldest
    store.add_labelled([labelled("new", T0 - 5, True)], 0, 3)
    kept = set(store.versions["v1"].users)
    assert "u0" in kept and "new" in kept and "u150" not in kept and len(kept) == 50
    table = Table()
    table.write(store.take_dirty())
    restarted = PrePeriods(3600.0, max_users=50)
    restarted.restore(table.items(), owned={0})
    assert set(restarted.versions["v1"].users) == kept  # the forgotten users stay forgotten
    store.add_labelled([labelled("a", T0, True, version="v2")], 1, 1)
    store.add_labelled([labelled("a", T0, True, version="v3")], 2, 1)
    assert list(store.versions) == ["v2", "v3"]  # at most two versions: the oldest fed is forgotten
    table.write(store.take_dirty())
    assert sorted({v["version"] for v in table.values()}) == ["v2", "v3"]  # v1's records deleted


def _batches(seed: int, n: int = 60, users: int = 40) -> list[list[list[Labelled]]]:
    """Batches of messages (each a bundle of labelled requests), within an hour before T0."""
    rng = np.random.default_rng(seed)
    return [
        [
            [
                labelled(
                    f"u{int(rng.integers(users))}",
                    T0 - 1 - int(rng.integers(HOUR_MS)),
                    rng.random() < 0.5,
                    n=k,
                )
                for k in range(int(rng.integers(1, 6)))
            ]
            for _ in range(int(rng.integers(1, 4)))
        ]
        for _ in range(n)
    ]


def _offsets(batches: list[list[list[Labelled]]]) -> list[list[int]]:
    out, at = [], 0
    for messages in batches:
        out.append(list(range(at, at + len(messages))))
        at += len(messages)
    return out


@pytest.mark.parametrize("slots", [2, 3, 256])
@pytest.mark.parametrize("seed", range(6))
def test_a_crash_at_any_record_loses_nothing_and_counts_nothing_twice(
    monkeypatch: pytest.MonkeyPatch, slots: int, seed: int
) -> None:
    monkeypatch.setattr(pre_period_records, "SLOTS", slots)  # snapshots every few batches, or none
    batches, rng = _batches(seed), np.random.default_rng(100 + seed)
    offsets = _offsets(batches)
    users = [f"u{i}" for i in range(40)]
    once = PrePeriods(3600.0)
    for messages, at in zip(batches, offsets, strict=True):
        for items, offset in zip(messages, at, strict=True):
            once.add_labelled(items, 3, offset)
        once.take_dirty()
    expected = once.of("v1", T0, users)
    assert expected

    table, store, b, committed, crashes = Table(), PrePeriods(3600.0), 0, 0, 0
    while b < len(batches):
        for items, offset in zip(batches[b], offsets[b], strict=True):
            store.add_labelled(items, 3, offset)
        dirty = store.take_dirty()
        if rng.random() < 0.25:  # SIGKILLed after any prefix of the batch's records
            table.write(dirty[: int(rng.integers(len(dirty) + 1))])
            table["experiment:pre-period:v9|delta:0"] = {"version": "v9", "partition": 4, "kind": "delta"}
            table[f"{KEY_PREFIX}v1|broken"] = {"version": "v1", "partition": 3, "kind": "shard"}
            store = PrePeriods(3600.0)
            store.restore(table.items(), owned={3})
            assert set(store.versions) <= {"v1"}  # another worker's partition is a standby copy only
            b, crashes = int(rng.integers(committed, b + 1)), crashes + 1  # read again from a commit
            continue
        table.write(dirty)
        committed, b = b + 1, b + 1
    assert crashes and store.of("v1", T0, users) == expected
    keys = [k for k in table if k.startswith(f"{KEY_PREFIX}v1|")]
    assert len(keys) <= slots + pre_period_records.shard_count(store.max_users) + 1  # the broken one


def test_a_new_user_limit_moves_the_users_to_new_shards_and_forgets_whom_it_forgot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pre_period_records, "SLOTS", 1)  # a snapshot every other batch
    old = PrePeriods(3600.0, max_users=30)  # 16 shards
    table = Table()
    for offset in range(4):
        old.add_labelled([labelled(f"u{i}", T0 - 100 + offset, True, n=offset) for i in range(30)], 0, offset)
        table.write(old.take_dirty())
    expected = old.of("v1", T0, [f"u{i}" for i in range(30)])
    store = PrePeriods(3600.0, max_users=20_000)  # 20 shards
    store.restore(table.items(), owned={0})
    assert store.of("v1", T0, [f"u{i}" for i in range(30)]) == expected
    store.max_users = 25  # five users forgotten, as a smaller limit would
    store.add_labelled([labelled("new", T0 - 5, True)], 0, 10)
    dirty = store.take_dirty()  # the new layout's shards, then the old layout's deleted
    deletions = [d for d in dirty if d[2] is None]
    assert deletions and all(d[2] is None for d in dirty[-len(deletions) :])
    table.write(dirty[: -len(deletions)])  # SIGKILLed before the deletions: both layouts on the changelog
    restarted = PrePeriods(3600.0, max_users=20_000)
    restarted.restore(table.items(), owned={0})
    assert set(restarted.versions["v1"].users) == set(store.versions["v1"].users)
    table.write(dirty)  # and with them
    restarted.restore(table.items(), owned={0})
    assert restarted.versions["v1"].users == store.versions["v1"].users
    assert restarted.of("v1", T0, [f"u{i}" for i in range(30)]) == {
        u: p for u, p in expected.items() if u in store.versions["v1"].users
    }


def test_a_batch_writes_a_record_not_one_per_user() -> None:
    """At a live pace the watch's batches hold a few requests from as many users: one record each (a
    snapshot's shards every SLOTS batches), where a record per user made one per request."""
    store, written, requests = PrePeriods(3600.0), 0, 0
    rng = np.random.default_rng(5)
    for offset in range(2000):
        items = [labelled(f"u{int(rng.integers(5000))}", T0 - 1000 + offset, True, n=k) for k in range(5)]
        store.add_labelled(items, 0, offset)
        requests += len(items)
        written += len(store.take_dirty())
    shards = pre_period_records.shard_count(store.max_users)
    assert written <= 2000 + (2000 // pre_period_records.SLOTS) * shards
    assert written < requests / 3


def test_records_an_older_monitor_wrote_per_user_are_read_then_replaced() -> None:
    table = Table(
        {
            f"{KEY_PREFIX}v1|u": {
                "version": "v1",
                "user": "u",
                "partition": 0,
                "offset": 4,
                "buckets": [[599, 1.0, 1]],
            },
            f"{KEY_PREFIX}v1|w": {
                "version": "v1",
                "user": "w",
                "partition": 0,
                "offset": 2,
                "buckets": [[599, 0.0, 2]],
            },
        }
    )
    store = PrePeriods(3600.0)
    store.restore(table.items(), owned={0})
    assert store.of("v1", T0, ["u", "w"]) == {"u": (1.0, 1), "w": (0.0, 2)}
    store.add_labelled([labelled("u", T0 - 5, True), labelled("w", T0 - 5, True)], 0, 3)  # u counted it
    assert store.of("v1", T0, ["u", "w"]) == {"u": (1.0, 1), "w": (1.0, 3)}
    table.write(store.take_dirty())  # a snapshot: the per-user records deleted
    assert not any(k in table for k in (f"{KEY_PREFIX}v1|u", f"{KEY_PREFIX}v1|w"))
    restarted = PrePeriods(3600.0)
    restarted.restore(table.items(), owned={0})
    assert restarted.of("v1", T0, ["u", "w"]) == {"u": (1.0, 1), "w": (1.0, 3)}


CANARY = Experiment("e-c1", "canary", "v2", "v1", 0.5, "c1")


def _users_world(seed: int = 0) -> tuple[list[str], dict[str, float]]:
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in range(600)]
    return users, {u: float(rng.uniform(0.05, 0.95)) for u in users}  # some easy, some hard


def _pre_period_items(users: list[str], level: dict[str, float], rng: np.random.Generator) -> list[Labelled]:
    return [
        labelled(u, T0 - 3_000_000 + 1000 * k, bool(rng.random() < level[u]), n=k)
        for u in users
        for k in range(8)
    ]


def _experiment_items(users: list[str], level: dict[str, float], rng: np.random.Generator) -> list[Labelled]:
    out = []
    for k in range(6):
        for u in users:
            arm = on_candidate(CANARY.experiment_id, u, 0.5)
            ts = T0 + 60_000 + 1000 * k
            out.append(labelled(u, ts, bool(rng.random() < level[u]), version="v2" if arm else "v1", n=k))
    return out


def _monitor(fed: bool) -> Experiments:
    """A worker that counted the incumbent's labelled requests before the canary (or not), restarted."""
    settings = ExperimentSettings(burn_in=20, min_samples=10**6, max_duration_s=10**9)
    users, level = _users_world()
    before = Experiments(settings)
    if fed:
        items = _pre_period_items(users, level, np.random.default_rng(2))
        for offset, at in enumerate(range(0, len(items), 1000)):
            before.pre_periods.add_labelled(items[at : at + 1000], 0, offset)
    table = Table()
    table.write(before.take_dirty())
    after = Experiments(settings)  # the monitor restarted: all it has is the changelogged table
    after.restore(table.items(), owned={0})
    return after


def test_the_monitor_adjusts_a_canary_by_its_users_pre_periods() -> None:
    users, level = _users_world()
    widths = {}
    for fed in (True, False):
        runs = _monitor(fed)
        items = _experiment_items(users, level, np.random.default_rng(3))
        for offset, (key, value) in enumerate(evidence(CANARY, items, [])):
            assert key == CANARY.incumbent  # where the incumbent's pre-periods are
            runs.count(value, 0, 100 + offset)
        comparison = runs.runs["e-c1"].comparison
        interval = comparison.difference()
        assert interval is not None
        widths[fed] = interval.high - interval.low
        if fed:
            assert comparison.theta > 0.5 and comparison.candidate.sum_q and comparison.incumbent.sum_q
    # The users' levels show in their pre-periods: the adjusted interval is much narrower.
    assert widths[True] < 0.8 * widths[False]


class _Agents(ExperimentAgents):
    """The monitor's experiment side without Faust: its table a dict."""

    def __init__(self) -> None:
        self.experiments = Experiments(ExperimentSettings())
        self.windows = Table()  # type: ignore[assignment]
        self._generation, self._owned = 1, {0}


def test_the_watch_keeps_pre_periods_of_the_served_version_only() -> None:
    agents = _Agents()
    fleet = Fleet.of_commands([{"command_id": "d1", "action": "deploy", "model_version": "v1", "ts": 1}])
    agents.count_pre_periods([labelled("u", T0 - 5, True)], 0, 1, fleet)
    agents.count_pre_periods([labelled("u", T0 - 5, True, version="v2")], 0, 2, fleet)  # a candidate's
    agents.count_pre_periods([labelled("w", T0 - 5, True)], 0, 3, None)  # the history not read yet
    assert agents.experiments.pre_periods.of("v1", T0, ["u", "w"]) == {"u": (1.0, 1)}
    assert agents.experiments.pre_periods.users("v2") == 0


def test_the_watch_hands_each_bundle_it_counts_to_the_pre_periods() -> None:
    agents = _Agents()
    watch = Watch(
        TrackerConfig(count_window=20, rules=()), Decisions(RollbackPolicy(0), no_baseline), no_baseline
    )
    watch.on_bundle = agents.count_pre_periods  # as the monitor wires it (streams.app)
    fleet = Fleet.of_commands([make("deploy", "v1", "r")])
    items = [labelled("u", T0 - 5, True), labelled("w", T0 - 6, False)]
    watch.count([(encode_bundle(items), 0, 7), (encode_bundle(items), 0, 7)], fleet)  # the second: a replay
    assert agents.experiments.pre_periods.of("v1", T0, ["u", "w"]) == {"u": (1.0, 1), "w": (0.0, 1)}
    [(_key, partition, record)] = agents.experiments.take_dirty()  # one record for the batch
    assert partition == 0 and record is not None and set(record["users"]) == {"u", "w"}
