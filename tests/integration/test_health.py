"""A real `modelwatch serve` process answers /healthz and /readyz on its metrics port: alive at once, ready
only once it has a model and has joined the group."""

from __future__ import annotations

from pathlib import Path

from services.cli import main
from services.config import Settings
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from tests.endpoints import get
from tests.integration.serving_support import Replica, free_port, wait_for


def status_of(port: int, path: str) -> int | None:
    try:
        return get(port, path)[0]
    except OSError:  # not listening yet
        return None


def test_a_replica_is_alive_at_once_and_ready_once_it_serves_a_model(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    replica = Replica("serve-probed", tmp_path, "--metrics-port", str(port))
    try:
        wait_for(lambda: status_of(port, "/healthz") == 200, 60, "/healthz")
        # No version was ever deployed: alive, not ready (and it stays so while it waits for a deploy).
        wait_for(lambda: "no_model" in replica.log, 60, "the replica to wait for a deploy")
        assert status_of(port, "/readyz") == 503

        world = World.generate(11, n_users=400, n_items=150)
        model = Recommender(n_components=4).fit(world.interactions(3000, seed=1))
        version = Registry(settings.registry).register(model, metrics={}, data_summary={}).version
        assert main(["deploy", version, "--no-wait"]) == 0
        wait_for(lambda: status_of(port, "/readyz") == 200, 90, "/readyz once a model serves")
        status, body = get(port, "/metrics")
        assert status == 200 and f'modelwatch_serve_active_model{{model_version="{version}"}} 1.0' in body
        assert replica.terminate() == 0
    finally:
        replica.close()
