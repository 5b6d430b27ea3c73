"""``modelwatch demo``: the main job, end to end, with a live view and a timeline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from schemas.errors import ModelwatchError
from services.cli.common import console, current_settings
from services.sandbox.demo import DemoPlan, run_demo
from services.sandbox.demo_stages import decided_line
from services.sandbox.demo_watcher import Watcher

app = typer.Typer()


class DemoFailed(ModelwatchError):
    pass


def _view(holder: dict[str, Watcher]) -> Table:
    table = Table(title="live", title_justify="left", expand=False, show_edge=False)
    for col in ("version", "predictions", "F1 (count)", "precision", "recall", "alerts firing"):
        table.add_column(col)
    watcher = holder.get("w")
    if watcher is None:
        return table
    metrics = watcher.of("metrics")
    for version, served in sorted(watcher.predictions.items()):
        rows = [m for m in metrics if m["model_version"] == version and m["window"]["kind"] == "count"]
        last = rows[-1] if rows else {}
        firing = {a["rule"] for a in watcher.of("alerts", model_version=version, state="firing")}
        table.add_row(
            version,
            f"{served:,}",
            *(f"{last[k]:.3f}" if last.get(k) is not None else "-" for k in ("f1", "precision", "recall")),
            ", ".join(sorted(firing)) or "-",
        )
    table.caption = f"dead letters: {watcher.dead_letters}"
    return table


@app.command()
def demo(
    warmup: float = typer.Option(35.0, "--warmup", min=5, help="Seconds the good version serves first."),
    rate: float = typer.Option(150.0, "--rate", min=1, help="Storefront requests per second."),
    out: Path = typer.Option(Path("modelwatch-demo"), "--out", help="Where logs and the report go."),
    keep_running: bool = typer.Option(
        False, "--keep-running", help="Leave everything running after the story (Ctrl-C stops)."
    ),
) -> None:
    """Run the whole system end to end (about two minutes): start the broker (unless
    MODELWATCH_BOOTSTRAP names a cluster), create the topics, train a good and a degraded version, deploy
    the good one, start two replicas and the monitor, play the storefront; then deploy the degraded
    version and watch the alert, the automatic rollback and the recovery; then shadow a retrain, which the
    monitor moves on to a canary and promotes, and canary the degraded version, which it aborts. Prints
    the timeline and writes a report (PNG and HTML) to --out."""
    settings = current_settings()
    plan = DemoPlan(rate=rate, warmup_s=warmup, out_dir=out, keep_running=keep_running)
    holder: dict[str, Watcher] = {}
    with Live(get_renderable=lambda: _view(holder), console=console, refresh_per_second=2, transient=True):
        try:
            result = run_demo(settings, plan, say=console.print, on_watch=lambda w: holder.update(w=w))
        except TimeoutError as exc:
            raise DemoFailed(f"the demo's story stopped: {exc} (logs in {out.resolve()})") from exc
    console.print()
    console.print("[bold]timeline[/bold]")
    for at, what in result.timeline.rows:
        console.print(f"  {at:7.1f} s  {what}")
    served = ", ".join(f"{v}: {n:,}" for v, n in sorted(result.predictions.items()))
    console.print(
        f"requests sent {result.requests:,}; predictions served {served}; dead letters {result.dead_letters}"
    )
    if result.staged is not None:
        console.print("[bold]the monitor's experiment decisions[/bold] (per arm, at each decision)")
        for event in result.staged.decisions:
            console.print(f"  {event['experiment_id']} ({event['mode']}): {decided_line(event)}")
        made = ", ".join(f"{v}: {n:,}" for v, n in sorted(result.staged.canary_made.items()))
        console.print(
            f"  the degraded canary made {result.staged.canary_share:.1%} of the predictions until its abort "
            f"({made}); its share of users: {plan.canary_share:.0%}"
        )
    console.print(f"report: {result.report_png}\n        {result.report_html}")
