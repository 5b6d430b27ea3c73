"""``modelwatch bench``: measure throughput, latency, the monitor and the control loop beside their
references, print the table, write the JSON and the plot."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.bench import DEFAULT, FULL, QUICK, run_bench
from services.bench.experiments import report_lines
from services.bench.plot import draw
from services.bench.soak import SoakPlan, accounts_table, growth_table, run_soak, soak_table
from services.bench.table import bench_table
from services.cli.common import console, current_settings, err

app = typer.Typer()


@app.command()
def bench(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="About six minutes on a calm machine (more on a loaded one): the default run with 30 s at "
        "each steady rate (and 30 s each for the canary's and the shadow's cost) instead of two minutes.",
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="About an hour: 200,000 requests, latency at 1,000 and 5,000/s, throughput and p99 per batch "
        "size, two minutes at each steady rate and for each experiment's cost, a longer live run, and the "
        "volume curve: the monitor (and the plain loop) at 20,000, 100,000 and 1,000,000 labelled "
        "requests, the service (and the pass-through) at 20,000, 100,000 and 1,000,000 requests.",
    ),
    soak: bool = typer.Option(
        False,
        "--soak",
        help="Only the soak: one replica and the monitor at --rate for --minutes after --warmup-minutes; "
        "the monitor's resident memory must stay within 10 percent of its first reading. Run by hand.",
    ),
    minutes: float = typer.Option(30.0, "--minutes", min=0.1, help="--soak: minutes measured."),
    rate: float = typer.Option(300.0, "--rate", min=1.0, help="--soak: requests per second offered."),
    warmup_minutes: float = typer.Option(5.0, "--warmup-minutes", min=0.0, help="--soak: minutes before."),
    trace_memory: bool = typer.Option(
        False,
        "--trace-memory",
        help="--soak: the monitor traces its allocations (tracemalloc, a snapshot a minute) and the soak "
        "prints the sites that grew most over the measured minutes, in bytes per request. Slows the "
        "monitor several times over (at 300/s it may lag, and a lagging consumer's buffers then show as "
        "growth): its CPU figures are not comparable, and its resident memory includes the traces.",
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
    --exactly-once against at-least-once; one replica and the Faust monitor under the simulator at a
    steady 300 and 1,000 requests/s (two minutes each; 30 s with --quick): each one's share of a core
    and memory slope, and the monitor's lag; the replica again with a canary and with a shadow running
    (their serving cost); the Faust monitor on a backlog against a plain consumer computing the same
    metrics, and its lag behind the simulator; the control loop from a bad deploy to the rollback's
    acknowledgements; codec and scoring costs per event; and a small run of the experiments' guarantee
    simulation (the full one: modelwatch bench-experiments).

    Starts the local broker unless MODELWATCH_BOOTSTRAP names a cluster. Uses a fresh topic prefix
    (bench-<id>.) and a temporary registry, and deletes both at the end. Every target of the issues is
    printed at the end beside its figure: met, missed by how much, or "-" where this mode does not
    measure it (the volume curve: --full; the monitor's memory over half an hour: --soak).
    """
    if quick + full + soak > 1:
        raise typer.BadParameter("choose one of --quick, --full and --soak")
    # SIGTERM (kill, a supervisor; a shell's background job ignores Ctrl-C) ends the run as Ctrl-C does:
    # its replicas, monitor and broker are stopped, not left running in their own sessions.
    signal.signal(signal.SIGTERM, _interrupt)
    if trace_memory and not soak:
        raise typer.BadParameter("--trace-memory traces the soak's monitor: add --soak")
    if soak:
        soaked = SoakPlan(
            minutes=minutes, rate=rate, warmup_minutes=warmup_minutes, trace_memory=trace_memory
        )
        _soak(soaked, json_path)
        return
    plan = QUICK if quick else FULL if full else DEFAULT

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
    for name, why in summary.get("failed_steps", {}).items():
        console.print(f"step failed, its figures missing: {name}: {why}")
    missed = [f"{t['label']} ({t['by']})" for t in summary["targets"] if t["met"] is False]
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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _soak(plan: SoakPlan, json_path: Path | None) -> None:
    summary = run_soak(current_settings(), plan, say=lambda text: err.print(text, highlight=False))
    out = console if console.is_terminal else Console(width=150, highlight=False)
    out.print(soak_table(summary))
    for table in (accounts_table(summary), growth_table(summary)):
        if table is not None:
            out.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        console.print(f"json: {json_path}")
