"""Deploy, roll back and run experiments: verified versions in, signed commands out, the history read back.

``start_experiment`` publishes a ``shadow`` or a ``canary`` of a candidate beside the active version;
``promote`` and ``abort`` end the running one (:mod:`services.deployment.experiments`). Each is refused
before anything is published when the command log would refuse it (no active version, no experiment
running, another candidate).

``rollback`` with no target reads the deployment state (:mod:`services.deployment.state`) and goes to the
most recent version that was healthy: a version the monitor rolled back for an alert, or one that no
replica could load, is skipped (the operator can still name it).

A deploy or rollback is one command on the command topic (the audit log); the prediction services
activate what it names. Nothing is published for a version that is not in the registry or does not
verify, so a typo or a tampered artifact never reaches the services.

:class:`AckWait` then waits for the replicas' answers (``activated`` or ``rejected`` on
``rec.model-events``): it follows the deployment state from before the command is published, takes the
replicas live at that moment as the ones that must answer, and reports each answer with its delay.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.errors import CommandError, KafkaClientError
from services.config import Settings
from services.deployment import commands, experiments
from services.deployment.commands import Action, History
from services.deployment.follower import Follower, read_state
from services.deployment.state import DeploymentState
from services.registry import Registry
from services.registry.keys import keyring_of, signer_of


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
    **experiment: Any,
) -> dict[str, Any]:
    # Verify first: raises VersionNotFound or VerificationError, and then nothing is published.
    (registry or Registry.from_settings(settings)).verify(version)
    signer = signer_of(settings, "operator")
    if signer is None and keyring_of(settings) is not None:
        # The replicas holding that keyring would ignore an unsigned command: say so now instead.
        raise CommandError(
            f"a keyring is set but no operator key (keys.operator_key): the replicas would ignore an "
            f"unsigned {action}; nothing published"
        )
    command = commands.make(
        action,
        version,
        reason,
        key=_key(settings),
        signer=signer,
        issued_by=issued_by or operator(),
        model=settings.model_name,
        **experiment,
    )
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


def start_experiment(
    settings: Settings,
    version: str,
    traffic: float | None = None,
    reason: str = "",
    *,
    registry: Registry | None = None,
    issued_by: str | None = None,
    state: DeploymentState | None = None,
) -> dict[str, Any]:
    """Publish a ``shadow`` of ``version`` (``traffic`` None) or a ``canary`` sending the share ``traffic``
    of users to it, beside the active version; refused (nothing published) when the log would refuse it."""
    if traffic is not None and not 0.0 < traffic < 1.0:
        raise CommandError(f"a canary's traffic must be in (0, 1), not {traffic:g}")
    action: Action = "shadow" if traffic is None else "canary"
    state = state or read_state(settings)
    probe = {"command_id": "c-new", "action": action, "model_version": version, "traffic": traffic}
    refused = experiments.refusal(probe, state.applied)
    if refused is not None:
        raise CommandError(refused.replace("command c-new: ", "", 1))
    what = f"shadow {version}" if traffic is None else f"canary {version} at {traffic:g}"
    return _publish(settings, action, version, reason or what, registry, issued_by, traffic=traffic)


def end_experiment(
    settings: Settings,
    action: Action,
    version: str | None = None,
    reason: str = "",
    *,
    registry: Registry | None = None,
    issued_by: str | None = None,
    state: DeploymentState | None = None,
) -> dict[str, Any]:
    """Publish a ``promote`` or ``abort`` of the running experiment (whose candidate ``version``, when
    given, must be), carrying its ``experiment_id``."""
    state = state or read_state(settings)
    running = state.experiment
    if running is None:
        raise CommandError(f"no experiment is running to {action}")
    if version is not None and version != running.candidate:
        raise CommandError(
            f"the running experiment {running.experiment_id} is on {running.candidate}, not {version}"
        )
    what = f"{action} {running.candidate} ({running.mode} {running.experiment_id})"
    return _publish(
        settings,
        action,
        running.candidate,
        reason or what,
        registry,
        issued_by,
        experiment_id=running.experiment_id,
    )


def promote(settings: Settings, version: str | None = None, reason: str = "", **kw: Any) -> dict[str, Any]:
    """Make the running experiment's candidate the active version for everyone."""
    return end_experiment(settings, "promote", version, reason, **kw)


def abort(settings: Settings, version: str | None = None, reason: str = "", **kw: Any) -> dict[str, Any]:
    """End the running experiment: everyone back to the incumbent."""
    return end_experiment(settings, "abort", version, reason, **kw)


