"""Where a process's memory goes over a long run: ``tracemalloc`` snapshots taken every so often inside it,
and the allocation sites that grew most between two of them.

``modelwatch bench --soak --trace-memory`` starts the monitor with ``--trace-memory DIR``; the monitor calls
:func:`start_tracing` before it builds anything, and a daemon thread dumps a snapshot into ``DIR`` every
``every_s`` seconds, named by the seconds since tracing began: what the process holds, summed by call
chain (a snapshot grouped at once, so the file and the pause stay small). After the run, :func:`growth`
compares the first snapshot taken after the warm-up with the last one. Tracing makes every allocation
slower and keeps a record per live block, so a traced run's CPU and resident memory are not the untraced
process's; what grew, by site, is what this is for.
"""

from __future__ import annotations

import functools
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

#: Frames kept per allocation: enough to tell which caller of a shared helper allocates.
FRAMES = 4
SUFFIX = ".json"
ROOT = Path(__file__).resolve().parents[2]


def start_tracing(directory: Path, every_s: float) -> threading.Thread:
    """Trace this process's allocations; every ``every_s`` seconds write into ``directory`` what is held,
    by call chain (a JSON list of ``{"at": [file:line, ... innermost last], "size", "count"}``)."""
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    began = time.monotonic()

    def dump_forever() -> None:
        wake = threading.Event()  # never set: a wait with a timeout is the clock
        while True:
            wake.wait(every_s)
            # Grouped by call chain at once: a raw snapshot of a million blocks would itself take
            # hundreds of MB in the process it measures. Not filtered: a filter is a Python call per block
            # (a minute of the monitor's time at half a million), and what tracing itself holds is steady.
            held = tracemalloc.take_snapshot().statistics("traceback")
            rows = [
                {"at": [_where(f) for f in stat.traceback], "size": stat.size, "count": stat.count}
                for stat in held
            ]
            name = f"held-{time.monotonic() - began:08.0f}"
            partial = directory / f".{name}"
            partial.write_bytes(orjson.dumps(rows))
            partial.rename(directory / f"{name}{SUFFIX}")  # a reader never sees half a file
            del held, rows  # or the next snapshot would count them

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
    found = [(p.stat().st_mtime, p) for p in directory.glob(f"held-*{SUFFIX}")]
    return sorted(found)


def growth(directory: Path, since: float, top: int = 12) -> dict[str, Any] | None:
    """The ``top`` sites that grew most from the first snapshot written at or after ``since`` (a wall-clock
    time) to the last; ``None`` if fewer than two such snapshots exist."""
    taken = [(t, p) for t, p in snapshots(directory) if t >= since]
    if len(taken) < 2:
        return None
    (t0, first_path), (t1, last_path) = taken[0], taken[-1]
    first, last = _load(first_path), _load(last_path)
    lines: dict[str, list[int]] = {}  # innermost frame -> [grown, held, blocks grown]
    chains: dict[str, tuple[int, tuple[str, ...]]] = {}  # innermost frame -> its largest growth's chain
    for at in first.keys() | last.keys():
        size0, count0 = first.get(at, (0, 0))
        size1, count1 = last.get(at, (0, 0))
        acc = lines.setdefault(at[-1], [0, 0, 0])
        acc[0] += size1 - size0
        acc[1] += size1
        acc[2] += count1 - count0
        if size1 - size0 > chains.get(at[-1], (0, ()))[0]:
            chains[at[-1]] = (size1 - size0, at)
    ranked = sorted(lines.items(), key=lambda kv: -kv[1][0])[:top]
    sites = [
        Site(where, grown / 1024, held / 1024, blocks, list(chains.get(where, (0, (where,)))[1]))
        for where, (grown, held, blocks) in ranked
    ]
    grown_total = sum(size for size, _ in last.values()) - sum(size for size, _ in first.values())
    return {
        "from_s": round(t0 - since, 1),
        "minutes": round((t1 - t0) / 60, 2),
        "traced_grown_mb": grown_total / 2**20,
        "sites": [asdict(site) for site in sites],
    }


def _load(path: Path) -> dict[tuple[str, ...], tuple[int, int]]:
    return {tuple(row["at"]): (row["size"], row["count"]) for row in orjson.loads(path.read_bytes())}


def _where(frame: tracemalloc.Frame) -> str:
    return f"{_file(frame.filename)}:{frame.lineno}"


@functools.cache
def _file(filename: str) -> str:
    """The file from the project's root, or from the installed package, on."""
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    parts = path.parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return "/".join(parts[-3:])
