"""A benchmark stopped with SIGTERM stops what it started: its replica and monitor do not outlive it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from services import kafka
from services.config import load_settings
from services.sandbox.processes import modelwatch_command, wait_for


def _children_of_run(workdir_parent: Path, bench: int) -> dict[int, str]:
    """Live processes but ``bench`` whose registry (``MODELWATCH_REGISTRY``) is under ``workdir_parent`` ->
    their topic prefix."""
    found: dict[int, str] = {}
    marker = f"MODELWATCH_REGISTRY={workdir_parent}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == bench:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(var.startswith(marker) for var in environ):
            named = dict(var.split(b"=", 1) for var in environ if b"=" in var)
            found[int(entry.name)] = named.get(b"MODELWATCH_TOPIC_PREFIX", b"").decode()
    return found


def test_sigterm_stops_the_soaks_replica_and_monitor(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "MODELWATCH_BOOTSTRAP": kafka_bootstrap, "TMPDIR": str(tmp_path)}
    env.pop("MODELWATCH_TOPIC_PREFIX", None)
    bench = subprocess.Popen(
        [*modelwatch_command(), "bench", "--soak", "--minutes", "5", "--warmup-minutes", "0", "--rate", "20"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    children: dict[int, str] = {}
    try:
        # The soak's replica and monitor started.
        wait_for(
            lambda: len(_children_of_run(tmp_path, bench.pid)) >= 2, 180, "the soak's replica and monitor"
        )
        children = _children_of_run(tmp_path, bench.pid)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(120) == 130  # as Ctrl-C: interrupted, after stopping what it started
        # A stopped child's /proc entry goes once it is reaped (the bench waits for each it stops).
        wait_for(
            lambda: not set(children) & set(_children_of_run(tmp_path, bench.pid)),
            5,
            "the children to be gone",
        )
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
        # Failed: leave nothing of the run behind (each child leads its own session, so killing the
        # bench's group does not reach them), whether or not it was found before the signal.
        for pid in _children_of_run(tmp_path, bench.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    (prefix,) = {p.rsplit(".", 2)[0] for p in children.values()}  # bench-<id>.<area>. -> the run's prefix
    topics = kafka.admin(load_settings(bootstrap=kafka_bootstrap)).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(prefix)]
