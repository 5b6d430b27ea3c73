"""The prediction service on the real broker, two replicas at a time: every request answered, commands
obeyed and acknowledged, bad input dead-lettered, a killed replica's partitions taken over.

Replicas run as ``modelwatch serve`` processes (or in-process :class:`Service` threads where the test is
about the in-process API). Models are real recommenders trained on a small world, registered in the
test's own registry (MODELWATCH_REGISTRY, which the replicas inherit).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import codec
from services.config import Settings, load_settings
from services.deployment import commands
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from services.serving import Service
from tests.integration.serving_support import (
    Collector,
    Replica,
    TcpProxy,
    committed_offsets,
    encoded,
    end_offsets,
    free_port,
    produce,
    requests_of,
    wait_for,
)

KEY = "test-signing-key"


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(11, n_users=400, n_items=150)


@pytest.fixture(scope="module")
def models(world: World) -> tuple[Recommender, Recommender]:
    log = world.interactions(3000, seed=1)
    return Recommender(n_components=4).fit(log), Recommender(n_components=2, threshold=None).fit(log)


def register(settings: Settings, model: Recommender, key: str | None = None) -> str:
    return Registry(settings.registry, signing_key=key).register(model, metrics={}, data_summary={}).version


def deploy(settings: Settings, version: str, key: str | None = None, **extra: Any) -> dict[str, Any]:
    command = commands.make("deploy", version, "test", key=key, **extra)
    commands.publish(settings, command)
    return command


def both_serving(collector: Collector, names: tuple[str, ...], partitions: int = 6) -> bool:
    """Every replica has a model and the group's partitions are all handed out."""
    owned = [set(collector.serving(n)) for n in names]
    return all(owned) and set().union(*owned) == set(range(partitions))


def check_predictions(predictions: list[dict[str, Any]], requests: dict[str, dict[str, Any]]) -> None:
    """Each prediction is a valid event answering its request: a score per candidate, a subset picked."""
    valid = codec("prediction")
    for p in predictions:
        valid.validate({k: v for k, v in p.items() if not k.startswith("_")})
        request = requests[p["request_id"]]
        assert p["user_id"] == request["user_id"]
        assert list(p["scores"]) == request["items"]
        assert set(p["recommended"]) <= set(request["items"])
        assert len(p["recommended"]) <= request.get("k", 5)


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_two_replicas_answer_every_request(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    replicas: Callable[..., Replica],
    mode: str,
) -> None:
    v1 = register(settings, models[0])
    deploy(settings, v1)
    flags = ["--exactly-once"] if mode == "exactly-once" else []
    port = free_port()
    a = replicas("serve-a", *flags, "--metrics-port", str(port))
    b = replicas("serve-b", *flags)
    wait_for(lambda: both_serving(collector, ("serve-a", "serve-b")), 60, "both replicas to share the group")

    requests = requests_of(world, 20_000, seed=2)
    produce(settings, encoded(requests))
    wait_for(lambda: len(collector.answered()) == 20_000, 60, "a prediction for each of 20,000 requests")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    assert a.terminate() == 0 and b.terminate() == 0  # SIGTERM: finish the batch, commit, close
    ends = end_offsets(settings)
    wait_for(
        lambda: committed_offsets(settings, f"{settings.topic_prefix}serve") == ends, 30, "final commits"
    )

    predictions = collector.predictions()
    duplicates = collector.duplicates()
    print(f"\n{mode}: 20,000 requests, {len(predictions)} predictions, {duplicates} duplicates")
    if mode == "exactly-once":
        assert duplicates == 0
    check_predictions(predictions, {r["request_id"]: r for r in requests})
    assert {p["model_version"] for p in predictions} == {v1}
    by_instance = Counter(p["instance"] for p in predictions)
    assert set(by_instance) == {"serve-a", "serve-b"}, by_instance
    assert not collector.dead()
    assert 'modelwatch_serve_active_model{model_version="' + v1 + '"} 1.0' in metrics
    assert (
        "modelwatch_serve_requests_total" in metrics and "modelwatch_serve_latency_seconds_bucket" in metrics
    )
    for replica in (a, b):
        assert "event=stopped" in replica.log
        for trouble in ("delivery_failed", "transaction_aborted", "control_failed", "flush_timed_out"):
            assert f"event={trouble}" not in replica.log


