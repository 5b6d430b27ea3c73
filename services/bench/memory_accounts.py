"""Where a long run's resident memory sits, cheaply: a line of accounts every so often from inside a process.

``tracemalloc`` (:mod:`services.bench.memory_trace`) says which Python allocation sites hold more, but it
slows every allocation and holds a record per block, and it cannot see memory that no live object holds:
a pymalloc arena kept for a few live blocks, glibc's freed-but-kept heap, a C library's buffers. These
accounts cost a few reads a minute, so they can run through a whole soak untraced:

- ``rss_kb``, ``rss_anon_kb``: the process's resident memory, and its anonymous part (``/proc/self/status``);
- ``py_blocks``: the blocks Python's allocator has handed out and not freed (``sys.getallocatedblocks``):
  live Python objects and buffers, by count;
- ``heap_kb``, ``heap_free_kb``, ``mmapped_kb``: glibc's heaps (``mallinfo2``: the main and the threads'
  arenas), the part of them free for reuse, and its chunks mapped on their own (large blocks; C
  libraries' buffers, numpy arrays, big strings);
- ``other_anon_kb``: the anonymous resident memory outside glibc's accounts, mostly Python's own 1 MiB
  arenas (its small objects) and the threads' stacks.

If resident memory grows while ``py_blocks`` stays level, no live object holds the growth: it is arenas
kept by a few long-lived blocks, or glibc's free memory; if ``py_blocks`` grows with it, objects are kept.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

#: The accounts, in the order the soak prints them.
ACCOUNTS = ("rss_kb", "rss_anon_kb", "py_blocks", "heap_kb", "heap_free_kb", "mmapped_kb", "other_anon_kb")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> Any:
    """glibc's ``mallinfo2`` (2.33 on), or ``None`` (another libc)."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def _status_kb(*fields: str) -> dict[str, int]:
    found: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in fields:
                found[name] = int(rest.split()[0])
    return found


def accounts() -> dict[str, int | None]:
    """This process's accounts now (kB, but ``py_blocks``: a count); glibc's are ``None`` without glibc."""
    status = _status_kb("VmRSS", "RssAnon")
    out: dict[str, int | None] = {
        "rss_kb": status.get("VmRSS"),
        "rss_anon_kb": status.get("RssAnon"),
        "py_blocks": sys.getallocatedblocks(),
        "heap_kb": None,
        "heap_free_kb": None,
        "mmapped_kb": None,
        "other_anon_kb": None,
    }
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        heap, mapped = info.arena // 1024, info.hblkhd // 1024
        out["heap_kb"], out["heap_free_kb"], out["mmapped_kb"] = heap, info.fordblks // 1024, mapped
        anon = out["rss_anon_kb"]
        if anon is not None:
            # Heaps may be partly unresident (freed pages given back): this is a floor, not an exact split.
            out["other_anon_kb"] = max(anon - heap - mapped, 0)
    return out


def start_accounting(path: Path, every_s: float) -> threading.Thread:
    """Append a JSON line of :func:`accounts` (with ``t``, the wall-clock time) to ``path`` now and every
    ``every_s`` seconds, from a daemon thread."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_forever() -> None:
        wake = threading.Event()  # never set: a wait with a timeout is the clock
        while True:
            line = orjson.dumps({"t": round(time.time(), 3), **accounts()}) + b"\n"
            with open(path, "ab") as f:  # a line at a time: a reader sees whole lines
                f.write(line)
            wake.wait(every_s)

    thread = threading.Thread(target=write_forever, name="memory-accounts", daemon=True)
    thread.start()
    return thread


def read_accounts(path: Path) -> list[dict[str, Any]]:
    """The lines written so far (a last line cut short is skipped)."""
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return rows


def accounts_growth(path: Path, since: float) -> dict[str, Any] | None:
    """Each account's first and last reading at or after ``since`` (a wall-clock time) and its change;
    ``None`` if fewer than two readings were taken since."""
    rows = [row for row in read_accounts(path) if row["t"] >= since] if path.exists() else []
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    changes = {
        name: {"first": first.get(name), "last": last.get(name), "change": _change(first, last, name)}
        for name in ACCOUNTS
    }
    return {"minutes": round((last["t"] - first["t"]) / 60, 2), "readings": len(rows), "accounts": changes}


def _change(first: dict[str, Any], last: dict[str, Any], name: str) -> int | None:
    a, b = first.get(name), last.get(name)
    return None if a is None or b is None else b - a
