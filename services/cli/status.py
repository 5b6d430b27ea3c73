"""``modelwatch status``: the fleet at a glance (:mod:`services.ops.status`), as tables or one JSON
document; ``--watch`` redraws it until Ctrl-C."""

from __future__ import annotations

import time
from typing import Any

import orjson
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.cli.common import ModelOption, console, current_settings
from services.deployment.orders import iso
from services.ops.status import fleet_status

app = typer.Typer()

STATUS_STYLE = {"serving": "green", "idle": "yellow", "gone": "red"}


def render(doc: dict[str, Any]) -> Group:
    """The status document as rich tables."""
    model = doc["model"]
    head = Text()
    if model.get("name"):
        head.append(f"model {model['name']}   ")
    head.append(f"commanded {model['commanded'] or '-'}")
    head.append(f"   served {model['served'] or '-'}")
    if model["unloadable"]:
        head.append("   (no replica could load the commanded version)", style="red")

    replicas = Table(title="replicas", title_justify="left")
    for column in ("instance", "status", "version", "partitions", "last heartbeat"):
        replicas.add_column(column)
    for r in doc["replicas"]:
        replicas.add_row(
            r["instance"],
            Text(r["status"], style=STATUS_STYLE.get(r["status"], "")),
            r["version"] or "-",
            ",".join(map(str, r["partitions"])) or "-",
            f"{r['last_heartbeat_age_s']:.1f} s ago",
        )

    groups = [part for key in ("monitor_sources", "monitor") if key in doc for part in _group(doc[key])]
    alerts = Table(title="alerts firing", title_justify="left")
    for column in ("since", "rule", "version", "value", "threshold", "severity"):
        alerts.add_column(column)
    for a in doc["alerts_firing"]:
        alerts.add_row(
            iso(a["ts"]),
            a["rule"],
            a["model_version"],
            f"{a['value']:.3f}",
            f"{a['threshold']:.3f}",
            Text(a["severity"], style="red" if a["severity"] == "critical" else "yellow"),
        )

    commands = Table(title="last commands", title_justify="left")
    for column in ("at", "action", "version", "by", "answers"):
        commands.add_column(column)
    for c in doc["last_commands"]:
        answers = ", ".join(
            f"{i} {a['event']}" + (f" ({a['error']})" if a["error"] else "") for i, a in c["acks"].items()
        )
        commands.add_row(iso(c["ts"]), c["action"], c["version"], c["issued_by"] or "-", answers or "-")
    return Group(head, replicas, *groups, alerts, commands)


def _group(monitor: dict[str, Any]) -> tuple[Table, Text]:
    """One of the monitor's consumer groups, its members and its lag."""
    group = Table(title=f"monitor group {monitor['group']} ({monitor['state']})", title_justify="left")
    group.add_column("member")
    group.add_column("host")
    group.add_column("partitions")
    for m in monitor["members"]:
        group.add_row(m["client_id"], m["host"], " ".join(m["partitions"]) or "-")
    lag = Text(f"lag {monitor['total_lag']:,} messages")
    if monitor.get("error"):
        lag = Text(f"monitor group: {monitor['error']}", style="yellow")
    return group, lag


@app.command(name="status")
def status_command(
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of tables."),
    watch: bool = typer.Option(False, "--watch", help="Redraw every --every seconds until Ctrl-C."),
    every: float = typer.Option(2.0, "--every", metavar="SECONDS", min=0.5, help="--watch's period."),
    model: str | None = ModelOption,
) -> None:
    """The fleet at a glance: the commanded and served version, every replica (gone when silent for three
    heartbeats), the monitor's consumer groups and their lag (the source reader's on predictions and outcomes,
    the Faust workers' on the monitor's own topics), the alerts firing now, the last commands: of
    one model (--model)."""
    settings = current_settings(model)
    if as_json:
        console.print(orjson.dumps(fleet_status(settings)).decode(), markup=False, soft_wrap=True)
        return
    if not watch or not console.is_terminal:
        # Piped, --watch prints each refresh in turn (a live redraw shows only on a terminal).
        while True:
            console.print(render(fleet_status(settings)))
            if not watch:
                return
            time.sleep(every)  # the refresh period the operator asked for
    with Live(render(fleet_status(settings)), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(every)  # the refresh period the operator asked for
            live.update(render(fleet_status(settings)), refresh=True)
