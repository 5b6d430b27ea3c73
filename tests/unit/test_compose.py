"""No Docker engine runs here: check that docker-compose.yml parses and wires the services."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_parses_and_names_the_services() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"kafka", "topics", "serve-1", "serve-2", "monitor"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:3.9")
    for name in ("serve-1", "serve-2", "monitor"):
        env = services[name]["environment"]
        assert env["MODELWATCH_BOOTSTRAP"] == "kafka:9092"
        assert "topics" in services[name]["depends_on"]
