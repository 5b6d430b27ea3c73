"""The real Prometheus tools, as Debian packages them (``prometheus`` 2.42, ``prometheus-alertmanager``
0.25): found on the PATH, or a clear failure that says how to install them (``make monitoring-tools``,
which ``make test`` runs first). Never a silent skip: CI must run these tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.sandbox.processes import wait_for

INSTALL = (
    "run `make monitoring-tools` (as root: apt-get install -y prometheus prometheus-alertmanager; Debian "
    "bookworm packages Prometheus 2.42 and Alertmanager 0.25)"
)


def binary(name: str) -> str:
    """The path of a Prometheus tool, or a failed test naming how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL}", pytrace=False)
    return path


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:  # refused, or HTTPError (a subclass): not ready
        return None


class Webhook:
    """An HTTP receiver for Alertmanager's webhook notifications, as an ops team's pager would get them:
    each notification's alerts (status, labels, annotations) with the time it arrived (this clock, s)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.received: list[tuple[float, dict[str, Any]]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                received.extend((now, alert) for alert in body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notified(self, version: str, status: str) -> tuple[float, dict[str, Any]] | None:
        """The first notification of ``version``'s alert with ``status`` (firing, resolved)."""
        return next(
            ((t, a) for t, a in list(self.received)
             if a["labels"].get("model_version") == version and a["status"] == status),
            None,
        )  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """A real Alertmanager on 127.0.0.1:``port``, clustering off, notifying ``webhook`` (if given) at once
    of every group's firing and resolved alerts."""

    def __init__(self, port: int, workdir: Path, webhook: Webhook | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.webhook = webhook
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"alertmanager-{port}.log"

    def start(self, timeout: float = 30.0) -> None:
        config = self.workdir / "alertmanager.yml"
        receiver: dict[str, Any] = {"name": "test"}
        if self.webhook is not None:
            receiver["webhook_configs"] = [{"url": self.webhook.url, "send_resolved": True}]
        route = {"receiver": "test", "group_by": ["alertname", "model_version"], "group_wait": "0s",
                 "group_interval": "1s", "repeat_interval": "1h"}  # fmt: skip
        config.write_text(json.dumps({"route": route, "receivers": [receiver]}))  # JSON is YAML
        argv = [
            binary("prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={self.workdir / f'alertmanager-data-{self.port}'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # one instance: no gossip port to collide with the others'
        ]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: http_status(f"{self.url}/-/ready") == 200, timeout, "Alertmanager to be ready")

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts (resolved ones leave this list)."""
        result: list[dict[str, Any]] = http_json(f"{self.url}/api/v2/alerts")
        return result

    def received(self, status: str) -> float:
        """How many alerts of ``status`` (firing, resolved) it has received, from its own metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            body = response.read().decode()
        return sum(
            float(line.rpartition(" ")[2])
            for line in body.splitlines()
            if line.startswith("alertmanager_alerts_received_total{") and f'status="{status}"' in line
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
