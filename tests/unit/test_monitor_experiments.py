"""The monitor's side of experiments: shadow predictions paired in the join (never a version's labelled
request), the evidence a canary sends, and one decision turned into one command."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from schemas import codec
from schemas.metrics import request_counts
from services.config import ExperimentSettings
from services.deployment.experiments import Experiment, running
from services.serving.experiment import on_candidate
from streams.comparison import Decision
from streams.evidence import evidence, is_evidence
from streams.experiment_agents import event_clock
from streams.experiment_replays import BUCKET_MS, HORIZON_MS
from streams.experiments import Experiments, command_id
from streams.exposition import MonitorMetrics
from streams.join import SHADOW, Joiner, Labelled, Paired, joinable_outcome, joinable_prediction
from streams.join_store import DictStore
from streams.routing import Router
from streams.watch import Watch

W = 1000


def predicted(
    rid: str, ts: int, version: str, recommended: list[str], kind: str = "prediction"
) -> dict[str, Any]:
    p = {
        "request_id": rid,
        "user_id": f"u-{rid}",
        "model_version": version,
        "scores": {"a": 0.9, "b": 0.5, "c": 0.1},
        "recommended": recommended,
        "instance": "s1",
        "ts": ts + 5,
        "request_ts": ts,
    }
    return joinable_prediction(p, 0, kind=kind)


def bought(rid: str, ts: int, items: list[str]) -> dict[str, Any]:
    return joinable_outcome({"request_id": rid, "purchased": items, "ts": ts})


GOOD = request_counts(["a", "b", "c"], ["a"], ["a"])
BAD = request_counts(["a", "b", "c"], ["c"], ["a"])


@pytest.mark.parametrize(
    "order",
    [
        ("prediction", "shadow", "outcome"),
        ("shadow", "prediction", "outcome"),
        ("shadow", "outcome", "prediction"),
        ("outcome", "shadow", "prediction"),
        ("prediction", "outcome", "shadow"),
    ],
)
def test_a_shadow_is_paired_with_its_request_and_never_labelled_as_its_version(
    order: tuple[str, ...],
) -> None:
    j = Joiner(DictStore(), W)
    events = {
        "prediction": predicted("r1", 100, "v1", ["a"]),
        "shadow": predicted("r1", 100, "v2", ["c"], kind=SHADOW),
        "outcome": bought("r1", 300, ["a"]),
    }
    out = [item for name in order for item in j.event(events[name])]
    # The version's labelled stream gets the incumbent's answer only, once.
    assert out == [Labelled("r1", "v1", 100, GOOD)]
    assert out[0].user_id == "u-r1"
    if order[-1] == "shadow":  # its request was labelled already: too late, never paired, never labelled
        assert j.take_paired() == [] and j.stats.shadow_unpaired == 1
    else:
        assert j.take_paired() == [Paired("r1", 100, "v1", "v2", GOOD, BAD)]
    assert j.take_paired() == []


def test_an_expired_request_pairs_both_answers_as_no_purchase() -> None:
    j = Joiner(DictStore(), W)
    j.event(predicted("r1", 100, "v1", ["a"]))
    j.event(predicted("r1", 100, "v2", ["c"], kind=SHADOW))
    out = j.outcome(bought("other", 100 + W + 50, []))  # the outcome watermark passes r1's window
    nothing_a, nothing_c = (request_counts(["a", "b", "c"], r, []) for r in (["a"], ["c"]))
    assert out == [Labelled("r1", "v1", 100, nothing_a, expired=True)]
    assert j.take_paired() == [Paired("r1", 100, "v1", "v2", nothing_a, nothing_c)]


def test_a_shadow_without_its_prediction_expires_unpaired_and_a_restart_keeps_it_pending() -> None:
    store = DictStore()
    j = Joiner(store, W)
    j.event(predicted("r1", 100, "v2", ["c"], kind=SHADOW))
    again = Joiner(store, W)  # a restart: rebuilt from the store
    again.rebuild(store.items())
    assert again.event(predicted("r1", 100, "v1", ["a"])) == []
    assert again.outcome(bought("r1", 200, ["a"])) == [Labelled("r1", "v1", 100, GOOD)]
    assert again.take_paired() == [Paired("r1", 100, "v1", "v2", GOOD, BAD)]
    j.event(predicted("r2", 100, "v2", ["c"], kind=SHADOW))
    assert j.outcome(bought("other", 100 + W + 50, [])) == []
    assert j.take_paired() == [] and j.stats.shadow_unpaired == 1 and store.get("r2") is None


def test_shadow_predictions_move_no_watermark_and_report_no_source() -> None:
    router = Router(4, future_ms=10**9, past_ms=10**9, prediction_past_ms=10**9, idle_timeout_s=60)
    shadow = {
        "request_id": "r1", "user_id": "u", "model_version": "v2", "scores": {"a": 0.5}, "recommended": ["a"],
        "instance": "s", "ts": 1_000, "request_ts": 1_000,
    }  # fmt: skip
    assert router.route(SHADOW, 3, 6, 1_000, orjson.dumps(shadow)) is None
    assert router.sources == {} and router.reports() == []
    [event] = router.take()
    assert event["kind"] == SHADOW and event["version"] == "v2"
    assert router.route(SHADOW, 3, 6, 1_000, b"{}") is not None and router.stats.invalid_shadow == 1


CANARY = Experiment("e-c1", "canary", "v2", "v1", 0.5, "c1")
SHADOW_RUN = Experiment("e-s1", "shadow", "v2", "v1", None, "s1")


def test_canary_evidence_keeps_the_incumbents_arm_to_its_users() -> None:
    users = [f"u{i}" for i in range(40)]
    items = [Labelled(f"r{i}", "v1", 100 + i, GOOD, False, u) for i, u in enumerate(users)]
    items.append(
        Labelled("rc", "v2", 150, BAD, False, next(u for u in users if on_candidate("e-c1", u, 0.5)))
    )
    items.append(Labelled("rx", "v3", 150, BAD, False, "u1"))  # neither arm
    # The candidate's answer to a user of the incumbent's arm: an earlier experiment's, not this one's.
    items.append(
        Labelled("ro", "v2", 90, BAD, False, next(u for u in users if not on_candidate("e-c1", u, 0.5)))
    )
    [(key, value)] = evidence(CANARY, items, [])
    assert key == CANARY.incumbent and is_evidence(
        value
    )  # on the incumbent's partition, with its pre-periods
    arms = orjson.loads(value)["arms"]
    assert [a[1] for a in arms if a[0] == 1] == [items[-3].user_id]  # "rc" only
    assert {a[1] for a in arms if a[0] == 0} == {u for u in users if not on_candidate("e-c1", u, 0.5)}
    assert evidence(CANARY, [], [Paired("r", 1, "v1", "v2", GOOD, BAD)]) == []
    many = [Paired(f"r{i}", i, "v1", "v2", GOOD, BAD) for i in range(2500)]
    chunks = evidence(SHADOW_RUN, [], many)
    assert [len(orjson.loads(v)["pairs"]) for _, v in chunks] == [1000, 1000, 500]


def commands_log(*actions: tuple[str, str]) -> list[dict[str, Any]]:
    log = [{"command_id": "d1", "action": "deploy", "model_version": "v1"}]
    for action, cid in actions:
        log.append({"command_id": cid, "action": action, "model_version": "v2", "traffic": 0.5})
    return log


def shadow_message(n: int, worse: bool, start: int = 0) -> bytes:
    incumbent, candidate = (GOOD, BAD) if worse else (GOOD, GOOD)
    pairs = [Paired(f"r{start + i}", 1000 + start + i, "v1", "v2", incumbent, candidate) for i in range(n)]
    [(_key, value)] = evidence(SHADOW_RUN, [], pairs)
    return value


SMALL = ExperimentSettings(min_samples=50, burn_in=20, tuning=200)


def test_one_decision_one_command_across_a_restart_and_a_replay() -> None:
    runs = Experiments(SMALL, model="cart")
    log = commands_log(("shadow", "s1"))
    assert runs.count(shadow_message(100, worse=True), 2, 10) is not None
    assert runs.runs["e-s1"].comparison.decision is Decision.ABORT
    [command] = runs.decide(log, running(log), 5)
    codec("model-command").decode(codec("model-command").encode(command))
    assert command["command_id"] == command_id("e-s1", Decision.ABORT) == "experiment:e-s1:abort"
    assert (command["action"], command["model_version"], command["experiment_id"]) == ("abort", "v2", "e-s1")
    assert command["model"] == "cart"  # inside the signed body: it cannot end another model's experiment
    assert "100 candidate and 100 incumbent labelled" in command["reason"]
    assert runs.decide(log, running(log), 6) == []  # sent: never again
    state = dict((k, v) for k, _, v in runs.take_dirty() if v is not None)

    # A restart from the state written before the send: the log is checked first.
    restarted = Experiments(SMALL)
    before = {k: {**v, "commanded": None} if isinstance(v, dict) else v for k, v in state.items()}
    restarted.restore(before.items(), owned={2})
    assert restarted.count(shadow_message(100, worse=True), 2, 10) is None  # counted before
    on_log = [*log, command]
    assert restarted.decide(on_log, running(on_log), 7) == []
    assert "e-s1" not in restarted.runs  # the experiment ended with its command
    # A worker that does not own the evidence partition restores nothing.
    other = Experiments(SMALL)
    other.restore(state.items(), owned={0, 1})
    assert other.runs == {}


def test_a_humans_command_ends_the_experiment_without_one_of_ours() -> None:
    runs = Experiments(SMALL)
    runs.count(shadow_message(30, worse=False), 0, 1)
    log = commands_log(("shadow", "s1"), ("promote", "p-human"))
    assert runs.decide(log, running(log), 1) == []
    assert runs.runs == {}
    assert [v for _, _, v in runs.take_dirty()][-1] is None  # its state deleted
    # Evidence the join sent before it saw the end starts no fresh comparison of it.
    assert runs.count(shadow_message(30, worse=False, start=30), 0, 2) is None and runs.runs == {}


def test_promote_and_paced_events() -> None:
    runs = Experiments(SMALL, every_ms=1000)
    log = commands_log(("shadow", "s1"))
    runs.count(shadow_message(10, worse=False), 0, 1)
    [first] = runs.events(0)
    assert first["decision"] == "running" and first["labelled"] == {"candidate": 10, "incumbent": 10}
    runs.count(shadow_message(10, worse=False, start=10), 0, 2)
    assert runs.events(500) == []  # paced
    runs.count(shadow_message(200, worse=False, start=20), 0, 3)
    [decided] = runs.events(600)  # a decision goes out at once
    codec("experiment").decode(codec("experiment").encode(decided))
    assert decided["decision"] == "promote"
    [command] = runs.decide(log, running(log), 700)
    assert (command["action"], command["command_id"]) == ("promote", "experiment:e-s1:promote")


def test_the_watch_never_takes_an_experiment_state_for_a_version() -> None:
    runs = Experiments(SMALL)
    runs.count(shadow_message(30, worse=False), 0, 1)
    records = [(k, v) for k, _, v in runs.take_dirty()]
    watch = Watch.__new__(Watch)
    watch.config = None  # type: ignore[assignment]
    assert watch.restore(records, owned={0}) == 0 and watch.trackers == {}


def test_the_metrics_show_where_each_experiment_stands_and_the_last_one_ended() -> None:
    runs = Experiments(SMALL)
    log = commands_log(("shadow", "s1"))
    runs.count(shadow_message(100, worse=True), 0, 1)
    metrics = MonitorMetrics()
    metrics.refresh({}, [], [], ready=True, experiments=runs.standing(), shadow=(100, 3))
    [event] = runs.standing()
    labels = {"experiment_id": "e-s1"}
    assert metrics.value("modelwatch_monitor_experiment_labelled_requests", **labels, arm="candidate") == 100
    assert metrics.value("modelwatch_monitor_experiment_estimate", **labels) == pytest.approx(
        event["estimate"]
    )
    assert metrics.value("modelwatch_monitor_experiment_interval_high", **labels) == event["interval"][1] < 0
    assert metrics.value("modelwatch_monitor_experiment_decision", **labels, decision="abort") == 1
    assert metrics.value("modelwatch_monitor_shadow_unpaired_total") == 3
    [command] = runs.decide(log, running(log), 1)
    on_log = [*log, command]
    runs.decide(on_log, running(on_log), 2)  # ended: its command is on the log
    assert runs.runs == {} and [e["decision"] for e in runs.standing()] == ["abort"]


def test_an_inconclusive_experiment_is_aborted_saying_why() -> None:
    runs = Experiments(SMALL.model_copy(update={"max_duration_s": 10.0}))
    log = commands_log(("shadow", "s1"))
    runs.count(shadow_message(30, worse=False), 0, 1)  # event times 1000..1029 ms
    runs.count(shadow_message(5, worse=False, start=20_000), 0, 2)  # 20 s of event time later
    [command] = runs.decide(log, running(log), 1)
    assert (command["action"], command["command_id"]) == ("abort", "experiment:e-s1:inconclusive")
    assert "inconclusive: undecided after 10 s of event time" in command["reason"]


# -- the experiment's clock: max_duration_s of event time, with or without labelled traffic -----------------


def clock_message(experiment: Experiment, watermark: int) -> bytes:
    [(_key, value)] = evidence(experiment, [], [], watermark)
    return value


@pytest.mark.parametrize("experiment", [CANARY, SHADOW_RUN], ids=["canary", "shadow"])
def test_an_experiment_without_labelled_traffic_ends_inconclusive_at_max_duration(
    experiment: Experiment,
) -> None:
    runs = Experiments(SMALL.model_copy(update={"max_duration_s": 60.0}), model="cart")
    log = commands_log((experiment.mode, experiment.command_id))
    t0 = 1_700_000_000_000
    assert evidence(experiment, [], []) == []  # no clock, no evidence: nothing to send
    offsets = iter(range(1, 100))
    for watermark in range(t0, t0 + 60_000, 10_000):  # the join's clock moves, nothing is labelled
        runs.count(clock_message(experiment, watermark), 0, next(offsets))
        assert runs.decide(log, running(log), 1) == []
    run = runs.runs[experiment.experiment_id]
    assert run.comparison.labelled == (0, 0) and run.comparison.latest_ms == t0 + 50_000
    runs.count(clock_message(experiment, t0 + 60_000), 0, next(offsets))
    [command] = runs.decide(log, running(log), 2)
    assert (command["action"], command["command_id"]) == (
        "abort",
        f"experiment:{experiment.experiment_id}:inconclusive",
    )
    assert "undecided after 60 s of event time" in command["reason"]
    assert "0 candidate and 0 incumbent labelled requests" in command["reason"]
    [event] = runs.events(3)
    assert event["decision"] == "inconclusive" and event["ts"] == t0 + 60_000 and event["started_ts"] == t0
    runs.count(clock_message(experiment, t0 + 70_000), 0, next(offsets))
    assert runs.decide(log, running(log), 4) == []  # one decision, one command
    # The clock, and the start it counts from, are in the state a restarted worker resumes from.
    [state] = [v for k, _, v in runs.take_dirty() if k.endswith("|state")]
    assert state["since_ms"] == t0


def test_the_deadline_counts_from_the_first_clock_seen_when_the_candidate_comes_later() -> None:
    runs = Experiments(SMALL.model_copy(update={"max_duration_s": 60.0}))
    log = commands_log(("shadow", "s1"))
    t0 = 1_700_000_000_000
    runs.count(clock_message(SHADOW_RUN, t0), 0, 1)
    pairs = [Paired(f"r{i}", t0 + 30_000 + i, "v1", "v2", GOOD, GOOD) for i in range(5)]
    [(_k, value)] = evidence(SHADOW_RUN, [], pairs, t0 + 30_000)
    runs.count(value, 0, 2)  # the first labelled pair, half-way
    assert runs.runs["e-s1"].comparison.started_ms == t0 + 30_000
    runs.count(clock_message(SHADOW_RUN, t0 + 59_999), 0, 3)
    assert runs.decide(log, running(log), 1) == []
    runs.count(clock_message(SHADOW_RUN, t0 + 60_000), 0, 4)
    [command] = runs.decide(log, running(log), 2)
    assert command["command_id"] == "experiment:e-s1:inconclusive"


def test_a_monitor_behind_its_traffic_counts_the_deadline_from_the_command_not_from_its_backlog() -> None:
    """A monitor ten minutes behind (a backlog, a restart after an outage) first sees the experiment at a
    clock that old; counted from there, the deadline (60 s here) would end it as inconclusive while its
    backlog, all from before the experiment, is worked off."""
    t0 = 1_700_000_000_000
    issued = dataclasses.replace(SHADOW_RUN, issued_ms=t0)
    runs = Experiments(SMALL.model_copy(update={"max_duration_s": 60.0}))
    log = commands_log(("shadow", "s1"))
    offsets = iter(range(1, 100))
    for behind in range(600_000, 0, -60_000):  # catching up, no pair labelled yet
        runs.count(clock_message(issued, t0 - behind), 0, next(offsets))
        assert runs.decide(log, running(log), 1) == []
    pairs = [Paired(f"r{i}", t0 + 1_000 + i, "v1", "v2", GOOD, GOOD) for i in range(5)]
    [(_k, value)] = evidence(issued, [], pairs, t0 + 1_000)
    runs.count(value, 0, next(offsets))
    runs.count(clock_message(issued, t0 + 59_999), 0, next(offsets))
    assert runs.decide(log, running(log), 2) == []
    runs.count(clock_message(issued, t0 + 60_000), 0, next(offsets))
    [command] = runs.decide(log, running(log), 3)
    assert command["command_id"] == "experiment:e-s1:inconclusive"


def test_one_far_future_timestamp_does_not_move_the_experiments_clock() -> None:
    # The join's clock is the least of its source partitions' latest plausible event times: one prediction
    # an hour ahead on one partition (plausible to a generous future tolerance) moves nothing.
    j = Joiner(DictStore(), W)
    t0 = 1_700_000_000_000
    j.report("predictions", 0, -1, False, 2)
    for source in (0, 1):
        j.event({**predicted(f"r{source}", t0, "v1", ["a"]), "source": source})
    j.event({**predicted("ahead", t0 + 3_600_000, "v1", ["a"]), "source": 1})
    assert event_clock([j], 0) == t0
    # ...and an experiment's clock is the join's: a far-future request in the evidence does not end it.
    runs = Experiments(SMALL.model_copy(update={"max_duration_s": 60.0}))
    log = commands_log(("shadow", "s1"))
    pairs = [
        Paired("r0", t0, "v1", "v2", GOOD, GOOD),
        Paired("ahead", t0 + 3_600_000, "v1", "v2", GOOD, GOOD),
    ]
    [(_k, value)] = evidence(SHADOW_RUN, [], pairs, event_clock([j], 0))
    runs.count(value, 0, 1)
    assert runs.runs["e-s1"].comparison.latest_ms == t0
    assert runs.decide(log, running(log), 1) == []


# -- the join's replays: the same labelled request never counted twice -------------------------------------


def test_evidence_the_join_sends_again_after_a_crash_is_not_counted_twice() -> None:
    """The join labels a batch and sends its evidence, and is killed before its markers are written: the
    restarted join labels the same requests again, in a new message; the comparison counts each once."""
    store = DictStore()
    j = Joiner(store, W)
    for i in range(30):
        j.event(predicted(f"r{i}", 100 + i, "v1", ["a"]))
        j.event(predicted(f"r{i}", 100 + i, "v2", ["a"], kind=SHADOW))  # as good: undecided at 30
    j.sync()
    durable = DictStore()  # what the pending table's changelog holds: the pending requests, no marker yet
    durable.data = dict(store.data)
    first = [item for i in range(30) for item in j.event(bought(f"r{i}", 200 + i, ["a"]))]
    assert len(first) == 30
    [(_k, sent)] = evidence(SHADOW_RUN, [], j.take_paired(), 300)
    runs = Experiments(SMALL)
    runs.count(sent, 0, 1)
    assert runs.runs["e-s1"].comparison.labelled == (30, 30)
    state = [(k, v) for k, _, v in runs.take_dirty() if v is not None]

    # The kill: the join's markers were never written; its restart rebuilds from the store and joins the
    # same outcomes again (their offsets were not committed either).
    again = Joiner(durable, W)
    again.rebuild(durable.items(), durable.marker_records())
    replayed = [item for i in range(30) for item in again.event(bought(f"r{i}", 200 + i, ["a"]))]
    assert replayed == first  # the same labelled requests, sent again
    [(_k, resent)] = evidence(SHADOW_RUN, [], again.take_paired(), 300)
    runs.count(resent, 0, 2)  # a new message: the offset check cannot tell
    assert runs.runs["e-s1"].comparison.labelled == (30, 30)
    # The watch restarted too: it knows them from the state it wrote.
    restarted = Experiments(SMALL)
    restarted.restore(state, owned={0})
    restarted.count(resent, 0, 2)
    assert restarted.runs["e-s1"].comparison.labelled == (30, 30)
    # New requests still count; a canary's arms are recognised alike.
    [(_k, more)] = evidence(SHADOW_RUN, [], [Paired("r-new", 500, "v1", "v2", GOOD, BAD)], 600)
    restarted.count(more, 0, 3)
    assert restarted.runs["e-s1"].comparison.labelled == (31, 31)
    users = [f"u{i}" for i in range(60)]
    items = [Labelled(f"c{i}", "v2" if on_candidate("e-c1", u, 0.5) else "v1", 100 + i, GOOD, False, u)
             for i, u in enumerate(users)]  # fmt: skip
    canary = Experiments(SMALL)
    for offset in (1, 2):
        [(_k, value)] = evidence(CANARY, items, [], 300)
        canary.count(value, 0, offset)
    assert sum(canary.runs["e-c1"].comparison.labelled) == 60


def test_the_requests_counted_are_forgotten_behind_the_horizon_and_with_the_experiment() -> None:
    runs = Experiments(SMALL)
    log = commands_log(("shadow", "s1"))
    [(_k, value)] = evidence(SHADOW_RUN, [], [Paired("r1", 100, "v1", "v2", GOOD, GOOD)], 1_000)
    runs.count(value, 0, 1)
    written = {k for k, _, v in runs.take_dirty() if v is not None and "|seen|" in k}
    assert written
    runs.count(clock_message(SHADOW_RUN, 1_000 + HORIZON_MS + BUCKET_MS), 0, 2)
    assert len(runs.runs["e-s1"].counted) == 0
    assert {k for k, _, v in runs.take_dirty() if v is None} == written
    runs.count(value, 0, 3)  # long past: counted afresh (as the windows' own horizon would)
    assert runs.runs["e-s1"].comparison.labelled == (2, 2)
    runs.take_dirty()
    runs.decide([*log, {"command_id": "a", "action": "abort", "model_version": "v2"}], None, 1)
    deleted = {k for k, _, v in runs.take_dirty() if v is None}
    assert "experiment:e-s1|state" in deleted and any("|seen|" in k for k in deleted)
