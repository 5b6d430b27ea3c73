"""``modelwatch models``: the registry's versions, registering one's own, verification, and the history."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
import typer

from schemas.errors import KafkaClientError
from services.cli.common import ModelOption, console, current_settings, err
from services.config import Settings
from services.deployment.follower import read_state
from services.deployment.orders import iso, timeline
from services.deployment.state import DeploymentState
from services.model.registration import register_model
from services.registry import Manifest, Registry

app = typer.Typer(help="The model registry's versions and the deployment history.", no_args_is_help=True)

JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout, for scripts.")


def _echo_json(doc: Any) -> None:
    typer.echo(orjson.dumps(doc).decode())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _active_version(settings: Settings, timeout: float) -> tuple[str | None, str | None]:
    """(active version, why it is unknown): the registry works without a broker, so listing does too."""
    try:
        return read_state(settings, timeout=timeout).commanded, None
    except KafkaClientError as exc:
        return None, str(exc)


def list_versions(registry: Registry, active: str | None) -> list[dict[str, Any]]:
    """One row per verified version, oldest first, then the versions that failed verification."""
    good, bad = registry.scan()
    rows: list[dict[str, Any]] = [
        {
            "version": m.version,
            "created": m.created,
            "f1": m.metrics.get("f1"),
            "precision": m.metrics.get("precision"),
            "sha256": m.sha256,
            "parent": m.parent,
            "signed": m.signature is not None,
            "active": m.version == active,
            "verified": True,
        }
        for m in good
    ]
    rows += [{"version": v, "verified": False, "error": reason, "active": v == active} for v, reason in bad]
    return rows


@app.command(name="list")
def list_command(
    as_json: bool = JsonOption,
    timeout: float = typer.Option(
        5.0, "--timeout", min=0.1, help="Seconds to wait for the command topic (which version is active)."
    ),
    model: str | None = ModelOption,
) -> None:
    """Every version of the model: created, held-out F1 (the monitor's baseline), digest, and which one is
    active."""
    settings = current_settings(model)
    registry = Registry.from_settings(settings)
    active, unknown = _active_version(settings, timeout)
    rows = list_versions(registry, active)
    if as_json:
        _echo_json(rows)
        return
    if unknown:
        err.print(f"modelwatch: active version unknown: {unknown}", markup=False)
    if not rows:
        console.print(f"no versions of model {registry.model} in {registry.url} (run `modelwatch train`)")
        return
    width = max(len(r["version"]) for r in rows)
    console.print(
        f"  {'version':<{width}}  {'created (UTC)':<19}  {'f1':>5}  {'prec':>5}  {'sha256':<12}  parent"
    )
    for r in rows:
        if not r["verified"]:
            console.print(f"! {r['version']:<{width}}  does not verify: {r['error']}", markup=False)
            continue
        console.print(
            f"{'*' if r['active'] else ' '} {r['version']:<{width}}  {r['created'][:19].replace('T', ' ')}  "
            f"{_fmt(r['f1']):>5}  {_fmt(r['precision']):>5}  {r['sha256'][:12]}  {r['parent'] or '-'}",
            markup=False,
        )
    if active:
        console.print(f"* active: {active}")


@app.command()
def show(
    version: str = typer.Argument(..., help="The version to describe."),
    as_json: bool = JsonOption,
    model: str | None = ModelOption,
) -> None:
    """One version's manifest: digest, data, held-out metrics next to popularity, libraries, parent."""
    manifest = Registry.from_settings(current_settings(model)).manifest(version)
    if as_json:
        _echo_json(manifest.as_dict())
        return
    _print_manifest(manifest)


def _count(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return f"{value:,}" if isinstance(value, int) else "?"


def _print_manifest(m: Manifest) -> None:
    console.print(f"version   {m.version}")
    console.print(f"created   {m.created}")
    console.print(f"parent    {m.parent or '-'}")
    console.print(f"sha256    {m.sha256} ({m.size:,} bytes)")
    console.print(f"signed    {'yes' if m.signature else 'no'}")
    data = m.data
    if "rows" in data:
        console.print(
            f"data      {data.get('source', '?')}: {_count(data, 'rows')} rows, {_count(data, 'sessions')} "
            f"sessions, {_count(data, 'users')} users, {_count(data, 'items')} items"
            + (f", labels degraded {data['degrade']:.0%}" if data.get("degrade") else "")
        )
    else:  # a registered model of one's own: no training data known
        console.print(f"data      {data.get('source', '?')} {data.get('path', '')}".rstrip(), markup=False)
    if "evaluated_on" in data:
        console.print(
            f"evaluated {data['evaluated_on']}: {_count(data.get('held_out', {}), 'sessions')} "
            "held-out sessions",
            markup=False,
        )
    console.print(f"model     {m.model.get('class', '?')} threshold {m.model.get('threshold')}")
    console.print(f"{'held-out':<10}{'model':>8}{'popularity':>12}")
    for name in ("accuracy", "precision", "recall", "f1"):
        console.print(f"{name:<10}{_fmt(m.metrics.get(name)):>8}{_fmt(m.baseline.get(name)):>12}")
    console.print("libraries " + ", ".join(f"{k} {v}" for k, v in sorted(m.libraries.items())))


@app.command()
def register(
    file: str = typer.Argument(..., metavar="FILE", help="The joblib file of your model (a path or URL)."),
    evaluate: str | None = typer.Option(
        None,
        "--evaluate",
        metavar="DATA",
        help="An interaction log (.npz or .csv, as train --data reads) to record held-out metrics from: "
        "its last 20% of sessions by time.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the new version's manifest as one JSON document."
    ),
    model: str | None = ModelOption,
) -> None:
    """Register a model of your own (any object implementing services/model/protocol.py) as a new version.

    The file is unpickled here (it is your artifact; its module must be importable: model_path), checked by
    scoring a few generated requests, optionally evaluated, and stored as an immutable, verified version."""
    manifest = register_model(current_settings(model), file, evaluate=evaluate)
    if as_json:
        _echo_json(manifest.as_dict())
        return
    console.print(manifest.version)


@app.command()
def verify(
    version: str = typer.Argument(..., help="The version to check."), model: str | None = ModelOption
) -> None:
    """Check a version's manifest signature (with a key) and artifact digest, unpickling nothing.

    Exits 1 with the reason when it does not verify."""
    registry = Registry.from_settings(current_settings(model))
    manifest = registry.verify(version)
    signed = [n for n, on in (("publisher key", registry.keyring), ("signature", registry.signing_key)) if on]
    how = f"{' and '.join(signed)} and sha256" if signed else "sha256 (no keyring or signing key set)"
    console.print(f"{manifest.version}: verified ({how} {manifest.sha256[:16]}…)")


def history_document(state: DeploymentState) -> dict[str, Any]:
    """The commanded history and what the replicas made of it: ``active`` is the commanded version,
    ``served`` the one the live replicas serve; each period lists every replica's answer to its command."""
    periods = []
    for position, period in enumerate(timeline(state.history)):
        answers = state.acks.get(period.command_id, {})
        periods.append(
            {
                **period.as_dict(),
                "position": position,
                "acks": {
                    i: {"event": a.event, "ts": a.ts, "error": a.error} for i, a in sorted(answers.items())
                },
            }
        )
    commanded = state.commanded
    return {
        "active": commanded,
        "commanded": commanded,
        "experiment": asdict(state.experiment) if state.experiment is not None else None,
        "served": state.served(),
        "serving": state.serving(),
        "rejected": state.rejected(commanded) if commanded else {},
        "unloadable": commanded is not None and state.unloadable(commanded),
        "periods": periods,
        "ignored": [
            {
                "command_id": (c or {}).get("command_id"),
                "model_version": (c or {}).get("model_version"),
                "why": why,
            }
            for c, why in state.history.ignored
        ],
    }


def _answers(acks: dict[str, dict[str, Any]]) -> str:
    activated = [i for i, a in acks.items() if a["event"] == "activated"]
    parts = [f"activated by {', '.join(activated)}"] if activated else []
    parts += [f"rejected by {i}: {a['error']}" for i, a in acks.items() if a["event"] == "rejected"]
    return "; ".join(parts) or "no replica answered (yet)"


@app.command()
def history(
    as_json: bool = JsonOption,
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for the command topic."),
    model: str | None = ModelOption,
) -> None:
    """Which version was commanded when, and why (the command topic: the deployment audit log), what each
    replica answered, and which version the live replicas really serve.

    Commands are in log order (``ts`` is the issuer's clock, shown for people). Unsigned, forged or
    replayed commands are listed apart, with the reason they count for nothing. Only the model's own
    commands and replicas' answers are shown (--model)."""
    settings = current_settings(model)
    doc = history_document(read_state(settings, timeout=timeout))
    if as_json:
        _echo_json(doc)
        return
    if not doc["periods"]:
        console.print(f"no commands on {settings.topic('model-commands')}: nothing was ever deployed")
    for p in doc["periods"]:
        until = iso(p["until"]) if p["until"] is not None else "now"
        why = p["reason"] + (f" (alert {p['alert_id']})" if p["alert_id"] else "")
        if p["experiment_id"]:
            share = f" traffic {p['traffic']:g}" if p["traffic"] is not None else ""
            why += f" [experiment {p['experiment_id']}{share}]"
        if p["until"] is not None and p["until"] < p["since"]:
            # The log's order holds; the times are the issuers' clocks, and these two disagree.
            why += " [stamped later than the next command: the issuers' clocks disagree]"
        console.print(
            f"{iso(p['since'])} .. {until:<20}  {p['action']:<8}  {p['version']}  "
            f"by {p['issued_by'] or '-'}: {why}",
            markup=False,
        )
        console.print(f"    {_answers(p['acks'])}", markup=False)
    if doc["periods"]:
        console.print(f"active: {doc['active']} (commanded)")
        if doc["experiment"] is not None:
            x = doc["experiment"]
            share = f" at {x['traffic']:g}" if x["traffic"] is not None else ""
            console.print(
                f"experiment: {x['experiment_id']}: {x['mode']} of {x['candidate']}{share}", markup=False
            )
        serving = (
            ", ".join(f"{i} {v or '(no model)'}" for i, v in doc["serving"].items()) or "no live replica"
        )
        console.print(f"served: {doc['served'] or '-'} ({serving})", markup=False)
    if doc["unloadable"]:
        console.print(f"{doc['active']}: no replica could load it; they serve what they served before")
    for instance, error in doc["rejected"].items():
        console.print(f"{doc['active']} rejected by {instance}: {error}", markup=False)
    for ignored in doc["ignored"]:
        console.print(f"ignored {ignored['command_id'] or '<malformed>'}: {ignored['why']}", markup=False)
