"""How the ops console draws events: each message decoded as a :class:`TailEvent` (valid, or bad with
the reason) and drawn by :class:`LineFormatter` as one line, commands and their acknowledgements sharing
columns so they read side by side."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from rich.text import Text

from schemas import codec
from schemas import topics as contract
from schemas.errors import ContractError

#: Widths of the shared columns; longer values push the line right rather than being cut.
TOPIC_WIDTH = max(len(t.suffix) for t in contract.ALL)
KIND_WIDTH = 11
VERSION_WIDTH = 24
ID_WIDTH = 10
PAYLOAD_CHARS = 120

#: Commands by action: deploys blue, an experiment's start cyan, its end green or red, rollbacks orange.
COMMAND_STYLES = {
    "deploy": "bold bright_blue",
    "shadow": "bold cyan",
    "canary": "bold cyan",
    "promote": "bold green",
    "abort": "bold red",
}

#: Acks are matched to commands seen earlier in the same run; bounded so a long session stays small.
REMEMBERED_COMMANDS = 10_000

TOPIC_STYLES = {
    "requests": "cyan",
    "predictions": "blue",
    "outcomes": "magenta",
    "metrics": "bright_cyan",
    "alerts": "bold yellow",
    "model-commands": "bold bright_blue",
    "model-events": "bright_blue",
    "requests.dlq": "red",
    "experiments": "bold green",
}


@dataclass(frozen=True)
class TailEvent:
    """One message as the console sees it: a valid contract event, or a bad one with the reason."""

    topic: contract.Topic
    partition: int
    offset: int
    key: bytes | None
    #: The Kafka message timestamp (ms), used when the event itself has no readable ``ts``.
    timestamp_ms: int | None
    raw: bytes | None
    #: The decoded event when it is valid, else ``None``.
    event: dict[str, Any] | None
    #: Why the message is bad, else ``None``.
    error: str | None = None
    #: A bad message's JSON object, when it parsed: filters still look at its fields.
    loose: dict[str, Any] | None = None

    @classmethod
    def decode(
        cls,
        topic: contract.Topic,
        value: bytes | None,
        *,
        partition: int = 0,
        offset: int = 0,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> TailEvent:
        try:
            event = codec(topic.event).decode(value)
        except ContractError as exc:
            loose: dict[str, Any] | None = None
            try:
                parsed = orjson.loads(value) if value is not None else None
                loose = parsed if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                pass
            return cls(topic, partition, offset, key, timestamp_ms, value, None, str(exc), loose)
        return cls(topic, partition, offset, key, timestamp_ms, value, event)

    @property
    def bad(self) -> bool:
        return self.event is None

    @property
    def ts_ms(self) -> int | None:
        if self.event is not None:
            return int(self.event["ts"])
        return self.timestamp_ms


def _clock(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "--:--:--.---"
    try:
        return datetime.fromtimestamp(ts_ms / 1000).strftime("%H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):  # a ts far outside what the platform can show
        return f"ts={ts_ms}"


def _num(value: Any, digits: int = 3) -> str:
    return "  -  " if value is None else f"{value:.{digits}f}"


def _short(text: str, limit: int = PAYLOAD_CHARS) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _items(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" +{len(items) - limit}" if len(items) > limit else "")


class LineFormatter:
    """Draws events as one line each. Stateful only to show how long after its command an ack came."""

    def __init__(self) -> None:
        self._command_ts: OrderedDict[str, int] = OrderedDict()

    def format(self, ev: TailEvent) -> Text:
        line = Text()
        line.append(_clock(ev.ts_ms), style="dim")
        line.append(" ")
        line.append(ev.topic.suffix.ljust(TOPIC_WIDTH), style=TOPIC_STYLES.get(ev.topic.suffix, ""))
        line.append("  ")
        if ev.event is None:
            return self._bad(line, ev)
        draw = getattr(self, "_" + ev.topic.event.replace("-", "_"))
        draw(line, ev.event)
        return line

    def _kind(self, line: Text, label: str, style: str) -> None:
        line.append(label.ljust(KIND_WIDTH), style=style)
        line.append(" ")

    def _version(self, line: Text, version: str | None) -> None:
        line.append((version or "(none)").ljust(VERSION_WIDTH), style="bold")
        line.append("  ")

    def _bad(self, line: Text, ev: TailEvent) -> Text:
        self._kind(line, "✗ BAD", "bold white on red")
        line.append(f"p{ev.partition}@{ev.offset} ", style="dim")
        line.append(ev.error or "unreadable", style="bold red")
        payload = "null" if ev.raw is None else ev.raw.decode("utf-8", errors="replace")
        line.append("  payload ", style="dim")
        line.append(_short(payload), style="red")
        return line

    def _prediction_request(self, line: Text, e: dict[str, Any]) -> None:
        self._kind(line, "request", "cyan")
        line.append(f"{e['request_id']}  user {e['user_id']}  {len(e['items'])} candidates")
        if "k" in e:
            line.append(f"  k={e['k']}")
        if e.get("context"):
            context = " ".join(f"{k}={v}" for k, v in e["context"].items())
            line.append(f"  {_short(context, 60)}", style="dim")

    def _prediction(self, line: Text, e: dict[str, Any]) -> None:
        self._kind(line, "prediction", "blue")
        self._version(line, e["model_version"])
        line.append(f"{e['request_id']}  user {e['user_id']}  → ")
        line.append(_items(e["recommended"]) or "(nothing)", style="bold")
        line.append(f"  of {len(e['scores'])}  {e['instance']}", style="dim")
        if "latency_ms" in e:
            line.append(f"  {e['latency_ms']:.1f} ms", style="dim")

    def _outcome(self, line: Text, e: dict[str, Any]) -> None:
        self._kind(line, "outcome", "magenta")
        line.append(f"{e['request_id']}  ")
        if e["purchased"]:
            line.append("bought ")
            line.append(_items(e["purchased"]), style="bold")
        else:
            line.append("bought nothing", style="dim")

    def _metrics(self, line: Text, e: dict[str, Any]) -> None:
        self._kind(line, "metrics", "bright_cyan")
        self._version(line, e["model_version"])
        window = e["window"]
        size = f"{window['size']}s" if window["kind"] == "time" else str(window["size"])
        line.append(f"{window['kind']:<5} {size:>6}  n {e['n']:>6}  ", style="dim")
        for name, label in (("accuracy", "acc"), ("precision", "prec"), ("recall", "rec"), ("f1", "f1")):
            line.append(f"{label} ", style="dim")
            line.append(_num(e[name]), style="bold" if name == "f1" else "")
            line.append("  ")
        if e.get("expired"):
            line.append(f"expired {e['expired']}", style="dim")

    def _alert(self, line: Text, e: dict[str, Any]) -> None:
        severity = str(e.get("severity") or "warning")
        if e["state"] == "firing":
            style = {"critical": "bold white on red", "warning": "bold black on yellow"}.get(
                severity, "bold white on magenta"
            )
            self._kind(line, "FIRING", style)
            compare = "<"
        else:
            self._kind(line, "resolved", "bold green")
            compare = "≥"
        self._version(line, e["model_version"])
        severity_style = {"critical": "bold red", "warning": "yellow"}.get(severity, "magenta")
        line.append(f"{severity} ", style=severity_style if e["state"] == "firing" else "green")
        line.append(f"{e['rule']}: {e['metric']} {_num(e['value'])} {compare} {_num(e['threshold'])}")
        if e.get("action") and e["state"] == "firing":
            line.append(f"  → {e['action']}", style="bold")
        if e.get("message"):
            line.append(f"  {_short(e['message'], 80)}", style="dim")
        line.append(f"  [{e['alert_id']}]", style="dim")

    def _model_command(self, line: Text, e: dict[str, Any]) -> None:
        if len(self._command_ts) >= REMEMBERED_COMMANDS:
            self._command_ts.popitem(last=False)
        self._command_ts[e["command_id"]] = e["ts"]
        style = COMMAND_STYLES.get(e["action"], "bold dark_orange")
        self._kind(line, f"▶ {e['action']}", style)
        self._version(line, e["model_version"])
        line.append(e["command_id"].ljust(ID_WIDTH), style=style.removeprefix("bold "))
        line.append("  ")
        # An experiment's command says what it does to the traffic, and which experiment it ends.
        if e.get("traffic") is not None:
            line.append(f"{e['traffic']:.0%} of users  ", style="bold")
        if e.get("experiment_id"):
            line.append(f"experiment {e['experiment_id']}  ", style="dim")
        if e.get("issued_by"):
            line.append(f"by {e['issued_by']}: ", style="dim")
        line.append(_short(e["reason"], 80))
        if e.get("alert_id"):
            line.append(f"  alert {e['alert_id']}", style="dim")
        if e.get("signature"):
            line.append("  signed", style="dim green")

    def _model_event(self, line: Text, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "heartbeat":
            self._kind(line, "· heartbeat", "dim")
            self._version(line, e["model_version"])
            line.append(e["instance"], style="dim")
            return
        ok = kind == "activated"
        self._kind(line, f"{'✓' if ok else '✗'} {kind}", "green" if ok else "bold red")
        self._version(line, e["model_version"])
        line.append((e.get("command_id") or "-").ljust(ID_WIDTH), style="dim")
        line.append("  ")
        line.append(e["instance"], style="bold")
        issued = self._command_ts.get(e.get("command_id") or "")
        if issued is not None:
            line.append(f"  +{e['ts'] - issued} ms", style="dim")
        if e.get("error"):
            line.append(f"  {_short(e['error'], 100)}", style="red")

    def _experiment(self, line: Text, e: dict[str, Any]) -> None:
        decision = e["decision"]
        style = {"promote": "bold green", "abort": "bold red", "inconclusive": "bold yellow"}.get(
            decision, ""
        )
        self._kind(line, f"{e['mode']} {decision}", style or "green")
        self._version(line, e["candidate"])
        labelled = e["labelled"]
        share = f"{e['traffic']:.0%} of users  " if e["mode"] == "canary" else ""
        line.append(
            f"vs {e['incumbent']}  {share}n {labelled['candidate']}/{labelled['incumbent']}  ", style="dim"
        )
        line.append(f"{e['metric']} Δ {_num(e['estimate'], 4)}")
        if e["interval"]:
            low, high = e["interval"]
            line.append(f" [{low:.4f}, {high:.4f}]", style="bold" if decision != "running" else "")
        if e.get("margin_interval"):
            # What decides: candidate - (1 - margin) x incumbent, abort below 0, promote above.
            low, high = e["margin_interval"]
            line.append(f"  margin {e.get('margin', 0):g}: [{low:.4f}, {high:.4f}]", style="dim")
        line.append(f"  [{e['experiment_id']}]", style="dim")

    def _dead_letter(self, line: Text, e: dict[str, Any]) -> None:
        self._kind(line, "☠ dead", "bold red")
        line.append(f"{e['source_topic']} p{e['partition']}@{e['offset']}: ", style="red")
        line.append(e["error"], style="bold red")
        line.append("  payload ", style="dim red")
        line.append(_short(e["payload"]), style="red")
