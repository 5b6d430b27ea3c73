"""CPU time of a child process, sampled while it runs, so the CPU spent inside a measured window can be
read afterwards (the window's ends are only known once the outputs have been read back).

Linux only: user + system time of every thread, from ``/proc/<pid>/stat`` (the clock tick is 10 ms, so
windows of a second or more are needed for a 1% reading). And :func:`machine`: what the figures were
measured on.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Any

from services.bench.stats import cpu_between

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU-seconds of ``pid`` so far (all its threads); ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICK


class CpuSampler:
    """Samples a process's cumulative CPU time every ``every`` seconds, in a background thread."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (wall-clock s, CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cpu-{pid}", daemon=True)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu = process_cpu_seconds(self.pid)
            if cpu is None:
                return
            self.samples.append((time.time(), cpu))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> float | None:
        """CPU-seconds spent between two wall-clock instants (seconds)."""
        return cpu_between(self.samples, start, end)


def cpu_pressure_us() -> int | None:
    """Microseconds, since boot, in which some runnable task waited for a CPU (Linux PSI); ``None``
    where the kernel does not say. Over a run, it tells how contended the machine was."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
