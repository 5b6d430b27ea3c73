"""The monitor's side of experiments: shadow predictions paired in the join (never a version's labelled
request), the evidence a canary sends, and one decision turned into one command."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas import codec
from schemas.metrics import request_counts
from services.config import ExperimentSettings
from services.deployment.experiments import Experiment, running
from services.serving.experiment import on_candidate
from streams.comparison import Decision
from streams.experiments import Experiments, command_id, evidence, is_evidence
from streams.exposition import MonitorMetrics
from streams.join import SHADOW, DictStore, Joiner, Labelled, Paired, joinable_outcome, joinable_prediction
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
    before = {k: {**v, "commanded": None} for k, v in state.items()}
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
