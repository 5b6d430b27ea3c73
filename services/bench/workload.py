"""The benchmark's traffic: storefront requests recorded once from the world and produced once, a paced
producer for fixed offered rates, and labelled traffic (predictions plus outcomes) for the monitor.

Requests come from the world the models are trained on (20 candidates each, as the simulator sends), so
the model scores known users and items as in production.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from schemas import codec
from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from services.sandbox.storefront import DEFAULT_WORLD_SEED
from services.sandbox.world import World

Record = tuple[bytes, bytes]  # (key, value)

CANDIDATES = 20


def world() -> World:
    return World.generate(DEFAULT_WORLD_SEED)


def requests(w: World, n: int, seed: int, tag: str, start_ms: int | None = None) -> list[dict[str, Any]]:
    """``n`` valid prediction requests of 20 candidates, with ids ``<tag>-<i>``."""
    start = int(time.time() * 1000) if start_ms is None else start_ms
    s = w.sessions(n, seed=seed, candidates=CANDIDATES, start_ms=start, rate_per_s=1000.0)
    return [
        {"request_id": f"{tag}-{i}", "user_id": u, "items": items, "ts": int(ts)}
        for i, (u, items, ts) in enumerate(zip(s.user_ids, s.candidates, s.ts, strict=True))
    ]


def encode_requests(batch: Sequence[dict[str, Any]]) -> list[Record]:
    """Keyed by user_id and validated, as the storefront sends them."""
    encode = codec("prediction-request").encode
    return [(r["user_id"].encode(), encode(r)) for r in batch]


def produce_all(settings: Settings, topic: str, records: Sequence[Record], timeout: float = 60.0) -> int:
    """Write ``records`` as fast as the broker takes them and wait for every acknowledgement."""
    producer = kafka.producer(
        settings,
        **{"linger.ms": 20, "batch.num.messages": 10_000},  # a bulk load: full batches, few requests
    )
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(timeout) != 0 or errors:
        raise KafkaClientError(f"the benchmark's traffic was not acknowledged: {errors[:1] or 'timeout'}")
    return len(records)


def paced(
    settings: Settings,
    topic: str,
    records: Sequence[Record],
    rate: float,
    on_send: Callable[[int, float], None],
) -> float:
    """Produce ``records`` at ``rate`` per second, calling ``on_send(i, wall_time)`` just before each one
    goes; return the achieved rate. The producer is the storefront's (``services.kafka.producer``)."""
    producer = kafka.producer(settings)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    started = time.monotonic()
    sent = 0
    total = len(records)
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            key, value = records[sent]
            on_send(sent, time.time())
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(min(ahead, 0.001))  # pacing the offered load, ~1 ms granularity
    elapsed = time.monotonic() - started
    if producer.flush(30) != 0 or errors:
        raise KafkaClientError(f"paced requests were not acknowledged: {errors[:1] or 'timeout'}")
    return total / elapsed if elapsed > 0 else float("inf")


def labelled_traffic(
    w: World,
    n: int,
    version: str,
    seed: int = 5,
    k: int = 5,
    start_ms: int | None = None,
    first: int = 0,
) -> tuple[list[Record], list[Record]]:
    """``n`` predictions of ``version`` and their outcomes (purchases drawn from the world's true tastes,
    2 s after each prediction): what the monitor joins. Keyed by request_id, as the contract says; ids
    ``m-<first>`` onwards (a large volume is made in chunks)."""
    start = int(time.time() * 1000) - 60_000 if start_ms is None else start_ms
    s = w.sessions(n, seed=seed, candidates=CANDIDATES, start_ms=start, rate_per_s=1000.0)
    bought = w.purchases(s, seed=seed)
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((n, CANDIDATES)), 4)
    top = np.argsort(-scores, axis=1)[:, :k]
    p_codec, o_codec = codec("prediction"), codec("outcome")
    predictions: list[Record] = []
    outcomes: list[Record] = []
    for i in range(n):
        rid = f"m-{first + i}"
        items = s.candidates[i]
        ts = int(s.ts[i])
        prediction = {
            "request_id": rid,
            "user_id": s.user_ids[i],
            "model_version": version,
            "scores": dict(zip(items, scores[i].tolist(), strict=True)),
            "recommended": [items[j] for j in top[i].tolist()],
            "instance": "bench",
            "ts": ts,
        }
        outcome = {"request_id": rid, "purchased": bought[i], "ts": ts + 2000}
        predictions.append((rid.encode(), p_codec.encode(prediction)))
        outcomes.append((rid.encode(), o_codec.encode(outcome)))
    return predictions, outcomes
