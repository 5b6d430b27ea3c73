"""Deploy and roll back: verified versions in, signed commands out, and the history read back.

``rollback`` with no target reads the deployment state (:mod:`services.deployment.state`) and goes to the
most recent version that was healthy: a version the monitor rolled back for an alert, or one that no
replica could load, is skipped (the operator can still name it).

A deploy or rollback is one command on the command topic (the audit log); the prediction services
activate what it names. Nothing is published for a version that is not in the registry or does not
verify, so a typo or a tampered artifact never reaches the services.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.errors import CommandError
from services.config import Settings
from services.deployment import commands
from services.deployment.commands import Action, History
from services.deployment.follower import read_state
from services.deployment.state import DeploymentState
from services.registry import Registry


def _key(settings: Settings) -> str | None:
    return settings.signing_key.get_secret_value() if settings.signing_key else None


def operator() -> str:
    """Who issues a command from this shell, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:128]


def _publish(
    settings: Settings,
    action: Action,
    version: str,
    reason: str,
    registry: Registry | None,
    issued_by: str | None,
) -> dict[str, Any]:
    # Verify first: raises VersionNotFound or VerificationError, and then nothing is published.
    (registry or Registry.from_settings(settings)).verify(version)
    command = commands.make(action, version, reason, key=_key(settings), issued_by=issued_by or operator())
    commands.publish(settings, command)
    return command


def deploy(
    settings: Settings,
    version: str,
    reason: str = "",
    *,
    registry: Registry | None = None,
    issued_by: str | None = None,
) -> dict[str, Any]:
    """Publish a ``deploy`` command for ``version`` once it verifies; return the command."""
    return _publish(settings, "deploy", version, reason or f"deploy {version}", registry, issued_by)


def rollback(
    settings: Settings,
    to: str | None = None,
    reason: str = "",
    *,
    registry: Registry | None = None,
    issued_by: str | None = None,
    state: DeploymentState | None = None,
) -> dict[str, Any]:
    """Publish a ``rollback`` to ``to``, by default to the most recent version that was healthy before the
    one commanded now: never one rolled back for an alert, nor one no replica could load (name such a
    version with ``to`` to go back to it anyway)."""
    if to is None:
        state = state or read_state(settings)
        to, why_not = state.rollback_target()
        if to is None:
            raise CommandError(why_not)
    return _publish(settings, "rollback", to, reason or f"roll back to {to}", registry, issued_by)


@dataclass(frozen=True)
class Period:
    """One stretch of the history: ``version`` active from ``since`` until ``until`` (None: still)."""

    version: str
    action: str
    reason: str
    since: int
    until: int | None
    command_id: str
    issued_by: str | None
    alert_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "action": self.action,
            "reason": self.reason,
            "since": self.since,
            "since_iso": iso(self.since),
            "until": self.until,
            "until_iso": iso(self.until) if self.until is not None else None,
            "command_id": self.command_id,
            "issued_by": self.issued_by,
            "alert_id": self.alert_id,
        }


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def timeline(history: History) -> list[Period]:
    """Which version was active when, and why, from the applied commands."""
    applied = history.applied
    out = []
    for i, command in enumerate(applied):
        until = applied[i + 1]["ts"] if i + 1 < len(applied) else None
        out.append(
            Period(
                version=command["model_version"],
                action=command["action"],
                reason=command["reason"],
                since=command["ts"],
                until=until,
                command_id=command["command_id"],
                issued_by=command.get("issued_by"),
                alert_id=command.get("alert_id"),
            )
        )
    return out