def test_a_deploy_mid_stream_switches_each_replica_at_its_acknowledgement(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    replicas: Callable[..., Replica],
) -> None:
    v1, v2 = register(settings, models[0]), register(settings, models[1])
    deploy(settings, v1)
    names = ("serve-a", "serve-b")
    for name in names:
        replicas(name)
    wait_for(lambda: both_serving(collector, names), 60, "both replicas to share the group")

    requests = requests_of(world, 12_000, seed=3)
    stream = threading.Thread(target=produce, args=(settings, encoded(requests), 2000.0))
    stream.start()
    wait_for(lambda: len(collector.answered()) >= 3000, 60, "predictions of the first version")
    command = deploy(settings, v2)
    # publish() returns once the broker acknowledged the command (connecting its producer takes a while
    # before that, so the command's own ts is earlier).
    published = int(time.time() * 1000)
    acks = wait_for(lambda: len(a := collector.acked(command["command_id"])) == 2 and a, 30, "both acks")
    stream.join(60)
    wait_for(lambda: len(collector.answered()) == 12_000, 60, "every request answered")

    predictions = collector.predictions()
    for name in names:
        ack = acks[name]
        assert (ack["event"], ack["model_version"]) == ("activated", v2)
        print(f"\n{name}: acknowledged {ack['ts'] - published} ms after the command was published")
        mine = [p for p in predictions if p["instance"] == name]
        before = {p["model_version"] for p in mine if p["ts"] < ack["ts"]}
        after = {p["model_version"] for p in mine if p["ts"] >= ack["ts"]}
        assert before == {v1} and after == {v2}, (name, before, after)
    check_predictions(predictions, {r["request_id"]: r for r in requests})


def test_tampered_forged_replayed_and_unknown_commands_are_rejected_and_serving_goes_on(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    replicas: Callable[..., Replica],
) -> None:
    v1 = register(settings, models[0], key=KEY)
    tampered = register(settings, models[1], key=KEY)
    good = register(settings, models[1], key=KEY)
    first = deploy(settings, v1, key=KEY)
    names = ("serve-a", "serve-b")
    for name in names:
        replicas(name, env={"MODELWATCH_SIGNING_KEY": KEY})
    wait_for(lambda: both_serving(collector, names), 60, "both replicas to share the group")

    artifact = next(p for p in Path(settings.registry, tampered).iterdir() if not p.name.endswith(".json"))
    os.chmod(artifact, 0o644)
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF  # one byte flipped, same size: only the digest can tell
    artifact.write_bytes(bytes(data))

    bad = {
        "digest": deploy(settings, tampered, key=KEY),
        "forged": commands.sign(commands.make("deploy", good, "evil"), "not-the-key"),
        "unsigned": commands.make("deploy", good, "no signature"),
        "missing": commands.make("deploy", "20990101T000000-deadbeef", "typo", key=KEY),
        "replayed": first,
    }
    for kind, command in bad.items():
        if kind != "digest":
            commands.publish(settings, command)
    for kind, command in bad.items():
        rejected = wait_for(lambda c=command: len(r := rejections(collector, c)) == 2 and r, 30, kind)
        print(f"\n{kind}: {rejected['serve-a']['error']}")
    errors = {kind: rejections(collector, c) for kind, c in bad.items()}
    assert (
        "sha256" in errors["digest"]["serve-a"]["error"] or "digest" in errors["digest"]["serve-a"]["error"]
    )
    assert "forged" in errors["forged"]["serve-b"]["error"]
    assert "not signed" in errors["unsigned"]["serve-a"]["error"]
    assert "already applied" in errors["replayed"]["serve-b"]["error"]

    requests = requests_of(world, 3000, seed=4)
    produce(settings, encoded(requests))
    wait_for(lambda: len(collector.answered()) == 3000, 60, "every request answered")
    assert {p["model_version"] for p in collector.predictions()} == {v1}
    for name in names:
        assert collector.serving(name) and collector.events("heartbeat", name)[-1]["model_version"] == v1


def rejections(collector: Collector, command: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["instance"]: e for e in collector.events("rejected") if e.get("command_id") == command["command_id"]
    }


def malformed(requests: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes | None, str]]:
    """Bad requests of every kind, with the words their dead letter must contain."""
    r = requests[0]
    kinds: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k", None, "message value is null"),
        (b"k", b"\xff\xfe\x00 not utf-8", "not valid UTF-8 JSON"),
        (b"k", b'{"request_id": "x", "pad": "' + b"y" * 1_000_000 + b'"}', "over 1000000"),
        (b"k", b"{not json", "not valid UTF-8 JSON"),
        (b"k", orjson.dumps({**r, "items": []}), "items: must contain at least 1"),
        (b"k", orjson.dumps({**r, "items": ["i-1", "i-1"]}), "items: must contain unique items"),
        (b"k", orjson.dumps({k: v for k, v in r.items() if k != "user_id"}), "user_id: is required"),
        (b"k", orjson.dumps({**r, "ts": "now"}), "ts: must be integer"),
        (b"k", orjson.dumps({**r, "k": 0}), "k: must be bigger than or equal to 1"),
        (None, orjson.dumps([r]), "must be object"),
    ]
    return kinds


