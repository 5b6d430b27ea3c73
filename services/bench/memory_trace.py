"""Where a process's memory goes over a long run: ``tracemalloc`` snapshots taken every so often inside it,
and the allocation sites that grew most between two of them.

``modelwatch bench --soak --trace-memory`` starts the monitor with ``--trace-memory DIR``; the monitor calls
:func:`start_tracing` before it builds anything, and a daemon thread dumps a snapshot into ``DIR`` every
``every_s`` seconds, named by the seconds since tracing began. After the run, :func:`growth` compares the
first snapshot taken after the warm-up with the last one. Only traces are kept, never the objects: a
snapshot costs the process a pause of a fraction of a second, and tracing itself makes every allocation
slower (Python's docs measure about 2x with one frame), so a traced run's CPU figures are not the
untraced process's; its memory figures are.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Frames kept per allocation: enough to tell which caller of a shared helper allocates.
FRAMES = 4
SUFFIX = ".tracemalloc"
ROOT = Path(__file__).resolve().parents[2]


def start_tracing(directory: Path, every_s: float) -> threading.Thread:
    """Trace this process's allocations; dump a snapshot into ``directory`` every ``every_s`` seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    began = time.monotonic()
    own = (
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    )

    def dump_forever() -> None:
        wake = threading.Event()  # never set: a wait with a timeout is the clock
        while True:
            wake.wait(every_s)
            snapshot = tracemalloc.take_snapshot().filter_traces(own)
            name = f"snapshot-{time.monotonic() - began:08.0f}"
            partial = directory / f".{name}"
            snapshot.dump(str(partial))
            partial.rename(directory / f"{name}{SUFFIX}")  # a reader never sees half a file

    thread = threading.Thread(target=dump_forever, name="memory-trace", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class Site:
    """One allocation site (file and line) and how much more it held at the end than at the start."""

    where: str
    grown_kb: float
    held_kb: float
    blocks_grown: int
    #: The call chain of its largest growth (innermost last), to tell callers of a shared helper apart.
    via: list[str]


def snapshots(directory: Path) -> list[tuple[float, Path]]:
    """The snapshots in ``directory`` as (wall-clock time written, path), oldest first."""
    found = [(p.stat().st_mtime, p) for p in directory.glob(f"snapshot-*{SUFFIX}")]
    return sorted(found)


def growth(directory: Path, since: float, top: int = 12) -> dict[str, Any] | None:
    """The ``top`` sites that grew most from the first snapshot written at or after ``since`` (a wall-clock
    time) to the last; ``None`` if fewer than two such snapshots exist."""
    taken = [(t, p) for t, p in snapshots(directory) if t >= since]
    if len(taken) < 2:
        return None
    (t0, first_path), (t1, last_path) = taken[0], taken[-1]
    first, last = tracemalloc.Snapshot.load(str(first_path)), tracemalloc.Snapshot.load(str(last_path))
    chains: dict[str, tuple[int, list[str]]] = {}
    for stat in last.compare_to(first, "traceback"):
        if stat.size_diff <= 0:
            continue
        where = _where(stat.traceback[-1])
        if where not in chains or stat.size_diff > chains[where][0]:
            chains[where] = (stat.size_diff, [_where(frame) for frame in stat.traceback])
    sites = [
        Site(
            where=_where(stat.traceback[0]),
            grown_kb=stat.size_diff / 1024,
            held_kb=stat.size / 1024,
            blocks_grown=stat.count_diff,
            via=chains.get(_where(stat.traceback[0]), (0, []))[1],
        )
        for stat in last.compare_to(first, "lineno")[:top]
    ]
    traced = sum(s.size for s in last.statistics("filename")) - sum(
        s.size for s in first.statistics("filename")
    )
    return {
        "from_s": round(t0 - since, 1),
        "minutes": round((t1 - t0) / 60, 2),
        "traced_grown_mb": traced / 2**20,
        "sites": [asdict(site) for site in sites],
    }


def _where(frame: tracemalloc.Frame) -> str:
    """``file:line``, from the project's root or from the installed package on."""
    path = Path(frame.filename)
    if path.is_relative_to(ROOT):
        return f"{path.relative_to(ROOT)}:{frame.lineno}"
    parts = path.parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return f"{'/'.join(parts[-3:])}:{frame.lineno}"
