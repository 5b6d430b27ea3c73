"""``modelwatch deploy`` (also ``--shadow`` and ``--canary F``), ``rollback``, ``promote`` and ``abort``:
publish a verified version's command, then wait for every live replica's answer (``--no-wait`` to publish
and return)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import typer

from services.cli.common import ModelOption, console, current_settings, err
from services.config import Settings
from services.deployment.orders import (
    ACK_TIMEOUT_S,
    Acknowledgements,
    AckWait,
    Answer,
    abort,
    deploy,
    promote,
    rollback,
    start_experiment,
)

app = typer.Typer()

ReasonOption = typer.Option("", "--reason", metavar="TEXT", help="Why: recorded in the audit log.")
NoWaitOption = typer.Option(
    False, "--no-wait", help="Publish the command and return, without waiting for the replicas."
)
TimeoutOption = typer.Option(
    ACK_TIMEOUT_S,
    "--timeout",
    metavar="SECONDS",
    min=0.0,
    help="How long every live replica has to answer (and, at least 30 s, how long reading the deployment "
    "state before publishing may take).",
)


#: How each action reads in what the CLI prints.
DOING = {
    "deploy": "deploy",
    "rollback": "rollback to",
    "shadow": "shadow of",
    "canary": "canary of",
    "promote": "promote of",
    "abort": "abort of",
}


def _print_answer(answer: Answer) -> None:
    console.print(f"  {answer.describe()}", markup=False)


def publish_and_wait(
    settings: Settings, publish: Callable[[], dict[str, Any]], wait: bool, timeout: float
) -> Acknowledgements | None:
    """Publish with ``publish()`` and, if ``wait``, wait for the live replicas' answers, printing each;
    exit 1 naming the replicas that rejected the command or did not answer."""
    # A loaded host can take a while to read the command log and the replicas' events: the same budget.
    with AckWait(settings, ready_timeout_s=max(30.0, timeout)) if wait else nullcontext() as acks:
        command = publish()
        what = DOING[command["action"]]
        extra = f" at {command['traffic']:g}" if "traffic" in command else ""
        console.print(
            f"{what} {command['model_version']}{extra} published ({command['command_id']})", markup=False
        )
        if acks is None:
            return None
        result = acks.wait(command, timeout, on_answer=_print_answer)
    if not result.expected:
        console.print(
            "no live replica to acknowledge it: replicas load the commanded version when they start",
            markup=False,
        )
    elif result.ok:
        console.print(f"acknowledged by every live replica ({len(result.expected)})", markup=False)
    else:
        reasons = "; ".join(a.describe() for a in result.failures)
        err.print(
            f"modelwatch: error: {what} {command['model_version']} was not activated by every live "
            f"replica: {reasons}",
            markup=False,
        )
        raise typer.Exit(1)
    return result


@app.command(name="deploy")
def deploy_command(
    version: str = typer.Argument(..., help="A registry version (see `modelwatch models list`)."),
    shadow: bool = typer.Option(
        False, "--shadow", help="Keep the active version serving and also score every request with VERSION."
    ),
    canary: float | None = typer.Option(
        None, "--canary", metavar="F", help="Send the share F (0 < F < 1) of users to VERSION."
    ),
    reason: str = ReasonOption,
    no_wait: bool = NoWaitOption,
    timeout: float = TimeoutOption,
    model: str | None = ModelOption,
) -> None:
    """Order every prediction service to activate VERSION, and wait for every live replica's answer.

    With --shadow or --canary F, VERSION runs as an experiment beside the active version instead, until
    `modelwatch promote` or `modelwatch abort`. Refuses a version that is not in the registry or does
    not verify. Exits 1 if a live replica rejects the command or does not answer in time; with no live
    replica, succeeds (replicas load the commanded version when they start)."""
    settings = current_settings(model)
    if shadow and canary is not None:
        err.print("modelwatch: error: --shadow and --canary exclude each other", markup=False)
        raise typer.Exit(2)
    if canary is not None and not 0.0 < canary < 1.0:
        err.print(f"modelwatch: error: --canary must be in (0, 1), not {canary:g}", markup=False)
        raise typer.Exit(2)
    if shadow or canary is not None:
        order = lambda: start_experiment(settings, version, canary, reason)  # noqa: E731
    else:
        order = lambda: deploy(settings, version, reason)  # noqa: E731
    publish_and_wait(settings, order, not no_wait, timeout)


CandidateArgument = typer.Argument(
    None, metavar="[V]", help="The running experiment's candidate [default: whichever it is]."
)


@app.command(name="promote")
def promote_command(
    version: str | None = CandidateArgument,
    reason: str = ReasonOption,
    no_wait: bool = NoWaitOption,
    timeout: float = TimeoutOption,
    model: str | None = ModelOption,
) -> None:
    """Make the running shadow or canary's candidate the active version for everyone, and wait for every
    live replica's answer as `deploy` does."""
    settings = current_settings(model)
    publish_and_wait(settings, lambda: promote(settings, version, reason), not no_wait, timeout)


@app.command(name="abort")
def abort_command(
    version: str | None = CandidateArgument,
    reason: str = ReasonOption,
    no_wait: bool = NoWaitOption,
    timeout: float = TimeoutOption,
    model: str | None = ModelOption,
) -> None:
    """End the running shadow or canary: everyone back on the active version; waits for every live
    replica's answer as `deploy` does."""
    settings = current_settings(model)
    publish_and_wait(settings, lambda: abort(settings, version, reason), not no_wait, timeout)


@app.command(name="rollback")
def rollback_command(
    to: str | None = typer.Option(
        None,
        "--to",
        metavar="V",
        help="Version to return to [default: the most recent healthy one before the current: not one "
        "rolled back for an alert, nor one no replica could load].",
    ),
    reason: str = ReasonOption,
    no_wait: bool = NoWaitOption,
    timeout: float = TimeoutOption,
    model: str | None = ModelOption,
) -> None:
    """Order every prediction service back to an earlier version (it must still verify), and wait for
    every live replica's answer as `deploy` does."""
    settings = current_settings(model)
    publish_and_wait(settings, lambda: rollback(settings, to, reason), not no_wait, timeout)
