"""``modelwatch broker``: run a real Kafka broker on this machine, without Docker."""

from __future__ import annotations

from pathlib import Path

import typer

from schemas.errors import BrokerError
from services.cli.common import console, current_settings, err
from services.config import BrokerSettings
from services.kafka import acls
from services.sandbox.broker import LocalCluster

app = typer.Typer(
    help="Run a local Apache Kafka broker (KRaft, jars from Maven Central) on 127.0.0.1.",
    no_args_is_help=True,
)

PortOption = typer.Option(None, "--port", help="Client port of the first node [default: 9092].")
DirOption = typer.Option(None, "--data-dir", help="Where the cluster keeps its data and logs.")


def _broker_settings(port: int | None, data_dir: Path | None) -> BrokerSettings:
    settings = current_settings().broker
    update: dict[str, object] = {}
    if port is not None:
        update["port"] = port
    if data_dir is not None:
        update["data_dir"] = data_dir
    return settings.model_copy(update=update)


def _refuse_if_remote() -> None:
    settings = current_settings()
    if settings.bootstrap:
        raise BrokerError(
            f"MODELWATCH_BOOTSTRAP names a cluster ({settings.bootstrap}); nothing to start or stop here"
        )


@app.command()
def start(
    port: int | None = PortOption,
    data_dir: Path | None = DirOption,
    nodes: int = typer.Option(
        1, "--nodes", help="1, or 3 for a replicated cluster (ports PORT, PORT+2, PORT+4)."
    ),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="SASL/SCRAM-SHA-256 with ACLs: creates the users admin, storefront, service, monitor and "
        "operator (passwords in DATA_DIR/scram-users.json); then run `modelwatch acls apply` as admin.",
    ),
) -> None:
    """Start the broker (idempotent); return once it answers metadata requests."""
    _refuse_if_remote()
    broker_settings = _broker_settings(port, data_dir)
    users = acls.ensure_users(broker_settings.data_dir) if secure else None
    cluster = LocalCluster(broker_settings, nodes=nodes, scram_users=users)
    already = all(n.running for n in cluster.nodes)
    bootstrap = cluster.start(say=lambda m: err.print(m))
    word = "already running" if already else "started"
    console.print(
        f"Kafka {cluster.settings.kafka_version} {word}: {bootstrap} ({nodes} node(s), data in {cluster.dir})"
    )
    if cluster.sasl:
        console.print(f"SASL/SCRAM-SHA-256 and ACLs are on; users: {acls.users_file(cluster.dir)}")


@app.command()
def status(port: int | None = PortOption, data_dir: Path | None = DirOption) -> None:
    """Say what runs where. Exit 1 when no node runs."""
    settings = current_settings()
    if settings.bootstrap:
        console.print(f"using the cluster named by MODELWATCH_BOOTSTRAP: {settings.bootstrap}")
        return
    cluster = LocalCluster.existing(_broker_settings(port, data_dir))
    rows = cluster.status()
    for r in rows:
        state = f"running (pid {r['pid']})" if r["running"] else "stopped"
        console.print(f"node {r['node']}: {state}, 127.0.0.1:{r['port']}, log {r['log']}")
    if not any(r["running"] for r in rows):
        raise typer.Exit(1)


@app.command()
def stop(port: int | None = PortOption, data_dir: Path | None = DirOption) -> None:
    """Stop the broker cleanly (controlled shutdown); data stays for the next start."""
    _refuse_if_remote()
    cluster = LocalCluster.existing(_broker_settings(port, data_dir))
    stopped = cluster.stop()
    console.print(f"stopped node(s) {', '.join(map(str, stopped))}" if stopped else "no broker was running")
