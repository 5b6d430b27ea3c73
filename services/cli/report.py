"""``modelwatch report``: draw what happened, as a PNG and a self-contained HTML page."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from services.cli.common import ModelOption, console, current_settings, err
from services.ops.report import write_report

app = typer.Typer()


class WindowChoice(StrEnum):
    COUNT = "count"
    TIME = "time"


@app.command(name="report")
def report_command(
    out: Path = typer.Option(
        Path("."), "--out", metavar="DIR", help="Directory for modelwatch-report.png and .html (created)."
    ),
    window: WindowChoice = typer.Option(
        WindowChoice.COUNT, "--window", help="Which rolling window's metrics to draw."
    ),
    timeout: float = typer.Option(
        30.0, "--timeout", min=1, metavar="S", help="Give up reading a topic after S seconds."
    ),
    bootstrap: str | None = typer.Option(None, "--bootstrap", help="Kafka cluster [default: settings]."),
    prefix: str | None = typer.Option(None, "--prefix", help="Topic prefix [default: settings, rec.]."),
    model: str | None = ModelOption,
) -> None:
    """Draw the rolling accuracy, precision, recall and F1 per model version over time.

    Reads rec.metrics, rec.alerts, rec.model-commands and rec.model-events whole, and writes a PNG and an
    HTML page (the PNG embedded, plus a table of deploys, rollbacks, alerts and acks) with markers for
    deploys, rollbacks, alerts firing and resolved, and the replicas' activations. Prints both paths.
    """
    settings = current_settings(model, bootstrap=bootstrap, topic_prefix=prefix)
    with err.status(f"reading {settings.topic_prefix}metrics, alerts, model-commands, model-events"):
        files = write_report(settings, out, window=window.value, timeout=timeout)
    console.print(f"png:  {files.png}")
    console.print(f"html: {files.html}")
