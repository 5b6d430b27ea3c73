"""A real Prometheus (Debian's 2.42) scrapes two real replicas and the real monitor with the rules the
project ships (services/ops/monitoring/rules.yml, checked by promtool), and every query of the shipped
Grafana dashboard returns series while the storefront's traffic flows."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.cli import main
from services.config import Settings
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.storefront import SimulationPlan, simulate
from services.sandbox.world import World
from tests.integration.monitor_support import MonitorProcess, write_config
from tests.integration.monitoring_support import binary, http_json, http_status
from tests.integration.serving_support import Replica, free_port, wait_for

MONITORING = Path(__file__).resolve().parents[2] / "services" / "ops" / "monitoring"
MONITOR = {"label_window_s": 10.0, "count_window": 200, "emit_every_n": 50, "emit_every_s": 1.0,
           "commit_interval_s": 0.5, "session_timeout_s": 6}  # fmt: skip
# Fires on any real model (F1 is far below 0.99): the dashboard's alerts panel has something to show.
ALERTS = [{"name": "f1-demanding", "metric": "f1", "below": 0.99, "min_samples": 20, "severity": "info"}]


def dashboard_queries() -> dict[str, str]:
    """Every query of the shipped dashboard: its panels' targets and its annotations, by title."""
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    queries = {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }
    for annotation in dashboard["annotations"]["list"]:
        queries[f"annotation {annotation['name']}"] = annotation["expr"]
    return queries


def test_the_shipped_rules_pass_promtool() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(MONITORING / "rules.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout
    result = subprocess.run(
        [binary("promtool"), "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_fleet_and_every_dashboard_query_has_series(
    settings: Settings, tmp_path: Path, replicas: Callable[..., Replica]
) -> None:
    serve_ports = [free_port(), free_port()]
    monitor_port, prometheus_port = free_port(), free_port()
    config = write_config(tmp_path / "monitor.toml", {**MONITOR, "metrics_port": monitor_port}, ALERTS)
    monitor = MonitorProcess(settings, config, tmp_path)
    prometheus: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    storefront: threading.Thread | None = None
    try:
        monitor.start()
        for i, port in enumerate(serve_ports):
            replicas(f"prom-{i + 1}", "--metrics-port", str(port))
        world = World.generate(11, n_users=400, n_items=150)
        model = Recommender(n_components=4).fit(world.interactions(3000, seed=1))
        version = Registry(settings.registry).register(model, metrics={}, data_summary={}).version
        assert main(["deploy", version, "--no-wait"]) == 0
        for port in serve_ports:
            wait_for(lambda p=port: http_status(f"http://127.0.0.1:{p}/readyz") == 200, 90, "a replica ready")

        scrape = tmp_path / "prometheus.yml"
        scrape.write_text(
            json.dumps(  # JSON is YAML: the shipped jobs and rules, local targets, scraped every second
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(MONITORING / "rules.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "modelwatch-serve",
                            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in serve_ports]}],
                        },
                        {
                            "job_name": "modelwatch-monitor",
                            "static_configs": [{"targets": [f"127.0.0.1:{monitor_port}"]}],
                        },
                    ],
                }
            )
        )
        with open(tmp_path / "prometheus.log", "wb") as log:
            prometheus = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={scrape}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = f"http://127.0.0.1:{prometheus_port}/api/v1"
        wait_for(lambda: http_status(f"http://127.0.0.1:{prometheus_port}/-/ready") == 200, 60, "Prometheus")

        plan = SimulationPlan(rate=100, duration_s=300, malformed=0.02, outcome_delay_s=(0.5, 2.0), seed=5)
        storefront = threading.Thread(target=simulate, args=(settings, plan, stop), daemon=True)
        storefront.start()

        def query(expr: str) -> list[dict[str, Any]]:
            answer = http_json(f"{api}/query?{urllib.parse.urlencode({'query': expr})}")
            assert answer["status"] == "success", answer
            result: list[dict[str, Any]] = answer["data"]["result"]
            return result

        queries = dashboard_queries()
        empty: list[str] = []

        def every_query_has_series() -> bool:
            empty[:] = [title for title, expr in queries.items() if not query(expr)]
            return not empty

        flowing = time.monotonic()
        try:
            wait_for(every_query_has_series, 120, "every dashboard query to return series", every=2)
        except TimeoutError as exc:
            raise AssertionError(f"dashboard queries without series while traffic flows: {empty}") from exc
        assert storefront.is_alive()  # traffic was flowing all along

        targets = http_json(f"{api}/targets")["data"]["activeTargets"]
        assert sorted((t["labels"]["job"], t["health"]) for t in targets) == [
            ("modelwatch-monitor", "up"), ("modelwatch-serve", "up"), ("modelwatch-serve", "up")
        ]  # fmt: skip
        groups = http_json(f"{api}/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 14 and all(r["health"] == "ok" for r in rules), rules
        served = query("modelwatch:serve_predictions:rate1m")
        assert [s["metric"]["model_version"] for s in served] == [version]
        print(
            f"{len(queries)} dashboard queries, all with series {time.monotonic() - flowing:.1f} s after the "
            f"traffic started; {len(rules)} rules healthy"
        )
    finally:
        stop.set()
        if storefront is not None:
            storefront.join(60)
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        monitor.stop()
