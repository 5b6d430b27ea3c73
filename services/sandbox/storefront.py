"""The storefront simulator: requests at a steady rate, and later what the users really bought.

It plays the storefront exactly as a storefront team would: prediction-request events keyed by user_id on
``rec.requests``, and after a delay (the user browsing, paying) outcome events keyed by request_id on
``rec.outcomes``, both validated by the contract's codec. Purchases are drawn from the world's *true*
tastes at the session's time, never from any model, so a stale or degraded model shows up as falling
precision and recall downstream. With ``drift_at_s`` the world's tastes shift that many seconds into the
run.

Sessions are generated a second's worth at a time (vectorized) and produced when the wall clock reaches
their arrival time; outcomes wait in a heap until their time comes.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from schemas import codec
from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from services.sandbox.world import World

#: The world the demo trains on and the simulator plays; both default to it so the model fits the store.
DEFAULT_WORLD_SEED = 0


@dataclass
class SimulationStats:
    requests: int = 0
    outcomes: int = 0
    malformed: int = 0
    purchases: int = 0
    pending_outcomes: int = 0
    started: float = field(default_factory=time.time)
    delivery_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "started"}


@dataclass(frozen=True)
class SimulationPlan:
    rate: float = 200.0
    duration_s: float = 60.0
    drift_at_s: float | None = None
    drift_strength: float = 0.8
    seed: int = 1
    world_seed: int = DEFAULT_WORLD_SEED
    candidates: int = 20
    k: int | None = None
    #: Outcomes arrive uniformly between these many seconds after their request.
    outcome_delay_s: tuple[float, float] = (1.0, 3.0)
    #: Share of requests deliberately malformed (they should land in the dead-letter topic).
    malformed: float = 0.0


_BROKEN = (
    b"{not json",
    b'{"request_id": "x", "user_id": "u-1", "items": [], "ts": 1}',
    b'{"request_id": "x", "items": ["i-1"], "ts": 1}',
    b"\xff\xfe\xfd",
)


def simulate(
    settings: Settings,
    plan: SimulationPlan,
    stop: threading.Event | None = None,
    on_progress: Callable[[SimulationStats], None] | None = None,
) -> SimulationStats:
    """Play the storefront for ``plan.duration_s`` seconds (or until ``stop``), then deliver every outcome
    still pending and return the counts."""
    stop = stop or threading.Event()
    start_ms = int(time.time() * 1000)
    drift_ms = start_ms + int(plan.drift_at_s * 1000) if plan.drift_at_s is not None else None
    world = World.generate(seed=plan.world_seed, drift_at_ms=drift_ms, drift_strength=plan.drift_strength)
    producer = kafka.producer(settings)
    requests_topic, outcomes_topic = settings.topic("requests"), settings.topic("outcomes")
    request_codec, outcome_codec = codec("prediction-request"), codec("outcome")
    stats = SimulationStats()
    rng = np.random.default_rng([plan.seed, 7])
    run = uuid.uuid4().hex[:8]
    # (due ms, sequence, key, kind + value); kind R: request, B: malformed request, O: outcome
    pending: list[tuple[int, int, bytes, bytes]] = []
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    end_ms = start_ms + int(plan.duration_s * 1000)
    chunk_start = start_ms
    sequence = 0
    last_progress = 0.0
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        if chunk_start < end_ms and chunk_start <= now_ms + 1000:
            # One second of sessions at a time: vectorized draws, produced as their time comes.
            n = max(1, int(rng.poisson(plan.rate)))
            chunk_seed = plan.seed * 1_000_003 + sequence
            sessions = world.sessions(
                n, seed=chunk_seed, candidates=plan.candidates, start_ms=chunk_start, rate_per_s=plan.rate
            )
            bought = world.purchases(sessions, seed=chunk_seed)
            delays = rng.uniform(*plan.outcome_delay_s, n) * 1000
            broken = rng.random(n) < plan.malformed
            for i in range(n):
                ts = int(sessions.ts[i])
                if ts >= end_ms:
                    break
                sequence += 1
                request_id = f"{run}-{sequence}"
                if broken[i]:
                    value = _BROKEN[sequence % len(_BROKEN)]
                    heapq.heappush(pending, (ts, sequence, sessions.user_ids[i].encode(), b"B" + value))
                    continue
                request: dict[str, Any] = {
                    "request_id": request_id,
                    "user_id": sessions.user_ids[i],
                    "items": sessions.candidates[i],
                    "ts": ts,
                }
                if plan.k is not None:
                    request["k"] = plan.k
                value = request_codec.encode(request)
                heapq.heappush(pending, (ts, sequence, sessions.user_ids[i].encode(), b"R" + value))
                due = ts + int(delays[i])
                outcome = outcome_codec.encode({"request_id": request_id, "purchased": bought[i], "ts": due})
                heapq.heappush(pending, (due, sequence, request_id.encode(), b"O" + outcome))
            chunk_start = int(sessions.ts[-1]) + 1 if len(sessions) else chunk_start + 1000
        while pending and pending[0][0] <= now_ms:
            _due, _seq, key, tagged = heapq.heappop(pending)
            kind, value = tagged[:1], tagged[1:]
            if kind == b"O":
                producer.produce(outcomes_topic, key=key, value=value, on_delivery=on_delivery)
                stats.outcomes += 1
                stats.purchases += len(orjson.loads(value)["purchased"])
            else:
                producer.produce(requests_topic, key=key, value=value, on_delivery=on_delivery)
                if kind == b"B":
                    stats.malformed += 1
                else:
                    stats.requests += 1
        producer.poll(0)
        stats.pending_outcomes = len(pending)
        if on_progress and time.monotonic() - last_progress >= 0.5:
            last_progress = time.monotonic()
            on_progress(stats)
        if chunk_start >= end_ms and not pending:
            break
        wait_ms = (pending[0][0] - now_ms) if pending else 50
        stop.wait(min(0.05, max(0.0, wait_ms / 1000)))
    if producer.flush(30) != 0:
        raise KafkaClientError("the simulator's last events were not acknowledged within 30 s")
    stats.delivery_errors = len(errors)
    if errors:
        raise KafkaClientError(f"{len(errors)} simulator events were not delivered: {errors[0]}")
    if on_progress:
        on_progress(stats)
    return stats
