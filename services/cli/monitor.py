"""``modelwatch monitor``: run the Faust monitor worker."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from schemas.errors import ConfigError
from services.cli.common import current_settings

app = typer.Typer()


@app.command()
def monitor(
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A TOML file with the settings and [[alerts]] rules (as modelwatch.toml; MODELWATCH_* "
        "variables still override it).",
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="debug, info, warning or error."),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=1,
        max=65535,
        metavar="PORT",
        help="Serve Prometheus metrics, /healthz and /readyz on this port [default: monitor.metrics_port, "
        "none].",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        metavar="NAME",
        help="The model to watch: its predictions, model failures, commands and rollbacks only; its own "
        "Faust app <prefix>monitor-NAME (the default model's is <prefix>monitor) [default: model_name].",
    ),
    trace_memory: Path | None = typer.Option(
        None,
        "--trace-memory",
        metavar="DIR",
        help="Diagnostics: trace the worker's allocations (tracemalloc) and write a snapshot into DIR every "
        "--trace-every seconds, to find what holds memory over a long run (modelwatch bench --soak "
        "--trace-memory reads them). Tracing slows every allocation: do not measure CPU with it.",
    ),
    trace_every_s: float = typer.Option(
        60.0,
        "--trace-every",
        min=1.0,
        metavar="SECONDS",
        help="--trace-memory, --memory-accounts: seconds between snapshots.",
    ),
    memory_accounts: Path | None = typer.Option(
        None,
        "--memory-accounts",
        metavar="FILE",
        help="Diagnostics: append a JSON line of cheap memory accounts (resident, Python's live blocks, "
        "glibc's heap and its free part) to FILE every --trace-every seconds; costs nothing measurable "
        "(modelwatch bench --soak reads it).",
    ),
) -> None:
    """Run the monitor: a faust-streaming worker that joins predictions with outcomes, keeps rolling
    accuracy, precision, recall and F1 per model version, raises alerts and rolls bad versions back.

    It joins rec.predictions with rec.outcomes by request_id within the label window ([monitor]
    label_window_s), re-keys labelled requests by model_version, and writes a metrics event per version
    and window kind (the last count_window requests, the last time_window_s seconds) to rec.metrics every
    emit_every_n requests or emit_every_s seconds. [[alerts]] rules (name, metric, window, below or
    below_baseline, resolve_above, min_samples, for, severity, action) write firing and resolved events to
    rec.alerts; a firing rule with action = "rollback" on the active version orders one rollback to the
    previous healthy version on rec.model-commands.

    Its state (pending joins, windows, alert states) lives in compacted changelog topics named
    <prefix>monitor-*, so a killed worker resumes where it was. The same app runs with
    `faust -A streams.app worker -l info`. Stop it with Ctrl-C. With --metrics-port it serves Prometheus
    metrics per model version and window (modelwatch_monitor_*), /healthz (alive) and /readyz (tables
    recovered).
    """
    if trace_memory is not None and trace_memory.exists() and not trace_memory.is_dir():
        raise ConfigError(f"--trace-memory names {trace_memory}, which is not a directory")
    if memory_accounts is not None and memory_accounts.is_dir():
        raise ConfigError(f"--memory-accounts names {memory_accounts}, which is a directory")
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"--config names {config}, which is not a file")
        os.environ["MODELWATCH_CONFIG"] = str(config)  # read by the settings, here and in Faust's worker
    overrides: dict[str, object] = {}
    changes = {
        k: v for k, v in {"log_level": log_level, "metrics_port": metrics_port}.items() if v is not None
    }
    if changes:
        overrides["monitor"] = {**current_settings().monitor.model_dump(), **changes}
    settings = current_settings(model, **overrides)
    if trace_memory is not None:
        from services.bench.memory_trace import start_tracing

        start_tracing(trace_memory, trace_every_s)  # before Faust and the app allocate anything
    if memory_accounts is not None:
        from services.bench.memory_accounts import start_accounting

        start_accounting(memory_accounts, trace_every_s)

    from streams.app import run  # Faust is slow to import: only when the monitor really starts

    run(settings)