def test_malformed_requests_are_dead_lettered_and_every_valid_one_answered(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
) -> None:
    v1 = register(settings, models[0])
    deploy(settings, v1)
    valid = requests_of(world, 9_900, seed=5)
    kinds = malformed(valid)
    bad = [kinds[i % len(kinds)] for i in range(100)]  # 1% of 10,000
    messages = encoded(valid)
    for i, (key, value, _reason) in enumerate(bad):
        messages.insert(i * 99, (key, value))
    # Two replicas in this process: the in-process API, stopped through its stop event.
    services = [Service(settings, instance=f"serve-{n}").start() for n in "ab"]
    try:
        produce(settings, messages)
        wait_for(lambda: len(collector.answered()) == 9_900, 60, "every valid request answered")
        wait_for(lambda: len(collector.dead()) >= 100, 30, "every malformed request dead-lettered")
    finally:
        for s in services:
            s.stop()
    dead = collector.dead()
    assert len(dead) == 100
    reasons = Counter(next(why for _k, _v, why in kinds if why in d["error"]) for d in dead)
    assert reasons == Counter(why for _k, _v, why in bad)
    for d in dead:
        codec("dead-letter").validate({k: v for k, v in d.items() if not k.startswith("_")})
        assert d["source_topic"] == settings.topic("requests")
    oversize = [d for d in dead if "over 1000000" in d["error"]]
    assert all(d["payload_truncated"] and d["payload"].startswith('{"request_id": "x"') for d in oversize)
    assert sum(s.counts.dead_letters for s in services) == 100
    assert (
        sum(s.metrics.value("modelwatch_serve_dead_letters_total", reason="contract") for s in services)
        == 100
    )
    check_predictions(collector.predictions(), {r["request_id"]: r for r in valid})


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_a_killed_replica_s_partitions_are_taken_over_and_every_request_answered(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    replicas: Callable[..., Replica],
    mode: str,
) -> None:
    v1 = register(settings, models[0])
    deploy(settings, v1)
    flags = ["--exactly-once"] if mode == "exactly-once" else []
    victim, survivor = replicas("serve-a", *flags), replicas("serve-b", *flags)
    wait_for(lambda: both_serving(collector, ("serve-a", "serve-b")), 60, "both replicas to share the group")

    requests = requests_of(world, 20_000, seed=6)
    stream = threading.Thread(target=produce, args=(settings, encoded(requests), 2500.0))
    stream.start()
    wait_for(
        lambda: sum(p["instance"] == "serve-a" for p in collector.predictions()) >= 2000,
        60,
        "the victim to be busy",
    )
    victim.kill()
    stream.join(60)
    wait_for(
        lambda: collector.serving("serve-b") == list(range(6)), 60, "the survivor to take every partition"
    )
    wait_for(lambda: len(collector.answered()) == 20_000, 60, "every request answered")
    duplicates = collector.duplicates()
    print(f"\nSIGKILL mid-stream, {mode}: 20,000 requests all answered, {duplicates} duplicates")
    if mode == "exactly-once":
        assert duplicates == 0
    assert survivor.proc.poll() is None
    check_predictions(collector.predictions(), {r["request_id"]: r for r in requests})


def test_a_replica_waits_for_the_broker_then_for_a_deploy_then_serves(
    settings: Settings,
    kafka_bootstrap: str,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelwatch")

    def logged(event: str) -> list[dict[str, Any]]:
        return [f for r in caplog.records if (f := getattr(r, "fields", None)) and f["event"] == event]

    requests = requests_of(world, 200, seed=7)
    produce(settings, encoded(requests))  # queued before any replica or model exists
    port = free_port()
    host, broker_port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    away = load_settings(bootstrap=f"127.0.0.1:{port}", topic_prefix=settings.topic_prefix)
    service = Service(away, instance="serve-late").start()
    proxy = None
    try:
        retries = wait_for(
            lambda: len(r := logged("broker_unreachable")) >= 2 and r, 30, "retries with backoff"
        )
        assert [r["attempt"] for r in retries[:2]] == [1, 2] and retries[1]["retry_in_s"] > retries[0][
            "retry_in_s"
        ]
        proxy = TcpProxy(port, (host, int(broker_port)))  # the broker "appears"
        wait_for(lambda: logged("no_model"), 30, "the replica to say it has no model")
        beats = wait_for(lambda: collector.events("heartbeat", "serve-late"), 30, "a heartbeat")
        assert beats[-1]["model_version"] is None
        assert (
            not service.serving.is_set() and not collector.predictions()
        )  # nothing consumed without a model
        v1 = register(settings, models[0])
        command = deploy(settings, v1)
        wait_for(lambda: collector.acked(command["command_id"]), 30, "the first deploy's acknowledgement")
        wait_for(lambda: len(collector.answered()) == 200, 60, "the queued requests answered")
    finally:
        service.stop()
        if proxy is not None:
            proxy.close()
    assert {p["model_version"] for p in collector.predictions()} == {v1}
    assert logged("broker_reachable")
