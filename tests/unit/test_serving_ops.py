"""What operators see of a replica: one key=value line per event, throttled client noise, metrics."""

from __future__ import annotations

import io
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from services.serving.logs import EventLog, KafkaReporter, KeyValueFormatter, Throttle, line
from services.serving.metrics import ServeMetrics, WeightedHistogram


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("modelwatch")
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old)


def test_an_event_is_one_line_of_key_value_pairs(captured: io.StringIO) -> None:
    log = EventLog("serve", instance="serve-1")
    log.warning("rejected", version="v2", reason='cannot load v2: sha256 "mismatch"\nsecond line', n=None)
    text = captured.getvalue()
    assert text.count("\n") == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=warning component=serve ", text)
    assert (
        'instance=serve-1 event=rejected version=v2 reason="cannot load v2: sha256 \\"mismatch\\"\\nsecond'
        in text
    )
    assert " n=" not in text


def test_line_quotes_only_what_needs_it() -> None:
    assert line({"a": "x-1.2:3", "b": "two words", "c": 1.5, "d": None}) == 'a=x-1.2:3 b="two words" c=1.5'


def test_a_broker_that_is_down_is_reported_once_not_per_reconnect(captured: io.StringIO) -> None:
    reporter = KafkaReporter(EventLog("serve"), every_s=60)
    for _ in range(50):
        reporter.logger.error("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to 127.0.0.1:1 failed")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 1 and "event=kafka_log facility=FAIL" in lines[0]


def test_throttle_counts_what_it_held_back() -> None:
    throttle = Throttle(every_s=0.0)
    assert throttle.admit("x") == 0
    slow = Throttle(every_s=3600)
    assert slow.admit("x") == 0 and slow.admit("x") is None and slow.admit("y") == 0


def test_latency_histogram_weights_a_batch_by_its_size() -> None:
    h = WeightedHistogram("lat", "doc", (0.01, 0.1))
    h.observe(0.005, 500)
    h.observe(0.05, 10)
    h.observe(5.0)
    (family,) = h.collect()
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("lat_bucket", "0.01")] == 500
    assert samples[("lat_bucket", "0.1")] == 510
    assert samples[("lat_bucket", "+Inf")] == 511
    assert samples[("lat_count", None)] == 511
    assert samples[("lat_sum", None)] == pytest.approx(0.005 * 500 + 0.5 + 5.0)


def test_metrics_are_served_over_http_with_the_active_version_as_a_label() -> None:
    m = ServeMetrics()
    m.activated("v1")
    m.activated("v2")
    m.predictions.labels("v2").inc(3)
    m.latency.observe(0.002, 3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.start_http(port)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.stop_http()
    assert 'modelwatch_serve_active_model{model_version="v2"} 1.0' in body
    assert 'model_version="v1"' not in body.split("modelwatch_serve_active_model")[-1]
    assert 'modelwatch_serve_predictions_total{model_version="v2"} 3.0' in body
    assert "modelwatch_serve_latency_seconds_count 3.0" in body
    assert m.value("modelwatch_serve_predictions_total", model_version="v2") == 3
