"""``modelwatch bench``: measure throughput, latency, the monitor and the control loop beside their
references, print the table, write the JSON and the plot."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.bench import FULL, QUICK, run_bench
from services.bench.experiments import report_lines
from services.bench.plot import draw
from services.bench.table import bench_table
from services.cli.common import console, current_settings, err

app = typer.Typer()


@app.command()
def bench(
    quick: bool = typer.Option(
        True,
        "--quick/--full",
        help="--quick (default, about four minutes, plus about two for the simulated experiments): 50,000 "
        "recorded requests (5,000 for the naive "
        "service), latency at 1,000/s, one replica at a steady 300/s for 30 s (then with a canary and with "
        "a shadow running), 20,000 labelled requests through the monitor, 100 simulated experiments per "
        "row of the guarantee table. --full (about fifteen minutes): 200,000 requests, latency at 1,000 and "
        "5,000/s, throughput and p99 per batch size, one replica at a steady 300 and 1,000/s for two "
        "minutes each, 100,000 labelled requests, a longer live run.",
    ),
    json_path: Path | None = typer.Option(
        None, "--json", metavar="PATH", help="Write every figure as JSON here (targets and details included)."
    ),
    plot: Path = typer.Option(
        Path("modelwatch-bench.png"), "--plot", metavar="PATH", help="Where the PNG with the figures goes."
    ),
) -> None:
    """Benchmark modelwatch on the real broker, each figure beside its reference in one run: one replica of
    `modelwatch serve` against a pass-through ceiling and a naive one-request-at-a-time service on the
    same recorded requests (predictions/s, CPU-s per 1,000); end-to-end latency at fixed offered rates;
    --exactly-once against at-least-once; one replica's share of a core and memory slope at a steady
    rate, and again with a canary and with a shadow running (their serving cost); the Faust monitor
    against a plain consumer computing the same metrics, and its lag behind the simulator; the control
    loop from a bad deploy to the rollback's acknowledgements; codec and scoring costs per event; and a
    small run of the experiments' guarantee simulation (the full one: modelwatch bench-experiments).

    Starts the local broker unless MODELWATCH_BOOTSTRAP names a cluster. Uses a fresh topic prefix
    (bench-<id>.) and a temporary registry, and deletes both at the end. The targets (service >= 20x
    naive and >= 0.5x pass-through, p99 <= 50 ms at 1,000/s, exactly-once >= 0.7x, monitor >= 10,000/s
    and >= 0.3x plain, acknowledgements within 1 s; by CPU per item: at most 10 µs a prediction, >= 20x
    naive, >= 0.25x pass-through; one replica at most 5% of a core at 300/s) are shown, met or missed.
    """
    plan = QUICK if quick else FULL
    settings = current_settings()
    steps = plan.steps()
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with bar:
        task = bar.add_task("starting", total=len(steps))
        done: list[str] = []

        def step(name: str) -> None:
            if done:
                bar.advance(task)
            done.append(name)
            bar.update(task, description=name)

        result = run_bench(settings, plan, step=step, say=lambda text: bar.console.print(text))
    summary = result.as_json()
    # A pipe or a file would get rich's default 80 columns, which folds every row of the table.
    out = console if console.is_terminal else Console(width=150, highlight=False)
    out.print(bench_table(summary))
    missed = [t["label"] for t in summary["targets"] if t["met"] is False]
    if missed:
        console.print(f"targets missed: {'; '.join(missed)}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        console.print(f"json: {json_path}")
    if result.experiments is not None:
        out.print("experiments, simulated (the full table: modelwatch bench-experiments)")
        for line in report_lines(result.experiments):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"plot: {draw(summary, plot)}")