#: How long ``deploy`` and ``rollback`` wait for the live replicas' answers by default (seconds).
ACK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Answer:
    """One replica's answer to a command, or its absence."""

    instance: str
    outcome: str  # activated, rejected, silent (stopped heartbeating), no answer (timed out)
    delay_ms: int | None = None  # publication to the answer being read, on this process's clock
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "activated"

    def describe(self) -> str:
        if self.outcome == "activated":
            return f"{self.instance} activated it in {self.delay_ms} ms"
        if self.outcome == "rejected":
            return f"{self.instance} rejected it in {self.delay_ms} ms: {self.error}"
        return f"{self.instance}: {self.error}"


@dataclass
class Acknowledgements:
    """What the replicas answered to one command."""

    command: dict[str, Any]
    expected: list[str]  # the replicas live when it was published: each must activate it
    answers: list[Answer] = field(default_factory=list)

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.instance in self.expected and not a.ok]

    @property
    def ok(self) -> bool:
        return not self.failures


class AckWait:
    """Follows the deployment state from before a command is published, then waits for its answers.

    Use as a context manager around the publication::

        with AckWait(settings) as acks:
            command = deploy(settings, version)
            result = acks.wait(command, timeout_s=60, on_answer=print)

    The delays are measured on this process's monotonic clock, from the publication to the moment the
    answer is read: the replicas' and the issuer's wall clocks are never compared.
    """

    def __init__(self, settings: Settings, ready_timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.ready_timeout_s = ready_timeout_s
        # Never committed (assign), so the name only has to fall under the operator's prefix.
        self.follower = Follower(settings, f"{settings.topic_prefix}cli-acks")

    def __enter__(self) -> AckWait:
        self.follower.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.follower.ready.wait(0.1):
            problem = None
            if self.follower.error is not None or not self.follower.is_alive():
                problem = f"cannot follow the deployment state: {self.follower.error}"
            elif time.monotonic() > deadline:
                behind = ", ".join(
                    f"{t}[{p}] ({'nothing read' if at is None else f'at offset {at}'}, its end {end})"
                    for (t, p), (at, end) in sorted(self.follower.behind.items())
                )
                where = f"not at the end of {behind}" if behind else "the command log not opened yet"
                problem = f"the deployment state was not read within {self.ready_timeout_s:.0f} s ({where})"
            if problem is not None:
                self.follower.stop()  # __exit__ does not run when __enter__ raises
                raise KafkaClientError(problem)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.follower.stop()

    def wait(
        self,
        command: dict[str, Any],
        timeout_s: float = ACK_TIMEOUT_S,
        on_answer: Callable[[Answer], None] | None = None,
    ) -> Acknowledgements:
        """Wait until every replica live now has answered ``command`` (or stopped heartbeating), or until
        ``timeout_s``; ``on_answer`` is told each answer as it comes, a replica that starts meanwhile
        included. With no live replica, return at once: replicas load the commanded version at start."""
        published = time.monotonic()
        state, lock = self.follower.state, self.follower.lock
        with lock:
            expected = [r.instance for r in state.live()]
        result = Acknowledgements(command, expected)
        if not expected:
            return result
        command_id, seen = command["command_id"], dict[str, Answer]()

        def tell(answer: Answer) -> None:
            seen[answer.instance] = answer
            result.answers.append(answer)
            if on_answer is not None:
                on_answer(answer)

        while True:
            if self.follower.error is not None:
                raise KafkaClientError(f"cannot follow the replicas' answers: {self.follower.error}")
            with lock:
                acks = dict(state.acks.get(command_id, {}))
                live = {r.instance for r in state.live()}
            delay_ms = int((time.monotonic() - published) * 1000)
            for instance, ack in sorted(acks.items()):
                if instance not in seen:
                    tell(Answer(instance, ack.event, delay_ms, ack.error))
            for instance in expected:
                if instance not in seen and instance not in live:
                    tell(Answer(instance, "silent", error="stopped heartbeating before it answered"))
            if all(i in seen for i in expected):
                return result
            if time.monotonic() - published > timeout_s:
                for instance in expected:
                    if instance not in seen:
                        tell(Answer(instance, "no answer", error=f"no answer within {timeout_s:g} s"))
                return result
            time.sleep(0.05)  # polling the follower's state, which a background thread fills


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
    experiment_id: str | None = None  # a shadow, canary, promote or abort's experiment
    traffic: float | None = None  # a canary's share

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
            "experiment_id": self.experiment_id,
            "traffic": self.traffic,
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
                experiment_id=(
                    experiments.experiment_id_of(command)
                    if command["action"] in experiments.STARTING
                    else command.get("experiment_id")
                ),
                traffic=command.get("traffic"),
            )
        )
    return out
