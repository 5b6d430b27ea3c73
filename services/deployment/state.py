"""The deployment state: what was commanded, and what each replica really did about it.

Two logs make it, and the replicas, the monitor and the CLI read them alike
(:mod:`services.deployment.follower`):

- the command log (``rec.model-commands``, one partition): commands in offset order, judged by
  :class:`~services.deployment.commands.History` (each ``command_id`` once, signatures checked);
- the replicas' own events (``rec.model-events``, keyed by instance, so one replica's events keep their
  order): ``activated`` and ``rejected`` acknowledge a command, ``heartbeat`` says what a replica serves.

So the *commanded* version (the last applied command) is kept apart from the version the live replicas
*serve*: a deploy whose version no replica could load leaves the fleet on the old version, and the state
says so (which replicas rejected it, and why). Such a version is never a rollback target, and
:meth:`DeploymentState.served` (not the commanded version) is what a rollback decision is about.

A replica is live while its last event is at most ``live_ms`` old. That compares two wall clocks, the
replica's and the reader's: a replica whose clock is off by more than ``live_ms`` looks dead (or lingers),
which changes what is shown and which replicas count, never the order of commands.

Models: the command log and the event topic are shared by every model. A state is about one model
(``model``): it skips the commands and events that name another (``model``; absent: ``default_model``),
so a command for one model never moves another, and a replica serving several models is, for each, a
replica of that model alone. A state built without ``model`` takes every command and event.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from schemas import codec
from schemas.errors import ContractError
from services.deployment.commands import History
from services.deployment.experiments import Experiment
from services.registry.keys import Keyring

#: A replica's ``rejected`` event whose error starts with this says the version would not load there
#: (missing, tampered, unpicklable), as opposed to a command refused for itself (replayed, forged).
LOAD_FAILURE = "cannot load"

#: Who signs the monitor's rollbacks (``issued_by``).
MONITOR = "modelwatch-monitor"


@dataclass
class Ack:
    """One replica's answer to one command."""

    event: str  # activated or rejected
    ts: int  # the replica's clock
    error: str | None = None


@dataclass
class Replica:
    """What one replica last said about itself."""

    instance: str
    version: str | None  # the version it serves (None: no model yet)
    last_ts: int  # its last event's ts (its clock)
    partitions: list[int] = field(default_factory=list)


def now_ms() -> int:
    return int(time.time() * 1000)


