"""The join on the real broker and a real Faust worker, against what production does to it: producers with
any partitioner, a serving outage longer than the label window, an outcome partition that goes quiet, and
timestamps that are wrong (in microseconds, in seconds, years away), which the service meets first."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas import codec
from services import kafka
from services.config import Settings
from services.deployment import commands
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World as SandboxWorld
from services.serving import Service
from tests.integration.monitor_support import (
    QUICK_MONITOR,
    MonitorProcess,
    Req,
    Storefront,
    check_against_sklearn,
    read_events,
    read_labelled,
    topic_world,
    traffic,
    wait_for,
    write_config,
)
from tests.integration.serving_support import Collector

PARTITIONS = 3
W = 2000  # label window, ms
IDLE_S = 2.0
PAST_S = 15.0
MONITOR = {**QUICK_MONITOR, "label_window_s": W / 1000, "count_window": 100, "time_window_s": 5,
           "emit_every_n": 50, "idle_timeout_s": IDLE_S, "past_tolerance_s": PAST_S,
           "unlabelled": "no_purchase"}  # fmt: skip
#: Every version here is healthy (F1 0.8 on each labelled request, about 0.75 with a tenth of them never
#: bought from): far below means labels were lost.
RULE = {"name": "f1-low", "metric": "f1", "below": 0.6, "min_samples": 20, "for": 1, "severity": "critical"}
HEALTHY = (2, 0)  # two of three recommended bought, nothing else: precision 2/3, recall 1, F1 0.8


@dataclass
class World:
    settings: Settings
    monitor: MonitorProcess
    next_ts: int = 0  # after the last test's closing outcomes: the next test's traffic starts here

    def start(self) -> int:
        return max(now_ms(), self.next_ts)


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("join-time")
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        monitor = MonitorProcess(settings, write_config(workdir / "monitor.toml", MONITOR, [RULE]), workdir)
        monitor.start()
        try:
            yield World(settings, monitor)
        finally:
            monitor.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def client(settings: Settings, partitioner: str) -> Storefront:
    """A producer as another team writes it, keyed as the contract says: a stock confluent-kafka producer
    (librdkafka's default partitioner, consistent_random), or the project's (murmur2, as Java's)."""
    producer = Storefront(settings)
    if partitioner == "default":
        producer.producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    return producer


def labelled_of(settings: Settings, version: str) -> list[dict[str, Any]]:
    return [e for e in read_labelled(settings) if e["model_version"] == version]


def metrics_of(settings: Settings, version: str) -> list[dict[str, Any]]:
    return [m for m in read_events(settings, "metrics", "metrics") if m["model_version"] == version]


def alerts_of(settings: Settings, version: str) -> list[dict[str, Any]]:
    return [a for a in read_events(settings, "alerts", "alert") if a["model_version"] == version]


def wait_labelled(settings: Settings, version: str, n: int, timeout: float = 90) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        items = labelled_of(settings, version)
        return items if len({e["request_id"] for e in items}) >= n else None

    result: list[dict[str, Any]] = wait_for(done, timeout, f"{n} labelled requests of {version}", every=0.5)
    return result


def close_windows(world: World, reqs: list[Req]) -> None:
    """A last outcome on every partition, three windows past the traffic: every label window closes."""
    tick = max(r.ts for r in reqs) + 3 * W
    Storefront(world.settings).tick(tick, PARTITIONS)
    world.next_ts = tick + 1


@pytest.mark.parametrize(
    ("predictions_by", "outcomes_by"), [("murmur2_random", "default"), ("default", "murmur2_random")]
)
def test_every_outcome_joins_whatever_partitioner_the_producers_use(
    world: World, predictions_by: str, outcomes_by: str
) -> None:
    """A storefront with confluent-kafka's default partitioner (consistent_random, as librdkafka clients
    in Python, Go and Node) beside the service's murmur2; and a scoring service with the default beside a
    storefront with murmur2: each outcome meets its prediction."""
    version = f"part-{outcomes_by}"
    reqs = traffic(
        version, 600, seed=41, t0=world.start(), step_ms=5, hit=0, miss=0, exact=HEALTHY, missing=0.1
    )
    scorer, storefront = client(world.settings, predictions_by), client(world.settings, outcomes_by)
    scorer.predictions(reqs)
    storefront.outcomes(reqs)
    close_windows(world, reqs)
    labelled = wait_labelled(world.settings, version, len(reqs))
    # Guards the repartition by request_id: joined per source partition, about two outcomes in three
    # would miss their prediction here and expire (the two partitioners agree on one key in three).
    expired = {e["request_id"] for e in labelled if e["expired"]}
    assert expired == {r.request_id for r in reqs if r.outcome_ts is None}
    assert len(labelled) == len(reqs)


def test_a_serving_outage_four_label_windows_long_loses_no_label(world: World) -> None:
    """The storefront goes on while the replicas are down (outcomes flow, no prediction comes); then the
    predictions come, four label windows late: every request is labelled by its outcome, no alert."""
    version = "outage"
    step_ms, outage_ms = 10, 4 * W
    storefront = Storefront(world.settings)
    t0 = world.start()
    reqs = traffic(version, 1400, seed=42, t0=t0, step_ms=step_ms, hit=0, miss=0, exact=HEALTHY, delay_ms=300)
    down_from, down_to = t0 + 3000, t0 + 3000 + outage_ms
    withheld: list[Req] = []
    sent_p = sent_o = 0
    while sent_o < len(reqs):  # live: each event goes when its time comes (pacing the producer)
        now = now_ms()
        due_p = [r for r in reqs[sent_p:] if r.ts <= now]
        due_o = [r for r in reqs[sent_o:] if r.outcome_ts is not None and r.outcome_ts <= now]
        sent_p += len(due_p)
        sent_o += len(due_o)
        withheld += [r for r in due_p if down_from <= r.ts]
        if now >= down_to and withheld:
            storefront.predictions(withheld)  # the replicas are back and catch up
            withheld = []
        storefront.predictions([r for r in due_p if not down_from <= r.ts])
        storefront.outcomes(due_o)
        time.sleep(0.05)
    storefront.predictions(withheld)
    late = [r for r in reqs if down_from <= r.ts < down_to]
    assert len(late) >= outage_ms // step_ms - 50
    close_windows(world, reqs)
    labelled = wait_labelled(world.settings, version, len(reqs))
    # Guards the outcome's wait for its prediction (no fallback for an idle prediction stream): otherwise
    # the outcomes of the outage are given up and its predictions expire as "no purchase".
    assert [e["request_id"] for e in labelled if e["expired"]] == []
    alerts = alerts_of(world.settings, version)
    assert not alerts, [(a["value"], a["message"], a.get("window")) for a in alerts]

    def final() -> list[dict[str, Any]] | None:
        events = metrics_of(world.settings, version)
        return events if events and events[-1]["total"] == len(reqs) else None

    metrics = wait_for(final, 30, "the last metrics event", every=0.5)
    f1 = [m["f1"] for m in metrics if m["window"]["kind"] == "count"]
    assert max(f1) - min(f1) <= 0.05 and min(f1) == pytest.approx(0.8)
    truth = {r.request_id: r for r in reqs}
    check_against_sklearn(metrics, labelled, truth, label_window_ms=W, count_window=100, time_window_s=5)


def pending_requests(settings: Settings) -> int:
    """Requests waiting in the join now: live ``r:`` keys of the compacted pending changelog."""
    latest: dict[bytes, bytes | None] = {}
    for key, value, _ in kafka.read_topic(settings, f"{settings.topic_prefix}monitor-pending-changelog"):
        if key is not None:
            latest[key] = value
    return sum(1 for k, v in latest.items() if v is not None and k.startswith(b'"r:'))


def test_quiet_outcome_partitions_close_their_windows(kafka_bootstrap: str, tmp_path: Path) -> None:
    """One outcome partition never gets an outcome: pending predictions still expire within the label
    window, the allowance and the idle timeout. Then every partition goes quiet: everything pending
    expires by the monitor's clock (less the past tolerance), and nothing is left pending."""
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        monitor = MonitorProcess(settings, write_config(tmp_path / "monitor.toml", MONITOR, [RULE]), tmp_path)
        monitor.start()
        try:
            storefront = Storefront(settings)
            t0 = now_ms()
            reqs = traffic(
                "quiet", 1200, seed=43, t0=t0, step_ms=10, hit=0, miss=0, exact=HEALTHY, missing=0.2
            )
            sent = 0
            while sent < len(reqs):  # live, paced
                due = [r for r in reqs[sent:] if r.ts <= now_ms()]
                sent += len(due)
                storefront.predictions(due)
                for i, r in enumerate(due):
                    o = r.outcome()
                    if o is not None:  # partitions 0 and 1 only: partition 2 stays quiet
                        storefront._send("outcomes", "outcome", r.request_id, o, partition=i % 2)
                storefront.flush()
                time.sleep(0.05)
            missing = {r.request_id: r for r in reqs if r.outcome_ts is None}
            first = [r for r in reqs if r.ts < reqs[-1].ts - 3 * W]  # closed by the traffic itself

            def labelled() -> list[tuple[dict[str, Any], int]]:
                topic = f"{settings.topic_prefix}monitor-labelled"
                return [
                    (item, ts)
                    for _, v, ts in kafka.read_topic(settings, topic)
                    if v is not None
                    for item in orjson.loads(v)
                    if item["model_version"] == "quiet"
                ]

            wait_for(lambda: len(labelled()) == len(reqs), 60 + PAST_S, "every request labelled", every=0.5)
            items = labelled()
            assert {e["request_id"] for e, _ in items if e["expired"]} == set(missing)
            # Guards the idle partition's exclusion: partition 2's clock stays where it started, and would
            # hold every window open until every partition went quiet.
            late_by = [
                ts - (e["ts"] + W) for e, ts in items if e["expired"] and missing[e["request_id"]] in first
            ]
            assert late_by and max(late_by) <= W + IDLE_S * 1000 + 5000  # allowance W, slack for the machine
            # Guards the processing-time fallback: without it the last windows never close.
            assert wait_for(lambda: pending_requests(settings) == 0, 30, "nothing pending", every=1.0)
        finally:
            monitor.stop()


def bad_outcome(ts: int) -> dict[str, Any]:
    rid = f"bad-{uuid.uuid4().hex[:8]}"
    return {"request_id": rid, "purchased": [], "ts": ts}


def test_bad_outcome_timestamps_are_dead_lettered_and_expire_nothing(world: World) -> None:
    """Outcomes in microseconds, in seconds, years ahead and years behind, on every partition, amid
    healthy traffic: each is dead-lettered with a reason naming ts; no healthy request expires."""
    version = "bad-ts"
    storefront = Storefront(world.settings)
    t0 = world.start()
    reqs = traffic(version, 300, seed=44, t0=t0, step_ms=10, hit=0, miss=0, exact=HEALTHY)
    year = 365 * 24 * 3600 * 1000
    bad = [
        bad_outcome(ts)
        for t in range(PARTITIONS)
        for ts in (t0 * 1000, t0 // 1000, t0 + 3 * year, t0 - 5 * year)
    ]
    storefront.predictions(reqs[:150])
    for i, o in enumerate(bad):
        storefront._send("outcomes", "outcome", o["request_id"], o, partition=i % PARTITIONS)
    storefront.outcomes(reqs[:150])
    storefront.predictions(reqs[150:])
    storefront.outcomes(reqs[150:])
    storefront.flush()
    close_windows(world, reqs)
    labelled = wait_labelled(world.settings, version, len(reqs))
    # Guards the plausibility check: one outcome in microseconds moved the clock 50,000 years on.
    assert [e for e in labelled if e["expired"]] == []
    assert alerts_of(world.settings, version) == []
    ids = {o["request_id"] for o in bad}

    def dead() -> list[dict[str, Any]] | None:
        letters = [
            d
            for d in read_events(world.settings, "outcomes.dlq", "dead-letter")
            if orjson.loads(d["payload"])["request_id"] in ids
        ]
        return letters if len(letters) >= len(bad) else None

    letters = wait_for(dead, 30, f"{len(bad)} dead letters", every=0.5)
    assert len(letters) == len(bad)
    outcomes = world.settings.topic("outcomes")
    assert all(d["error"].startswith("outcome: ts: ") and d["source_topic"] == outcomes for d in letters)
    assert {d["partition"] for d in letters} == set(range(PARTITIONS))
    hints = [d["error"] for d in letters if "microseconds?" in d["error"] or "seconds?" in d["error"]]
    assert len(hints) == 2 * PARTITIONS
    codec("dead-letter").validate(letters[0])


def test_requests_with_an_implausible_ts_are_dead_lettered_by_the_service(settings: Settings) -> None:
    """Requests in microseconds, in seconds, years ahead and years behind, on every partition, among valid
    ones: each bad one is dead-lettered with a reason naming ts; each valid one is answered, its
    prediction carrying the request's ts as request_ts."""
    small = SandboxWorld.generate(11, n_users=200, n_items=80)
    model = Recommender(n_components=2).fit(small.interactions(1500, seed=1))
    version = Registry(settings.registry).register(model, metrics={}, data_summary={}).version
    commands.publish(settings, commands.make("deploy", version, "test"))
    collector = Collector(settings)
    service = Service(settings, instance="serve-ts").start()
    try:
        t0, year = now_ms(), 365 * 24 * 3600 * 1000
        partitions = len(
            kafka.admin(settings).list_topics(timeout=10).topics[settings.topic("requests")].partitions
        )
        valid = {f"ok-{i}": t0 + 10 * i for i in range(60)}
        bad = {
            f"bad-{p}-{n}": ts
            for p in range(partitions)
            for n, ts in enumerate((t0 * 1000, t0 // 1000, t0 + 3 * year, t0 - 5 * year))
        }
        producer = kafka.producer(settings)
        for rid, ts in [*valid.items(), *bad.items()]:
            request = {"request_id": rid, "user_id": "u-1", "items": ["i-1", "i-2", "i-3"], "ts": ts}
            partition = int(rid.split("-")[1]) if rid.startswith("bad") else -1
            producer.produce(settings.topic("requests"), orjson.dumps(request), b"u-1", partition=partition)
        assert producer.flush(30) == 0
        wait_for(lambda: set(valid) <= collector.answered(), 60, "every valid request answered", every=0.5)
        wait_for(lambda: len(collector.dead()) >= len(bad), 30, f"{len(bad)} dead letters", every=0.5)
    finally:
        service.stop()
        collector.close()
    # Guards the service's plausibility check: without it each bad request is answered, and its
    # prediction's request_ts would be a clock the monitor cannot trust.
    assert collector.answered() == set(valid)
    assert {p["request_id"]: p["request_ts"] for p in collector.predictions()} == valid
    dead = collector.dead()
    assert sorted(orjson.loads(d["payload"])["request_id"] for d in dead) == sorted(bad)
    assert all(d["error"].startswith("prediction-request: ts: ") for d in dead)
    assert {d["partition"] for d in dead} == set(range(partitions))


def test_skewed_storefront_and_replica_clocks_label_as_before(world: World) -> None:
    """The storefront's clock runs three minutes ahead, a replica's four minutes behind (injected in the
    events; the machine's clock is untouched): every request is labelled by its outcome, no alert."""
    version = "skewed"
    ahead, behind = 3 * 60_000, 4 * 60_000
    t0 = world.start()
    reqs = traffic(version, 400, seed=45, t0=t0 + ahead, step_ms=5, hit=0, miss=0, exact=HEALTHY)
    storefront = Storefront(world.settings)
    for r in reqs:  # the replica stamps its own ts, and copies the request's as request_ts
        p = {**r.prediction(), "ts": r.ts - ahead - behind, "request_ts": r.ts}
        storefront._send("predictions", "prediction", r.request_id, p)
    storefront.flush()
    storefront.outcomes(reqs)
    close_windows(world, reqs)
    labelled = wait_labelled(world.settings, version, len(reqs))
    # Guards the join on request_ts: on the replica's ts, seven minutes before the outcomes, every
    # prediction would expire unlabelled.
    assert [e["request_id"] for e in labelled if e["expired"]] == []
    assert alerts_of(world.settings, version) == []
