"""Deployment epochs: which deployment of a version the monitor's windows and alerts belong to.

An epoch of a version begins with the command (deploy or rollback) that makes it the commanded version
when another one was, and ends with the next command that makes another version the commanded one. A
version deployed again begins a new epoch, so its alerts can fire, and roll it back, again. Epochs are read
from the deployment history in log order, never from clocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Epoch:
    version: str
    command: dict[str, Any]  # the command that began it

    @property
    def command_id(self) -> str:
        return str(self.command["command_id"])


@dataclass(frozen=True)
class Epochs:
    latest: dict[str, Epoch]  # each version's latest epoch
    commanded: Epoch | None  # the epoch in force: its version is the commanded one

    def describe_end(self, version: str, served: str | None = None) -> str:
        """Why ``version``'s epoch ended (the fleet now serves ``served``): for the alerts it ends."""
        now = self.commanded
        if now is None:
            return f"{version} is no longer the commanded version"
        if served is not None and served != now.version:
            return f"{version} is no longer served: the live replicas serve {served}"
        c = now.command
        return f"{version} is no longer served: {c['action']} to {now.version} (command {c['command_id']})"


def epochs(applied: Sequence[dict[str, Any]]) -> Epochs:
    """The epochs of the deployment history ``applied`` (applied commands, in log order)."""
    latest: dict[str, Epoch] = {}
    current: Epoch | None = None
    for command in applied:
        version = str(command["model_version"])
        if current is None or current.version != version:
            current = Epoch(version, command)
            latest[version] = current
    return Epochs(latest, current)


def epoch_token(command_id: str | None) -> str | None:
    """A short, stable token of the command that began an epoch, for alert ids."""
    if command_id is None:
        return None
    return "e" + hashlib.sha256(command_id.encode()).hexdigest()[:8]
