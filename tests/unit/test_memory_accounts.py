"""The soak's memory accounts: a process's lines say whether live objects or big buffers grew."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
from rich.console import Console

from services.bench.memory_accounts import ACCOUNTS, accounts, accounts_growth, read_accounts
from services.bench.memory_trace import ROOT
from services.bench.soak import accounts_table

#: A process that writes its accounts every 0.2 s; after its first line it keeps 200,000 small objects
#: (Python's live blocks) and 20 buffers of 1 MB, written into, then waits for two more lines. glibc puts a
#: 1 MB block in a mapping of its own or in its heap, depending on its dynamic mmap threshold (raised when a
#: mapped block is freed), so the buffers are looked for in the two together.
ACCOUNTED = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from services.bench.memory_accounts import read_accounts, start_accounting

    out = Path(sys.argv[1])
    start_accounting(out, 0.2)
    pace, deadline = threading.Event(), time.monotonic() + 60
    while not (out.exists() and read_accounts(out)) and time.monotonic() < deadline:
        pace.wait(0.01)
    objects = [object() for _ in range(200_000)]
    buffers = [bytearray(b"x" * 1_000_000) for _ in range(20)]
    while len(read_accounts(out)) < 3 and time.monotonic() < deadline:
        pace.wait(0.01)
    """
)


def test_accounts_see_live_objects_and_big_buffers(tmp_path: Path) -> None:
    script, path = tmp_path / "accounted.py", tmp_path / "accounts.jsonl"
    script.write_text(ACCOUNTED)
    subprocess.run([sys.executable, str(script), str(path)], cwd=ROOT, check=True, timeout=90)
    rows = read_accounts(path)
    assert len(rows) >= 3 and all(set(ACCOUNTS) <= row.keys() for row in rows)
    moved = accounts_growth(path, since=0.0)
    assert moved is not None and moved["readings"] == len(rows)
    change = {name: moved["accounts"][name]["change"] for name in ACCOUNTS}
    assert change["py_blocks"] >= 200_000
    assert change["heap_kb"] + change["mmapped_kb"] >= 20 * 976  # 20 MB from glibc, wherever it put them
    assert change["rss_kb"] >= 20 * 976
    assert accounts_growth(path, since=rows[-1]["t"]) is None  # one reading: nothing to compare


def test_a_cut_line_is_skipped_and_the_table_renders(tmp_path: Path) -> None:
    path = tmp_path / "accounts.jsonl"
    now = accounts()
    lines = [orjson.dumps({"t": t, **now}) for t in (100.0, 160.0)]
    path.write_bytes(b"\n".join(lines) + b'\n{"t": 220.0, "rss_k')  # a writer cut off mid-line
    moved = accounts_growth(path, since=50.0)
    assert moved is not None and moved["readings"] == 2 and moved["minutes"] == 1.0
    assert moved["accounts"]["py_blocks"]["change"] == 0
    console = Console(width=150, record=True)
    table = accounts_table({"memory_accounts": moved})
    assert table is not None
    console.print(table)
    assert "Python's live blocks" in console.export_text()
    assert accounts_table({"memory_accounts": None}) is None
