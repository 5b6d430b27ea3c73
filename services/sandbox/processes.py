"""Running modelwatch's own commands as child processes: the demo, the benchmark and the fault tests start
replicas and monitors this way, watch their logs, and stop or kill them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy and return it; raise ``TimeoutError`` naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def modelwatch_command() -> list[str]:
    """How to run the ``modelwatch`` command with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "services.cli"]


class ManagedProcess:
    """One ``modelwatch <args>`` child with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*modelwatch_command(), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # a Ctrl-C in the parent's terminal reaches the parent only
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Wait until ``text`` appears in the output; fail early if the process exits first."""

        def seen() -> bool:
            if text in self.log():
                return True
            if not self.running:
                tail = self.log().strip().splitlines()[-3:]
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before '{text}': {tail}")
            return False

        wait_for(seen, timeout, f"{self.name} to log '{text}'")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (finish the batch, commit, close), then SIGKILL after ``timeout``."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
