"""The two references the prediction service is measured against, each run as its own process on the same
requests with the same client settings:

- :func:`passthrough`, the ceiling: consume in batches and produce each request's bytes unchanged. No
  decoding, no model: what one replica's Kafka round trip costs in Python.
- :func:`naive`, the textbook service, written plainly as people do: one message per ``poll``, decode and
  validate it with the codec, call the model for that one request, encode and validate the prediction,
  produce it and ``poll(0)`` to serve delivery reports.

Run as ``python -m services.bench.contenders {passthrough|naive} --source T --sink T --group G``; the
settings (bootstrap, registry) come from ``MODELWATCH_*`` like every other modelwatch process. SIGTERM
stops either one; ``--limit N`` stops after N requests.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

from schemas import codec
from services import kafka
from services.config import Settings, load_settings


def passthrough(settings: Settings, source: str, sink: str, group: str, stop: threading.Event) -> int:
    """Forward every request to ``sink`` as it is; return how many."""
    serve = settings.serve
    # The consumer as the service sets it up, minus what only delivery guarantees need.
    consumer = kafka.consumer(
        settings,
        group,
        **{
            "fetch.wait.max.ms": 20,  # as the service: do not let the broker hold a fetch
            "enable.auto.commit": True,  # commit in the background; a reference needs no guarantees
        },
    )
    producer = kafka.producer(settings)
    consumer.subscribe([source])
    forwarded = 0
    try:
        while not stop.is_set():
            first = consumer.poll(serve.poll_timeout_s)
            if first is None:
                producer.poll(0)
                continue
            batch = [first, *consumer.consume(serve.batch_size - 1, 0)]
            for msg in batch:
                if msg.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(sink, msg.value(), msg.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
                forwarded += 1
            producer.poll(0)
        producer.flush(30)
    finally:
        consumer.close()
    return forwarded


def naive(
    settings: Settings,
    source: str,
    sink: str,
    group: str,
    version: str,
    stop: threading.Event,
    limit: int | None = None,
) -> int:
    """The textbook loop: one request, one decode, one model call, one produce."""
    from services.model import protocol
    from services.registry import Registry

    model = protocol.served(Registry.from_settings(settings).load(version))
    requests, predictions = codec("prediction-request"), codec("prediction")
    consumer = kafka.consumer(settings, group, **{"enable.auto.commit": True})  # the library's default
    producer = kafka.producer(settings)
    consumer.subscribe([source])
    served = 0
    try:
        while not stop.is_set() and (limit is None or served < limit):
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            started = time.perf_counter()
            request = requests.decode(msg.value())
            scores = model.score_batch([request["user_id"]], [request["items"]])[0]
            chosen = model.select([scores], [request.get("k", settings.serve.default_k)])[0]
            items = request["items"]
            prediction = {
                "request_id": request["request_id"],
                "user_id": request["user_id"],
                "model_version": version,
                "scores": {item: round(float(s), 6) for item, s in zip(items, scores, strict=True)},
                "recommended": [items[int(j)] for j in chosen],
                "instance": "naive",
                "ts": int(time.time() * 1000),
                "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
            }
            producer.produce(sink, predictions.encode(prediction), request["request_id"])
            producer.poll(0)
            served += 1
        producer.flush(30)
    finally:
        consumer.close()
    return served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.contenders", description=__doc__)
    parser.add_argument("kind", choices=("passthrough", "naive"))
    parser.add_argument("--source", required=True, help="the request topic")
    parser.add_argument("--sink", required=True, help="where the outputs go")
    parser.add_argument("--group", required=True, help="the consumer group")
    parser.add_argument("--version", help="naive: the model version to load from the registry")
    parser.add_argument("--limit", type=int, help="naive: stop after this many requests")
    args = parser.parse_args(argv)
    settings = load_settings()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"event=starting kind={args.kind} source={args.source} sink={args.sink}", file=sys.stderr)
    if args.kind == "passthrough":
        n = passthrough(settings, args.source, args.sink, args.group, stop)
    else:
        if not args.version:
            parser.error("naive needs --version")
        n = naive(settings, args.source, args.sink, args.group, args.version, stop, args.limit)
    print(f"event=stopped kind={args.kind} processed={n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
