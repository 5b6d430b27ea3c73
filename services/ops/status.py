"""``modelwatch status``: the fleet at a glance, as one JSON-ready document.

What it gathers, each from where it is written:

- the commanded and the served version, and the last commands with each replica's answer: the deployment
  state (:func:`services.deployment.follower.read_state`: the command log, the replicas' events);
- each replica from its heartbeats on ``rec.model-events``: instance, version, partitions and the age of
  its last event; a replica silent for three heartbeats (``serve.heartbeat_s``) is ``gone``;
- the monitor's consumer group (``<prefix>monitor``): its members and, per partition it has committed,
  the lag (high watermark minus committed offset), from the admin client;
- the alerts firing now: ``rec.alerts`` read back :data:`ALERTS_LOOKBACK_MS`, each ``alert_id``'s last
  state kept (an alert that fired earlier than that and never resolved is not shown).

Ages compare the replicas' clocks with this machine's: a replica whose clock is off looks older or younger
than it is. Nothing here changes anything: readers assign partitions and commit nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException

from schemas import codec
from schemas.errors import ContractError, KafkaClientError
from services import kafka
from services.config import Settings
from services.deployment.follower import read_state
from services.deployment.state import DeploymentState, now_ms

log = logging.getLogger(__name__)

#: How far back ``rec.alerts`` is read for the alerts firing now.
ALERTS_LOOKBACK_MS = 6 * 3600 * 1000

#: How many of the last commands are shown.
LAST_COMMANDS = 5


def replicas_of(state: DeploymentState, heartbeat_s: float, now: int) -> list[dict[str, Any]]:
    """Every replica heard from, by instance: ``serving``, ``idle`` (no model yet) or ``gone`` (silent
    for three heartbeats)."""
    gone_after_ms = 3 * heartbeat_s * 1000
    out = []
    for replica in sorted(state.replicas.values(), key=lambda r: r.instance):
        age_ms = now - replica.last_ts
        status = "serving" if replica.version is not None else "idle"
        if age_ms > gone_after_ms:
            status = "gone"
        out.append(
            {
                "instance": replica.instance,
                "status": status,
                "version": replica.version,
                "partitions": list(replica.partitions),
                "last_heartbeat_age_s": round(age_ms / 1000, 1),
            }
        )
    return out


def last_commands(state: DeploymentState, n: int = LAST_COMMANDS) -> list[dict[str, Any]]:
    out = []
    for command in state.applied[-n:]:
        answers = state.acks.get(command["command_id"], {})
        out.append(
            {
                "command_id": command["command_id"],
                "action": command["action"],
                "version": command["model_version"],
                "reason": command["reason"],
                "issued_by": command.get("issued_by"),
                "ts": command["ts"],
                "acks": {
                    instance: {"event": ack.event, "error": ack.error}
                    for instance, ack in sorted(answers.items())
                },
            }
        )
    return out


def firing_alerts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts whose last event (in log order) says ``firing``, oldest first."""
    last: dict[str, dict[str, Any]] = {}
    for alert in records:
        last[alert["alert_id"]] = alert
    return sorted((a for a in last.values() if a["state"] == "firing"), key=lambda a: a["ts"])


def read_alerts(settings: Settings, since_ms: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The alerts published since ``since_ms``, in log order (one partition per model version's key);
    a malformed one is skipped (``tail`` shows it)."""
    out = []
    try:
        records = kafka.read_topic(settings, settings.topic("alerts"), timeout=timeout, since_ms=since_ms)
    except KafkaClientError as exc:
        log.warning("no alerts: %s", exc)
        return []
    decode = codec("alert").decode
    for _key, value, _ts in records:
        try:
            out.append(decode(value))
        except ContractError:
            continue
    return out


def monitor_group(settings: Settings, timeout: float = 10.0, group: str | None = None) -> dict[str, Any]:
    """A consumer group of the monitor: its state, members and their partitions, and the lag per partition
    the group has committed (high watermark minus committed offset). ``group``: the Faust group (the
    default: its internal topics and the dead letters), or the source reader's (``monitor_route_group``:
    predictions, shadow predictions and outcomes)."""
    group = group or settings.monitor_app_id  # the monitor of the settings' model
    admin = kafka.admin(settings)
    doc: dict[str, Any] = {"group": group, "state": "unknown", "members": [], "lag": [], "total_lag": 0}
    try:
        description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result()
        committed = (
            admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)[
                group
            ]
            .result()
            .topic_partitions
            or []
        )
    except KafkaException as exc:
        doc["error"] = exc.args[0].str()
        return doc
    doc["state"] = str(description.state.name).lower()
    doc["members"] = [
        {
            "client_id": m.client_id,
            "host": m.host,
            "partitions": sorted(
                f"{tp.topic}[{tp.partition}]"
                for tp in (m.assignment.topic_partitions if m.assignment else [])
            ),
        }
        for m in sorted(description.members, key=lambda m: m.client_id)
    ]
    consumer = kafka.consumer(settings, f"{group}-status")  # asks for watermarks only: never subscribes
    try:
        for tp in sorted(committed, key=lambda t: (t.topic, t.partition)):
            if tp.offset < 0:
                continue  # nothing committed there yet
            _low, high = kafka.watermarks(consumer, tp.topic, tp.partition, timeout=timeout)
            lag = max(high - tp.offset, 0)
            doc["lag"].append({"topic": tp.topic, "partition": tp.partition, "lag": lag})
            doc["total_lag"] += lag
    finally:
        consumer.close()
    return doc


def fleet_status(settings: Settings, timeout: float = 10.0) -> dict[str, Any]:
    """The whole picture of the settings' model (``--model``), as ``modelwatch status --json`` prints it."""
    state = read_state(settings, timeout=timeout)
    now = now_ms()
    alerts = [
        a
        for a in read_alerts(settings, now - ALERTS_LOOKBACK_MS, timeout=timeout)
        if settings.model_of(a) == settings.model_name
    ]
    return {
        "at": now,
        "heartbeat_s": settings.serve.heartbeat_s,
        "model": {
            "name": settings.model_name,
            "commanded": state.commanded,
            "served": state.served(now),
            "unloadable": state.commanded is not None and state.unloadable(state.commanded),
        },
        "replicas": replicas_of(state, settings.serve.heartbeat_s, now),
        "monitor": monitor_group(settings, timeout),
        "monitor_sources": monitor_group(settings, timeout, settings.monitor_route_group),
        "alerts_firing": firing_alerts(alerts),
        "last_commands": last_commands(state),
    }


__all__ = ["ALERTS_LOOKBACK_MS", "firing_alerts", "fleet_status", "monitor_group", "replicas_of"]
