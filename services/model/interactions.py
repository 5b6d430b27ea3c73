"""The interaction log: who was shown which candidates, when, and what they bought.

Training, evaluation and the registry's baselines read it; the sandbox's simulated world writes it. Logs are
stored as ``.npz`` (numpy's zip of arrays, read without pickle: fast and safe) or ``.csv`` (header
``session,user_id,item_id,purchased,ts``, for logs exported from elsewhere), through fsspec, so a log may
live on s3:// or hdfs:// as well as on disk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from schemas.errors import ModelError


@dataclass
class Interactions:
    """A training log, one row per (session, candidate): who was shown what, when, and whether they bought.

    ``session`` groups the rows of one request (a session number or a hashed request id) so evaluation can
    score whole requests, exactly as the monitor does.
    """

    user_id: np.ndarray
    item_id: np.ndarray
    purchased: np.ndarray
    ts: np.ndarray
    session: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    COLUMNS = ("session", "user_id", "item_id", "purchased", "ts")

    def __post_init__(self) -> None:
        self.user_id = np.asarray(self.user_id, dtype=str)
        self.item_id = np.asarray(self.item_id, dtype=str)
        self.purchased = np.asarray(self.purchased, dtype=bool)
        self.ts = np.asarray(self.ts, dtype=np.int64)
        n = len(self.user_id)
        if len(self.session) == 0 and n:
            # Without session numbers, a user's rows at one instant are one request.
            keys = np.char.add(np.char.add(self.user_id, "@"), self.ts.astype(str))
            self.session = np.unique(keys, return_inverse=True)[1].astype(np.int64)
        self.session = np.asarray(self.session, dtype=np.int64)
        lengths = {len(self.item_id), len(self.purchased), len(self.ts), len(self.session)}
        if lengths != {n}:
            raise ModelError(f"interaction columns differ in length: {sorted(lengths | {n})}")

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, rows: np.ndarray) -> Interactions:
        """The rows selected by a boolean mask or an index array."""
        return Interactions(
            self.user_id[rows], self.item_id[rows], self.purchased[rows], self.ts[rows], self.session[rows]
        )

    def split_by_time(self, held_out: float) -> tuple[Interactions, Interactions]:
        """(earlier, later): the last ``held_out`` fraction of sessions by time is held out, whole."""
        if not 0 < held_out < 1:
            raise ModelError(f"held-out fraction must be in (0, 1), not {held_out}")
        sessions, first = np.unique(self.session, return_index=True)
        if len(sessions) < 2:
            raise ModelError(f"cannot split {len(sessions)} session(s) into training and held-out parts")
        order = np.argsort(self.ts[first], kind="stable")
        cut = min(len(sessions) - 1, max(1, round(len(sessions) * (1 - held_out))))
        later = np.isin(self.session, sessions[order[cut:]])
        return self.take(~later), self.take(later)

    def requests(self) -> tuple[list[str], list[list[str]], list[list[str]]]:
        """(user per request, candidates per request, purchased per request), requests ordered by time."""
        order = np.lexsort((self.session, self.ts))
        session = self.session[order]
        starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
        users = self.user_id[order][starts].tolist()
        items = np.split(self.item_id[order], starts[1:])
        bought = np.split(self.purchased[order], starts[1:])
        candidates = [list(i.tolist()) for i in items]
        purchased = [list(i[b].tolist()) for i, b in zip(items, bought, strict=True)]
        return users, candidates, purchased

    def summary(self) -> dict[str, Any]:
        """What a manifest records about its training data."""
        n = len(self)
        return {
            "rows": n,
            "sessions": len(np.unique(self.session)) if n else 0,
            "users": len(np.unique(self.user_id)) if n else 0,
            "items": len(np.unique(self.item_id)) if n else 0,
            "purchase_rate": float(self.purchased.mean()) if n else None,
            "ts_from": int(self.ts.min()) if n else None,
            "ts_to": int(self.ts.max()) if n else None,
        }

    @staticmethod
    def concat(parts: Sequence[Interactions]) -> Interactions:
        """One log from several; session numbers are kept apart."""
        offset = 0
        sessions = []
        for p in parts:
            sessions.append(p.session + offset)
            offset += int(p.session.max()) + 1 if len(p) else 0
        return Interactions(
            np.concatenate([p.user_id for p in parts]),
            np.concatenate([p.item_id for p in parts]),
            np.concatenate([p.purchased for p in parts]),
            np.concatenate([p.ts for p in parts]),
            np.concatenate(sessions),
        )

    def save(self, path: str) -> None:
        """Write the log to ``path`` (a file or fsspec URL) as ``.npz`` or ``.csv``, by its suffix."""
        kind = _log_kind(path)
        with fsspec.open(path, "wb") as f:
            if kind == "npz":
                np.savez_compressed(
                    f,
                    session=self.session,
                    user_id=self.user_id,
                    item_id=self.item_id,
                    purchased=self.purchased,
                    ts=self.ts,
                )
            else:
                text = io.TextIOWrapper(f, encoding="utf-8", newline="")
                writer = csv.writer(text)
                writer.writerow(self.COLUMNS)
                writer.writerows(
                    zip(
                        self.session.tolist(),
                        self.user_id.tolist(),
                        self.item_id.tolist(),
                        self.purchased.astype(np.int8).tolist(),
                        self.ts.tolist(),
                        strict=True,
                    )
                )
                text.flush()
                text.detach()

    @classmethod
    def load(cls, path: str) -> Interactions:
        """Read a log written by :meth:`save` (or any CSV with those columns; ``session`` is optional)."""
        kind = _log_kind(path)
        try:
            with fsspec.open(path, "rb") as f:
                if kind == "npz":
                    # allow_pickle=False: a log file is data, never code.
                    with np.load(f, allow_pickle=False) as z:
                        cols = {k: z[k] for k in z.files}
                else:
                    cols = _read_csv(io.TextIOWrapper(f, encoding="utf-8", newline=""))
        except FileNotFoundError as exc:
            raise ModelError(f"no interaction log at {path}") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot read interaction log {path}: {exc}") from exc
        missing = [c for c in ("user_id", "item_id", "purchased", "ts") if c not in cols]
        if missing:
            raise ModelError(f"interaction log {path} lacks column(s) {', '.join(missing)}")
        return cls(
            cols["user_id"],
            cols["item_id"],
            cols["purchased"],
            cols["ts"],
            cols.get("session", np.zeros(0, dtype=np.int64)),
        )


def _log_kind(path: str) -> str:
    name = path.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".csv"):
        return "csv"
    raise ModelError(f"interaction log {path}: name it *.npz or *.csv")


def _read_csv(text: io.TextIOWrapper) -> dict[str, np.ndarray]:
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        raise ValueError("empty file")
    rows = list(reader)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    raw = dict(zip(header, columns, strict=True))
    out: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        if name in ("user_id", "item_id"):
            out[name] = np.array(values, dtype=str)
        elif name == "purchased":
            lowered = np.char.lower(np.array(values, dtype=str))
            out[name] = np.isin(lowered, ["1", "true", "yes"])
        elif name in ("ts", "session"):
            out[name] = np.array(values, dtype=np.int64)
    return out
