"""Stages: a shadow the monitor would promote goes on to a canary (``[experiments] canary_after_shadow``),
by one signed command whoever sends it, and that canary decides in its turn."""

from __future__ import annotations

from pathlib import Path

from schemas import codec
from services.deployment import commands
from services.deployment.experiments import running
from services.registry.keys import Keyring, Signer, generate
from streams.comparison import Decision
from streams.experiments import Experiments, canary_of, command_id

from .test_monitor_experiments import SMALL, shadow_message

STAGED = SMALL.model_copy(update={"canary_after_shadow": 0.1})


def test_a_promoted_shadow_goes_on_to_one_canary_which_then_decides(tmp_path: Path) -> None:
    operator_pub = generate("operator", tmp_path / "operator.pem")
    monitor_pub = generate("monitor", tmp_path / "monitor.pem")
    operator, monitor = Signer.load(tmp_path / "operator.pem"), Signer.load(tmp_path / "monitor.pem")
    history = commands.History(keyring=Keyring([operator_pub, monitor_pub]))
    for action, version, cid in (("deploy", "v1", "d1"), ("shadow", "v2", "s1")):
        assert history.feed(commands.make(action, version, "by hand", signer=operator, command_id=cid))
    log = list(history.applied)

    runs = Experiments(STAGED, signer=monitor)
    runs.count(shadow_message(300, worse=False), 0, 1)
    assert runs.runs["e-s1"].comparison.decision is Decision.PROMOTE
    [command] = runs.decide(log, running(log), 5)
    codec("model-command").validate(command)
    assert (command["action"], command["model_version"], command["traffic"]) == ("canary", "v2", 0.1)
    assert command["command_id"] == command_id("e-s1", "canary") == "experiment:e-s1:canary"
    assert command["experiment_id"] == canary_of("e-s1") == "e-s1-canary"
    assert "on to a canary at 0.1 of users" in command["reason"]
    assert runs.decide(log, running(log), 6) == []  # sent: never again

    # A second worker (or one restarted before its state was written) decides the same command: the
    # log has one command whoever sends it, and one canary experiment, named alike everywhere.
    other = Experiments(STAGED, signer=monitor)
    other.count(shadow_message(300, worse=False), 0, 1)
    [again] = other.decide(log, running(log), 9)
    assert (again["command_id"], again["experiment_id"]) == (command["command_id"], command["experiment_id"])
    assert history.feed(command), history.ignored  # the monitor's key may order a canary of v2
    assert not history.feed(again)
    log = list(history.applied)
    canary = running(log)
    assert canary is not None
    assert (canary.experiment_id, canary.mode, canary.traffic) == ("e-s1-canary", "canary", 0.1)
    # Restarted with the canary command on the log: the shadow is over, nothing more is sent for it.
    restarted = Experiments(STAGED, signer=monitor)
    restarted.count(shadow_message(300, worse=False), 0, 1)
    assert restarted.decide(log, canary, 10) == [] and restarted.runs == {}


def test_without_stages_a_shadow_is_promoted_and_a_bad_one_aborted_either_way() -> None:
    log = [
        {"command_id": "d1", "action": "deploy", "model_version": "v1"},
        {"command_id": "s1", "action": "shadow", "model_version": "v2"},
    ]
    plain = Experiments(SMALL)
    plain.count(shadow_message(300, worse=False), 0, 1)
    assert [c["action"] for c in plain.decide(log, running(log), 1)] == ["promote"]
    staged = Experiments(STAGED)
    staged.count(shadow_message(100, worse=True), 0, 1)
    [abort] = staged.decide(log, running(log), 1)
    assert (abort["action"], abort["experiment_id"]) == ("abort", "e-s1")


def test_an_experiment_event_is_stamped_with_the_evidences_event_time() -> None:
    runs = Experiments(SMALL)
    runs.count(shadow_message(10, worse=False), 0, 1)  # request times 1000..1009 ms
    [event] = runs.events(now_ms=5_000_000)
    assert event["ts"] == 1009 and event["started_ts"] == 1000