class DeploymentState:
    """Commands in log order plus every replica's acknowledgements; fed by a follower, read by anyone."""

    def __init__(
        self,
        key: str | None = None,
        live_ms: int = 15_000,
        keyring: Keyring | None = None,
        *,
        model: str | None = None,
        default_model: str | None = None,
    ) -> None:
        self.history = History(key=key, keyring=keyring)
        #: The model this state is about (``None``: every command and event), and the model of those
        #: that name none.
        self.model, self.default_model = model, default_model or model
        #: Commands skipped because they are another model's.
        self.other_models = 0
        self.live_ms = live_ms
        #: Where each applied command sits in the log (its offset), for people and tests.
        self.offsets: dict[str, int] = {}
        self.replicas: dict[str, Replica] = {}
        #: command_id -> instance -> that replica's answer.
        self.acks: dict[str, dict[str, Ack]] = {}
        #: version -> instance -> why it would not load there (dropped once that replica activates it).
        self.load_failures: dict[str, dict[str, str]] = {}
        #: version -> the replicas that ever activated it.
        self.loaded: dict[str, set[str]] = {}
        self.malformed_events = 0

    def concerns(self, event: dict[str, Any]) -> bool:
        """Whether a command or model event is about this state's model."""
        if self.model is None:
            return True
        named = event.get("model")
        return (named if isinstance(named, str) else self.default_model) == self.model

    # -- the command log -------------------------------------------------------------------------------

    def judge(self, command: dict[str, Any]) -> str | None:
        """Why ``command`` would not be applied now, or ``None``."""
        return self.history.judge(command)

    def feed_command(self, command: dict[str, Any], offset: int | None = None) -> bool:
        """Apply the next command of the log; return whether it was applied (not replayed, forged, nor
        another model's: such a command is counted in ``other_models``, not in ``history.ignored``)."""
        if not self.concerns(command):
            self.other_models += 1
            return False
        applied = self.history.feed(command)
        if applied and offset is not None:
            self.offsets[command["command_id"]] = offset
        return applied

    def feed_command_raw(self, value: bytes | None, offset: int | None = None) -> bool:
        try:
            command = codec("model-command").decode(value)
        except ContractError as exc:
            self.history.ignored.append((None, str(exc)))
            return False
        return self.feed_command(command, offset)

    @property
    def applied(self) -> list[dict[str, Any]]:
        return self.history.applied

    @property
    def commanded(self) -> str | None:
        """The version commanded for everyone (during an experiment, the incumbent)."""
        return self.history.active_version

    @property
    def experiment(self) -> Experiment | None:
        """The experiment commanded now, if any."""
        return self.history.experiment

    # -- the replicas' events --------------------------------------------------------------------------

    def feed_event(self, event: dict[str, Any]) -> None:
        if not self.concerns(event):
            return
        instance, version, ts = event["instance"], event.get("model_version"), int(event["ts"])
        kind, command_id = event["event"], event.get("command_id")
        replica = self.replicas.setdefault(instance, Replica(instance, None, ts))
        replica.last_ts = max(replica.last_ts, ts)
        if kind == "heartbeat":
            replica.version = version
            replica.partitions = list(event.get("partitions") or [])
            return
        if kind == "activated":
            replica.version = version
            if version is not None:
                self.loaded.setdefault(version, set()).add(instance)
                self.load_failures.get(version, {}).pop(instance, None)
            if command_id is not None:
                self.acks.setdefault(command_id, {})[instance] = Ack("activated", ts)
            return
        error = str(event.get("error") or "")
        if command_id is not None:
            answers = self.acks.setdefault(command_id, {})
            # A replay of a command this replica obeyed is refused as such: the obedience stands.
            if instance not in answers or answers[instance].event != "activated":
                answers[instance] = Ack("rejected", ts, error)
        if version is not None and error.startswith(LOAD_FAILURE):
            self.load_failures.setdefault(version, {})[instance] = error

    def feed_event_raw(self, value: bytes | None) -> None:
        try:
            event = codec("model-event").decode(value)
        except ContractError:
            self.malformed_events += 1  # not ours to judge: the replicas wrote it, tail shows it
            return
        self.feed_event(event)

    # -- views -----------------------------------------------------------------------------------------

    def live(self, now: int | None = None) -> list[Replica]:
        """Replicas heard from within ``live_ms``, by instance."""
        at = now_ms() if now is None else now
        return sorted(
            (r for r in self.replicas.values() if at - r.last_ts <= self.live_ms), key=lambda r: r.instance
        )

    def serving(self, now: int | None = None) -> dict[str, str | None]:
        """Live instance -> the version it serves."""
        return {r.instance: r.version for r in self.live(now)}

    def served(self, now: int | None = None) -> str | None:
        """The version the live replicas serve (the one most of them serve; on a tie, the commanded one,
        else the one heard from last); ``None`` when no live replica serves any."""
        live = [r for r in self.live(now) if r.version is not None]
        if not live:
            return None
        counts = Counter(r.version for r in live)
        last = {r.version: r.last_ts for r in sorted(live, key=lambda r: r.last_ts)}
        return max(counts, key=lambda v: (counts[v], v == self.commanded, last[v]))

    def rejected(self, version: str) -> dict[str, str]:
        """Instance -> why ``version`` would not load there, for replicas that have not loaded it since."""
        return dict(sorted(self.load_failures.get(version, {}).items()))

    def unloadable(self, version: str) -> bool:
        """Some replica could not load ``version`` and none ever did."""
        return bool(self.rejected(version)) and not self.loaded.get(version)

    def rolled_back_for_alerts(self) -> set[str]:
        """Versions taken out by a rollback for an alert (``alert_id``, or issued by the monitor): the one
        served when it came, that is the last commanded before it that some replica could load (a version
        no replica loaded was never served, so an alert cannot have been about it)."""
        out: set[str] = set()
        activations = self.history.activations()
        for at, command in enumerate(activations):
            if command["action"] != "rollback" or not (
                command.get("alert_id") or command.get("issued_by") == MONITOR
            ):
                continue
            earlier = (str(c["model_version"]) for c in reversed(activations[:at]))
            served = next((v for v in earlier if not self.unloadable(v)), None)
            if served is not None:
                out.add(served)
        return out

    def rollback_target(self) -> tuple[str | None, str]:
        """The most recent version that was healthy, other than the one commanded now, and why not others:
        never a version rolled back for an alert, nor one that no replica could load."""
        current = self.commanded
        if current is None:
            return None, "nothing is deployed yet, so there is nothing to roll back"
        for_alerts, skipped = self.rolled_back_for_alerts(), dict[str, str]()
        for command in reversed(self.history.activations()):
            version = str(command["model_version"])
            if version == current or version in skipped:
                continue
            if version in for_alerts:
                skipped[version] = "rolled back for an alert"
            elif self.unloadable(version):
                skipped[version] = "loaded by no replica"
            else:
                return version, ""
        if not skipped:
            return None, f"no version was active before {current}; name one with --to"
        why = ", ".join(f"{v} {reason}" for v, reason in skipped.items())
        return None, f"no healthy version before {current} ({why}); name one with --to"
