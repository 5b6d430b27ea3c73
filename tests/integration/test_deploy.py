"""Deploy, roll back and retrain on the real broker: commands on the audit log, history read back."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException

from schemas import codec
from services import kafka
from services.cli import main
from services.config import Settings, load_settings
from services.deployment import commands
from services.deployment.state import MONITOR
from services.registry import Registry
from services.sandbox.versions import train_on_world
from services.sandbox.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(8, n_users=200, n_items=80)


def _version(settings: Settings, world: World, degrade: float = 0.0) -> str:
    return train_on_world(settings, seed=8, world=world, sessions=1500, degrade=degrade).version


def _commands_on_the_topic(settings: Settings) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while True:
        try:
            records = kafka.read_topic(settings, settings.topic("model-commands"))
            break
        except KafkaException:  # a fresh topic's leader may not be known yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    # Every record must be a valid model-command event: decode validates against the schema.
    return [codec("model-command").decode(value) for _key, value, _ts in records]


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()  # only this command's output
    assert main(argv) == 0, capsys.readouterr().err
    return orjson.loads(capsys.readouterr().out)


def test_deploy_and_rollback_publish_commands_that_history_shows(
    settings: Settings, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _version(settings, world)
    bad = _version(settings, world, degrade=0.8)

    assert main(["deploy", good, "--reason", "weekly retrain"]) == 0
    assert main(["deploy", bad, "--reason", "drill"]) == 0
    assert main(["rollback", "--reason", "f1 dropped"]) == 0
    out = capsys.readouterr().out
    assert f"rollback to {good} published" in out

    published = _commands_on_the_topic(settings)
    assert [(c["action"], c["model_version"], c["reason"]) for c in published] == [
        ("deploy", good, "weekly retrain"),
        ("deploy", bad, "drill"),
        ("rollback", good, "f1 dropped"),
    ]
    assert all(str(c["issued_by"]).startswith("cli:") for c in published)
    assert commands.read_history(settings).active_version == good

    doc = _json(capsys, ["models", "history", "--json"])
    assert isinstance(doc, dict)
    assert doc["active"] == good
    periods = doc["periods"]
    assert [(p["action"], p["version"]) for p in periods] == [
        ("deploy", good),
        ("deploy", bad),
        ("rollback", good),
    ]
    assert periods[0]["until"] == periods[1]["since"] and periods[-1]["until"] is None
    assert main(["models", "history"]) == 0
    text = capsys.readouterr().out
    assert "f1 dropped" in text and f"active: {good}" in text

    rows = _json(capsys, ["models", "list", "--json"])
    assert isinstance(rows, list)
    assert [(r["version"], r["active"]) for r in rows] == [(good, True), (bad, False)]
    assert rows[0]["f1"] > rows[1]["f1"]
    assert main(["models", "list"]) == 0
    assert f"* {good}" in capsys.readouterr().out

    assert main(["rollback", "--to", bad, "--reason", "back again"]) == 0
    assert commands.read_history(settings).active_version == bad


def test_deploy_refuses_unknown_and_tampered_versions_and_publishes_nothing(
    settings: Settings, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy", "20990101T000000-00000000"]) == 1
    assert "no version 20990101T000000-00000000" in capsys.readouterr().err
    version = _version(settings, world)
    artifact = Path(settings.registry, version, "model.joblib")
    artifact.chmod(0o644)
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0x01
    artifact.write_bytes(bytes(data))
    assert main(["deploy", version]) == 1
    err = capsys.readouterr().err
    assert f"version {version}: artifact sha256" in err and "does not match" in err
    assert main(["rollback", "--to", version]) == 1
    assert _commands_on_the_topic(settings) == []


def test_rollback_needs_somewhere_to_go(
    settings: Settings, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollback"]) == 1
    assert "nothing is deployed yet" in capsys.readouterr().err
    only = _version(settings, world)
    assert main(["deploy", only]) == 0
    assert main(["rollback"]) == 1
    assert f"no version was active before {only}; name one with --to" in capsys.readouterr().err
    assert len(_commands_on_the_topic(settings)) == 1


def test_with_a_signing_key_commands_are_signed_and_unsigned_versions_refused(
    settings: Settings, world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unsigned = _version(settings, world)
    monkeypatch.setenv("MODELWATCH_SIGNING_KEY", "test-key")
    keyed = load_settings()
    assert keyed.signing_key is not None and keyed.topic_prefix == settings.topic_prefix
    signed = _version(keyed, world)
    assert Registry.from_settings(keyed).manifest(signed).signature

    assert main(["deploy", unsigned]) == 1
    assert f"version {unsigned}: manifest is not signed" in capsys.readouterr().err
    assert main(["deploy", signed, "--reason", "signed release"]) == 0

    [command] = _commands_on_the_topic(keyed)
    commands.verify(command, "test-key")  # raises if the signature is missing or wrong
    # A command written without the key (a forgery, as far as readers know) is ignored, with the reason.
    commands.publish(keyed, commands.make("deploy", unsigned, "sneaky"))
    doc = _json(capsys, ["models", "history", "--json"])
    assert isinstance(doc, dict)
    assert doc["active"] == signed
    assert [i["model_version"] for i in doc["ignored"]] == [unsigned]
    assert "not signed" in doc["ignored"][0]["why"]
    assert main(["models", "verify", signed]) == 0
    assert "signature and sha256" in capsys.readouterr().out


def test_retraining_on_what_the_storefront_logged(
    settings: Settings, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = world.sessions(3000, seed=21)
    bought = world.purchases(sessions, seed=21)
    producer = kafka.producer(settings)
    prediction, outcome = codec("prediction"), codec("outcome")
    for n, (user, candidates, purchased) in enumerate(
        zip(sessions.user_ids, sessions.candidates, bought, strict=True)
    ):
        request_id = f"r-{n}"
        ts = int(sessions.ts[n])
        event = {
            "request_id": request_id,
            "user_id": user,
            "model_version": "v0",
            "scores": {item: 0.5 for item in candidates},
            "recommended": candidates[:5],
            "instance": "serve-1",
            "ts": ts,
        }
        producer.produce(
            settings.topic("predictions"), key=request_id.encode(), value=prediction.encode(event)
        )
        done = {"request_id": request_id, "purchased": purchased, "ts": ts + 30_000}
        producer.produce(settings.topic("outcomes"), key=request_id.encode(), value=outcome.encode(done))
        producer.poll(0)
    # One malformed event must be skipped, not stop the training.
    producer.produce(settings.topic("outcomes"), key=b"r-bad", value=b'{"request_id": 1}')
    assert producer.flush(30) == 0

    manifest = _json(capsys, ["train", "--from-topics", "--json"])
    assert isinstance(manifest, dict)
    data = manifest["data"]
    assert data["source"] == "topics"
    assert data["sessions"] + data["held_out"]["sessions"] == 3000
    assert data["rows"] + data["held_out"]["rows"] == 3000 * 20
    assert manifest["metrics"]["f1"] > manifest["baseline"]["f1"]
    assert manifest["metrics"]["precision"] > manifest["baseline"]["precision"]


def test_rollback_after_an_automatic_rollback_goes_to_the_healthy_version(
    settings: Settings, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _version(settings, world)
    good = _version(settings, world, degrade=0.1)
    bad = _version(settings, world, degrade=0.8)
    for version in (first, good, bad):
        assert main(["deploy", version]) == 0
    # What the monitor publishes when an alert fires on the bad version.
    automatic = commands.make(
        "rollback", good, "f1 low", command_id="rollback:f1-low:x", issued_by=MONITOR, alert_id="f1-low:x"
    )
    commands.publish(settings, automatic)
    capsys.readouterr()

    # Not back to the bad version (the one active before the current), to the one before that.
    assert main(["rollback", "--reason", "the good one misbehaves"]) == 0
    assert f"rollback to {first} published" in capsys.readouterr().out
    assert commands.read_history(settings).active_version == first
    # Named, the bad version is still reachable.
    assert main(["rollback", "--to", bad, "--reason", "on purpose"]) == 0
    assert commands.read_history(settings).active_version == bad


def test_rollback_after_the_demo_has_nowhere_healthy_to_go(
    settings: Settings, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _version(settings, world)
    bad = _version(settings, world, degrade=0.8)
    assert main(["deploy", good]) == 0 and main(["deploy", bad]) == 0
    commands.publish(
        settings, commands.make("rollback", good, "f1 low", issued_by=MONITOR, alert_id="f1-low:y")
    )
    capsys.readouterr()
    assert main(["rollback"]) == 1
    err = capsys.readouterr().err
    assert f"no healthy version before {good} ({bad} rolled back for an alert); name one with --to" in err
    assert len(_commands_on_the_topic(settings)) == 3
