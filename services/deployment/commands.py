"""Model commands: the deployment audit log on ``rec.model-commands``.

A command orders every replica to activate a version (``deploy``, or ``rollback`` to an earlier one), or
runs an experiment on top of the active version (``shadow``, ``canary``, then ``promote`` or ``abort``:
:mod:`services.deployment.experiments`).
With a keyring set (:mod:`services.registry.keys`), a command counts only when its ``signed_by`` is a valid
Ed25519 signature by a key whose role may order its action: an operator's (the CLI) or the monitor's (which
may only name a version some earlier command named). A replica holds the keyring of public keys, so it can
verify commands but cannot sign one. The legacy HMAC mode (``signing_key``, one secret shared by every
signer and verifier) is checked as before when set: an HMAC-SHA256 ``signature`` over the canonical JSON
(sorted keys, no whitespace, the signature fields left out). Every reader ignores a command that fails
either, with the reason.

The history is read in log order: the command topic has exactly one partition
(:func:`services.kafka.topics.check_command_log`), so its offsets order every command, whoever wrote it
and with whatever partitioner. A ``command_id`` counts once, at its first appearance, so a replayed command
changes nothing. ``ts`` is the issuer's clock, recorded for people: issuers' clocks may be minutes apart,
so it never decides which command is in force; the later one in the log is.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from schemas import codec
from schemas.errors import CommandError, ContractError
from services import kafka
from services.config import Settings
from services.deployment import experiments
from services.deployment.experiments import Experiment
from services.registry.keys import SIGNATURE_FIELDS, Keyring, Signer

Action = Literal["deploy", "rollback", "shadow", "canary", "promote", "abort"]


def _canonical(command: dict[str, Any]) -> bytes:
    # Both signatures cover the same body, so neither depends on whether the other is there.
    body = {k: v for k, v in command.items() if k not in SIGNATURE_FIELDS}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign(command: dict[str, Any], key: str) -> dict[str, Any]:
    """``command`` with its signature set."""
    digest = hmac.new(key.encode(), _canonical(command), hashlib.sha256).hexdigest()
    return {**command, "signature": digest}


def verify(command: dict[str, Any], key: str | None) -> None:
    """Raise :class:`CommandError` unless ``command`` is validly signed (a no-op without a key)."""
    if key is None:
        return
    given = command.get("signature")
    if not given:
        raise CommandError(f"command {command.get('command_id')} is not signed, and a signing key is set")
    expected = hmac.new(key.encode(), _canonical(command), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(str(given), expected):
        raise CommandError(f"command {command.get('command_id')} has a forged or stale signature")


def make(
    action: Action,
    model_version: str,
    reason: str,
    *,
    key: str | None = None,
    signer: Signer | None = None,
    command_id: str | None = None,
    issued_by: str | None = None,
    alert_id: str | None = None,
    ts: int | None = None,
    traffic: float | None = None,
    experiment_id: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A valid model-command event, signed by ``signer`` (Ed25519) and with ``key`` (legacy HMAC) if given;
    ``model`` names the model it is for (inside the signed body: a signed command cannot be moved to
    another model), absent: the default model's."""
    command: dict[str, Any] = {
        "command_id": command_id or f"c-{uuid.uuid4().hex}",
        "action": action,
        "model_version": model_version,
        "reason": reason,
        "ts": ts if ts is not None else int(time.time() * 1000),
    }
    if issued_by:
        command["issued_by"] = issued_by
    if alert_id:
        command["alert_id"] = alert_id
    if traffic is not None:
        command["traffic"] = traffic
    if experiment_id:
        command["experiment_id"] = experiment_id
    if model:
        command["model"] = model
    if signer is not None:
        command["signed_by"] = signer.sign("command", command)
    if key:
        command = sign(command, key)
    codec("model-command").validate(command)
    return command


def publish(settings: Settings, command: dict[str, Any], timeout: float = 10.0) -> None:
    """Write one command to the command topic and wait for the broker's acknowledgement."""
    producer = kafka.producer(settings)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(
        settings.topic("model-commands"),
        key=settings.model_name.encode(),
        value=codec("model-command").encode(command),
        on_delivery=on_delivery,
    )
    if producer.flush(timeout) != 0 or errors:
        raise CommandError(f"command {command['command_id']} was not acknowledged: {errors or 'timeout'}")


@dataclass
class History:
    """The deployment history, built by feeding commands in log order."""

    key: str | None = None
    #: The public keys that may order commands; ``None``: no public-key signature is asked for.
    keyring: Keyring | None = None
    #: Applied commands, in order.
    applied: list[dict[str, Any]] = field(default_factory=list)
    #: Commands ignored, with the reason (unsigned, forged, replayed, malformed).
    ignored: list[tuple[dict[str, Any] | None, str]] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    @property
    def current(self) -> dict[str, Any] | None:
        return self.applied[-1] if self.applied else None

    @property
    def active_version(self) -> str | None:
        """The version everyone is sent to outside an experiment (the incumbent during one)."""
        return experiments.active_version(self.applied)

    @property
    def experiment(self) -> Experiment | None:
        """The experiment running now, if any."""
        return experiments.running(self.applied)

    def activations(self) -> list[dict[str, Any]]:
        """The applied commands that made their version active for everyone, in order."""
        return [c for c in self.applied if c["action"] in experiments.ACTIVATING]

    def previous_version(self) -> str | None:
        """The version that was active before the current one (``rollback`` without ``--to``)."""
        current = self.active_version
        for command in reversed(self.activations()):
            if command["model_version"] != current:
                return str(command["model_version"])
        return None

    def judge(self, command: dict[str, Any]) -> str | None:
        """Why ``command`` would not be applied now, or ``None`` if it would."""
        if command["command_id"] in self._seen:
            return f"command {command['command_id']} was already applied"
        try:
            verify(command, self.key)
        except CommandError as exc:
            return str(exc)
        if self.keyring is not None:
            refused = self.keyring.refusal(
                "command",
                command,
                command["action"],
                version=command["model_version"],
                deployed={c["model_version"] for c in self.applied},
            )
            if refused is not None:
                return f"command {command['command_id']} refused: {refused}"
        return experiments.refusal(command, self.applied)

    def feed(self, command: dict[str, Any]) -> bool:
        """Apply ``command`` if it is valid and new; return whether it was applied."""
        reason = self.judge(command)
        if reason is not None:
            self.ignored.append((command, reason))
            return False
        self._seen.add(command["command_id"])
        self.applied.append(command)
        return True

    def feed_raw(self, value: bytes | None) -> bool:
        try:
            command = codec("model-command").decode(value)
        except ContractError as exc:
            self.ignored.append((None, str(exc)))
            return False
        return self.feed(command)

    @classmethod
    def of(
        cls, commands: Iterable[dict[str, Any]], key: str | None = None, keyring: Keyring | None = None
    ) -> History:
        history = cls(key=key, keyring=keyring)
        for c in commands:
            history.feed(c)
        return history


def read_history(settings: Settings, timeout: float = 10.0) -> History:
    """The deployment history as the command topic holds it now: the commands of
    :func:`services.deployment.follower.read_state`, the one reader of the command log."""
    from services.deployment.follower import read_state  # it builds on this module

    return read_state(settings, timeout=timeout).history
