"""In-process microbenchmarks: what one event costs to decode and validate, and one request to score.

Each figure is the fastest of seven rounds, a round being as many passes over a fixed set of inputs as fit
in ``seconds / 7``, timed with ``time.perf_counter``: on a shared machine, other processes only ever make a
round slower, so the fastest is the one closest to the code's own cost (``timeit``'s advice). The inputs
are real: requests from the world, predictions of them, outcomes drawn from the world's true tastes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from schemas import codec
from services.bench import workload
from services.sandbox.world import World
from services.serving.intake import fast_decode
from services.serving.scoring import Scorer, score


def per_item_us(run: Callable[[], int], seconds: float) -> float:
    """Microseconds per item of ``run`` (which processes some items and returns how many)."""
    rounds = []
    for _ in range(7):
        done, started = 0, time.perf_counter()
        deadline = started + seconds / 7
        while True:
            done += run()
            now = time.perf_counter()
            if now >= deadline:
                break
        rounds.append((now - started) * 1e6 / done)
    return min(rounds)


def _decoding(event: str, payloads: Sequence[bytes]) -> Callable[[], int]:
    decode = codec(event).decode

    def run() -> int:
        for p in payloads:
            decode(p)
        return len(payloads)

    return run


def codec_costs(world: World, seconds: float, n: int = 500) -> dict[str, float]:
    """µs per event to decode and validate each joined event type, plus the service's fast intake check."""
    requests = workload.requests(world, n, seed=11, tag="micro")
    raw_requests = [orjson.dumps(r) for r in requests]
    predictions, outcomes = workload.labelled_traffic(world, n, "micro-version", seed=12)

    def fast_intake() -> int:
        for p in raw_requests:
            fast_decode(p)
        return len(raw_requests)

    return {
        "request_decode_us": per_item_us(_decoding("prediction-request", raw_requests), seconds),
        "request_fast_intake_us": per_item_us(fast_intake, seconds),
        "prediction_decode_us": per_item_us(_decoding("prediction", [v for _, v in predictions]), seconds),
        "outcome_decode_us": per_item_us(_decoding("outcome", [v for _, v in outcomes]), seconds),
    }


def scoring_costs(
    model: Scorer, world: World, seconds: float, batch_sizes: Sequence[int] = (1, 500)
) -> dict[str, float]:
    """µs per request to score and select, through the service's scoring step, at each batch size."""
    requests: list[dict[str, Any]] = workload.requests(world, max(batch_sizes) * 2, seed=13, tag="micro")
    out: dict[str, float] = {}
    for size in batch_sizes:
        batches = [requests[i : i + size] for i in range(0, len(requests), size)][:2]

        def run(batches: list[list[dict[str, Any]]] = batches) -> int:
            for b in batches:
                score(model, b, 5)
            return sum(len(b) for b in batches)

        out[f"score_batch{size}_us"] = per_item_us(run, seconds)
    return out
