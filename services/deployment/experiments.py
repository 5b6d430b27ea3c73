"""Experiments: a candidate version run on top of the active one, as the command log orders it.

``deploy`` and ``rollback`` activate a version for everyone. ``shadow V`` and ``canary V F`` start an
experiment instead: the active version (the incumbent) keeps its place and ``V`` (the candidate) also
scores every request (shadow), or answers the share ``F`` of users (canary). ``promote`` makes the candidate
the active version for everyone; ``abort`` sends everyone back to the incumbent. Both end the experiment,
and so does a ``deploy`` or ``rollback``. One experiment runs at a time: a new shadow or canary replaces
the one running.

Everything here is a function of the applied commands in log order, so every replica, the monitor and
the CLI see the same experiment. Its id is deterministic: the starting command's ``experiment_id``, else
``e-<command_id>``, so a restarted replica or monitor names it as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Commands that make their ``model_version`` the active version for everyone.
ACTIVATING = frozenset({"deploy", "rollback", "promote"})
#: Commands that start an experiment on their ``model_version``.
STARTING = frozenset({"shadow", "canary"})
#: Commands that end the running experiment (naming its candidate).
ENDING = frozenset({"promote", "abort"})


@dataclass(frozen=True)
class Experiment:
    """The running experiment: ``candidate`` beside ``incumbent``, as command ``command_id`` started it."""

    experiment_id: str
    mode: str  # shadow or canary
    candidate: str
    incumbent: str
    traffic: float | None  # a canary's share of users on the candidate; None for a shadow
    command_id: str
    #: The command's ``ts``, by its issuer's clock (None in evidence from older monitors): the experiment
    #: does not start before it, whatever a monitor behind its traffic sees (streams.experiments).
    issued_ms: int | None = None


def experiment_id_of(command: dict[str, Any]) -> str:
    """The id of the experiment a shadow or canary command starts."""
    given = command.get("experiment_id")
    return str(given) if given else f"e-{command['command_id']}"


def active_version(applied: Sequence[dict[str, Any]]) -> str | None:
    """The version everyone is sent to outside an experiment: the last activating command's."""
    for command in reversed(applied):
        if command["action"] in ACTIVATING:
            return str(command["model_version"])
    return None


def running(applied: Sequence[dict[str, Any]]) -> Experiment | None:
    """The experiment running after ``applied``, if any."""
    incumbent: str | None = None
    experiment: Experiment | None = None
    for command in applied:
        action, version = command["action"], str(command["model_version"])
        if action in ACTIVATING:
            incumbent, experiment = version, None
        elif action == "abort":
            experiment = None
        elif action in STARTING and incumbent is not None:
            traffic = command.get("traffic")
            experiment = Experiment(
                experiment_id=experiment_id_of(command),
                mode=action,
                candidate=version,
                incumbent=incumbent,
                traffic=float(traffic) if action == "canary" and traffic is not None else None,
                command_id=command["command_id"],
                issued_ms=int(command["ts"]) if "ts" in command else None,
            )
    return experiment


def refusal(command: dict[str, Any], applied: Sequence[dict[str, Any]]) -> str | None:
    """Why ``command`` makes no sense after ``applied`` (an experiment command only), or ``None``."""
    action, version, command_id = command["action"], str(command["model_version"]), command["command_id"]
    if action in STARTING:
        incumbent = active_version(applied)
        if incumbent is None:
            return f"command {command_id}: no version is active to run a {action} of {version} beside"
        if incumbent == version:
            return f"command {command_id}: {version} is already the active version"
        if action == "canary" and command.get("traffic") is None:
            return f"command {command_id}: a canary needs traffic"
        return None
    if action in ENDING:
        experiment = running(applied)
        if experiment is None:
            return f"command {command_id}: no experiment is running to {action}"
        if version != experiment.candidate:
            return (
                f"command {command_id}: the running experiment {experiment.experiment_id} is on "
                f"{experiment.candidate}, not {version}"
            )
        given = command.get("experiment_id")
        if given and given != experiment.experiment_id:
            return (
                f"command {command_id}: experiment {given} is not the running one "
                f"({experiment.experiment_id})"
            )
    return None


__all__ = [
    "ACTIVATING",
    "ENDING",
    "STARTING",
    "Experiment",
    "active_version",
    "experiment_id_of",
    "refusal",
    "running",
]
