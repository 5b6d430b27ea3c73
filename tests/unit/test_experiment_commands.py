"""Experiments in the command log, without a broker: shadow, canary, promote and abort on top of the
active version, judged in log order by every reader alike."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import codec
from schemas.errors import ContractError
from services.cli import main
from services.cli.models import history_document
from services.deployment import commands
from services.deployment.commands import History
from services.deployment.experiments import experiment_id_of
from services.deployment.orders import timeline
from services.deployment.state import DeploymentState


def history(*cmds: dict[str, Any]) -> History:
    return History.of(cmds)


def test_a_canary_runs_beside_the_active_version_until_promoted() -> None:
    v1 = commands.make("deploy", "v1", "a")
    canary = commands.make("canary", "v2", "try v2", traffic=0.2)
    h = history(v1, canary)
    assert h.active_version == "v1"  # the incumbent keeps its place
    running = h.experiment
    assert running is not None
    assert (running.mode, running.candidate, running.incumbent, running.traffic) == (
        "canary",
        "v2",
        "v1",
        0.2,
    )
    assert running.experiment_id == f"e-{canary['command_id']}"  # deterministic: from the starting command
    promote = commands.make("promote", "v2", "good", experiment_id=running.experiment_id)
    assert h.feed(promote)
    assert h.active_version == "v2"
    assert h.experiment is None


def test_abort_sends_everyone_back_to_the_incumbent() -> None:
    h = history(commands.make("deploy", "v1", "a"), commands.make("shadow", "v2", "b"))
    assert h.experiment is not None and h.experiment.mode == "shadow" and h.experiment.traffic is None
    assert h.feed(commands.make("abort", "v2", "worse"))
    assert (h.active_version, h.experiment) == ("v1", None)


def test_a_deploy_or_rollback_ends_the_running_experiment() -> None:
    for ending in ("deploy", "rollback"):
        h = history(
            commands.make("deploy", "v1", "a"),
            commands.make("deploy", "v0", "b"),
            commands.make("canary", "v2", "c", traffic=0.5),
        )
        assert h.feed(commands.make(ending, "v1", "d"))  # type: ignore[arg-type]
        assert (h.active_version, h.experiment) == ("v1", None)


def test_an_explicit_experiment_id_is_kept() -> None:
    shadow = commands.make("shadow", "v2", "b", experiment_id="x-42")
    assert experiment_id_of(shadow) == "x-42"
    h = history(commands.make("deploy", "v1", "a"), shadow)
    assert h.experiment is not None and h.experiment.experiment_id == "x-42"


@pytest.mark.parametrize(
    ("cmds", "last", "why"),
    [
        ([], commands.make("shadow", "v2", "x"), "no version is active"),
        ([commands.make("deploy", "v1", "a")], commands.make("canary", "v1", "x", traffic=0.1), "already"),
        (
            [commands.make("deploy", "v1", "a")],
            commands.make("promote", "v2", "x"),
            "no experiment is running",
        ),
        ([commands.make("deploy", "v1", "a")], commands.make("abort", "v2", "x"), "no experiment is running"),
        (
            [commands.make("deploy", "v1", "a"), commands.make("shadow", "v2", "b")],
            commands.make("promote", "v3", "x"),
            "is on v2, not v3",
        ),
        (
            [commands.make("deploy", "v1", "a"), commands.make("shadow", "v2", "b", experiment_id="e1")],
            commands.make("abort", "v2", "x", experiment_id="e0"),
            "experiment e0 is not the running one (e1)",
        ),
    ],
)
def test_experiment_commands_out_of_place_are_refused_with_the_reason(
    cmds: list[dict[str, Any]], last: dict[str, Any], why: str
) -> None:
    h = history(*cmds)
    before = (h.active_version, h.experiment)
    assert not h.feed(last)
    assert why in h.ignored[-1][1]
    assert (h.active_version, h.experiment) == before


def test_the_rollback_target_skips_experiment_commands() -> None:
    state = DeploymentState()
    for c in (
        commands.make("deploy", "v1", "a"),
        commands.make("deploy", "v2", "b"),
        commands.make("shadow", "v3", "c"),
        commands.make("abort", "v3", "d"),
    ):
        assert state.feed_command(c)
    assert state.commanded == "v2"
    assert state.rollback_target() == ("v1", "")  # never v3, which was only ever a candidate
    assert state.history.previous_version() == "v1"


def test_the_timeline_shows_each_experiment_step() -> None:
    canary = commands.make("canary", "v2", "c", traffic=0.25)
    periods = timeline(
        history(commands.make("deploy", "v1", "a"), canary, commands.make("promote", "v2", "p"))
    )
    assert [(p.action, p.version, p.traffic) for p in periods] == [
        ("deploy", "v1", None),
        ("canary", "v2", 0.25),
        ("promote", "v2", None),
    ]
    assert periods[1].as_dict()["experiment_id"] == f"e-{canary['command_id']}"


@pytest.mark.parametrize(
    "change",
    [
        {"action": "canary"},  # a canary without traffic
        {"action": "canary", "traffic": 0},
        {"action": "canary", "traffic": 1},
        {"action": "canary", "traffic": 1.5},
        {"action": "promote", "experiment_id": ""},
        {"action": "launch"},
    ],
)
def test_the_schema_refuses_malformed_experiment_commands(change: dict[str, Any]) -> None:
    command = {
        "command_id": "c-1",
        "action": "deploy",
        "model_version": "v1",
        "reason": "r",
        "ts": 1,
        **change,
    }
    with pytest.raises(ContractError):
        codec("model-command").validate(command)


def test_the_schema_accepts_each_new_action() -> None:
    for action, extra in (("shadow", {}), ("canary", {"traffic": 0.2}), ("promote", {}), ("abort", {})):
        command = {"command_id": "c-1", "action": action, "model_version": "v2", "reason": "r", "ts": 1}
        codec("model-command").validate({**command, **extra, "experiment_id": "e-c-0"})


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["deploy", "v2", "--shadow", "--canary", "0.2"], "--shadow and --canary exclude each other"),
        (["deploy", "v2", "--canary", "1"], "--canary must be in (0, 1), not 1"),
        (["deploy", "v2", "--canary", "0"], "--canary must be in (0, 1), not 0"),
    ],
)
def test_the_cli_refuses_a_bad_experiment_before_reading_anything(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert why in capsys.readouterr().err


def test_models_history_shows_the_running_experiment_and_each_step() -> None:
    canary = commands.make("canary", "v2", "try v2", traffic=0.2)
    state = DeploymentState()
    for c in (commands.make("deploy", "v1", "a"), canary):
        assert state.feed_command(c)
    doc = history_document(state)
    assert doc["active"] == "v1"
    assert doc["experiment"] == {
        "experiment_id": f"e-{canary['command_id']}",
        "mode": "canary",
        "candidate": "v2",
        "incumbent": "v1",
        "traffic": 0.2,
        "command_id": canary["command_id"],
        "issued_ms": canary["ts"],
    }
    assert [(p["action"], p["traffic"]) for p in doc["periods"]] == [("deploy", None), ("canary", 0.2)]
