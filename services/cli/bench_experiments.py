"""``modelwatch bench-experiments``: the experiments' error guarantee, measured by simulation (no Kafka)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import typer

from services.bench.experiments import QUICK_EXPERIMENTS, ExperimentPlan, report_lines, run_experiments
from services.cli.common import console, current_settings, err

app = typer.Typer()


@app.command("bench-experiments")
def bench_experiments(
    experiments: int = typer.Option(1000, "--experiments", min=10, help="Experiments per row."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="The small version modelwatch bench runs (100 experiments per row, less "
        "training, batches of 1,000); --experiments is then ignored.",
    ),
    json_path: Path | None = typer.Option(None, "--json", metavar="PATH", help="Write every figure here."),
) -> None:
    """Measure the shadow and canary comparison's guarantee on the simulated world, without Kafka: train
    an incumbent, a retrain and a --degrade 0.5 version, score a pool of requests once, then run
    thousands of experiments through the monitor's comparison code. Prints, per candidate and mode, the
    share aborted (with its 95% Wilson interval), promoted and inconclusive, and the median labelled
    candidate requests until the decision. Uses the [experiments] settings (alpha, margin, ...)."""
    settings = current_settings().experiments
    plan = (
        replace(QUICK_EXPERIMENTS, settings=settings)
        if quick
        else ExperimentPlan(experiments=experiments, settings=settings)
    )
    report = run_experiments(plan, say=lambda text: err.print(text, style="dim"))
    for line in report_lines(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2))
        console.print(f"json: {json_path}")
