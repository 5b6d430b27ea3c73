"""The real Prometheus tools, as Debian packages them (``prometheus`` 2.42, ``prometheus-alertmanager``
0.25): found on the PATH, or a clear failure that says how to install them (``make monitoring-tools``,
which ``make test`` runs first). Never a silent skip: CI must run these tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
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


class Alertmanager:
    """A real Alertmanager on 127.0.0.1:``port``, clustering off, routing everything to a null receiver."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"alertmanager-{port}.log"

    def start(self, timeout: float = 30.0) -> None:
        config = self.workdir / "alertmanager.yml"
        config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
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
