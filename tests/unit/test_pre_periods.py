"""The users' pre-periods a canary is adjusted by (streams.pre_periods): built from the incumbent's labelled
requests before the experiment's start only, bounded, restored from the changelogged records after a
restart without losing or double-counting a message, and passed to the comparison by the monitor."""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.metrics import Counts
from services.config import ExperimentSettings
from services.deployment.commands import make
from services.deployment.experiments import Experiment
from services.serving.experiment import on_candidate
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
    assert len(table) == 50  # the forgotten users' records deleted
    store.add_labelled([labelled("a", T0, True, version="v2")], 1, 1)
    store.add_labelled([labelled("a", T0, True, version="v3")], 2, 1)
    assert list(store.versions) == ["v2", "v3"]  # at most two versions: the oldest fed is forgotten
    table.write(store.take_dirty())
    assert sorted({v["version"] for v in table.values()}) == ["v2", "v3"]


def test_a_restart_restores_the_records_and_a_replay_counts_nothing_twice() -> None:
    rng = np.random.default_rng(1)
    batches = [
        [
            labelled(f"u{int(rng.integers(20))}", T0 - 60_000 * b - k, bool(rng.random() < 0.5), n=k)
            for k in range(30)
        ]
        for b in range(6)
    ]
    once = PrePeriods(3600.0)
    for offset, items in enumerate(batches):
        once.add_labelled(items, 3, offset)
    users = [f"u{i}" for i in range(20)]
    expected = once.of("v1", T0, users)

    crashed = PrePeriods(3600.0)
    table = Table()
    for offset, items in enumerate(batches[:4]):
        crashed.add_labelled(items, 3, offset)
        dirty = crashed.take_dirty()
        table.write(dirty if offset < 3 else dirty[: len(dirty) // 2])  # SIGKILLed mid-write of batch 3
    table["experiment:pre-period:v9|u1"] = {**table[f"{KEY_PREFIX}v1|u1"], "partition": 4}  # a standby copy
    table[f"{KEY_PREFIX}v1|broken"] = {"version": "v1"}
    restarted = PrePeriods(3600.0)
    restarted.restore(table.items(), owned={3})
    assert set(restarted.versions) == {"v1"}
    for offset, items in enumerate(batches):  # the uncommitted batches (2 and 3 at least) are read again
        if offset >= 2:
            restarted.add_labelled(items, 3, offset)
    assert restarted.of("v1", T0, users) == expected


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
    assert {k for k, _, _ in agents.experiments.take_dirty()} == {f"{KEY_PREFIX}v1|u", f"{KEY_PREFIX}v1|w"}
