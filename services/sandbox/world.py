"""The storefront world: users, items, what they are shown and what they buy, deterministic by seed.

Training, the simulator and the tests share it. Each user and item has a latent taste vector; each item
has a popularity. The chance that user ``u`` buys candidate ``i`` is

    p(u, i) = sigmoid(BASE_LOGIT + popularity_i + TASTE * <taste_u, taste_i> / sqrt(dim))

so popularity alone predicts part of what sells and personal taste the rest: a collaborative-filtering
model that learns the tastes beats a popularity ranking, and one that cannot see them does not.

The storefront shows each session ``candidates`` distinct items, drawn half by popularity and half
uniformly. Sessions arrive as a Poisson process. With ``drift_at_ms``, tastes and popularity rotate
towards fresh random ones from that time on (``drift_strength`` 0: no change, 1: entirely new tastes), so a
model trained before the drift goes stale after it.

Everything is numpy over whole arrays: a million interactions take a second or two. Random streams are
derived from ``(world seed, call seed, purpose)`` so that, for a given world, the same call with the same
seed always gives the same result, whatever was called before.

The logs it generates are :class:`services.model.interactions.Interactions`, the runtime's training log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from schemas.errors import ModelError
from services.model.interactions import Interactions

#: Default start of generated time: 2026-01-01T00:00:00Z, fixed so that generated logs are reproducible.
EPOCH_MS = 1_767_225_600_000
#: Sessions per second when a caller gives no rate.
DEFAULT_RATE_PER_S = 10.0
BASE_LOGIT = -3.4
TASTE = 1.6
POPULARITY_SPREAD = 0.7
#: Share of candidate slots filled by popularity (the rest uniformly): storefronts show bestsellers more.
EXPOSURE_BY_POPULARITY = 0.5
#: Gumbel draws per chunk when sampling candidates, bounding memory whatever the catalogue size.
_CHUNK_CELLS = 4_000_000

_PURPOSE_SESSIONS = 1
_PURPOSE_PURCHASES = 2
_PURPOSE_INTERACTIONS = 3


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i}" for i in range(n)])


def _parse_ids(ids: np.ndarray, prefix: str, n: int) -> np.ndarray:
    """Indices of ``"<prefix><n>"`` ids; -1 for ids this world does not have."""
    flat = np.asarray(ids, dtype=str)
    out = np.full(flat.shape, -1, dtype=np.int64)
    if flat.size == 0:
        return out
    rest = np.char.replace(flat, prefix, "", count=1)
    length = np.char.str_len(rest)
    # Up to 12 digits after the prefix: anything longer is not one of our ids (and would overflow).
    ok = np.char.startswith(flat, prefix) & np.char.isdigit(rest) & (length > 0) & (length <= 12)
    if ok.any():
        values = rest[ok].astype(np.int64)
        values[values >= n] = -1
        out[ok] = values
    return out


@dataclass
class Sessions:
    """Storefront sessions: who came when, and which candidates they were shown.

    ``user_index`` and ``item_index`` are the world's indices (-1 for ids it does not know); they are
    filled when the world made the sessions and derived from the ids otherwise.
    """

    user_ids: list[str]
    candidates: list[list[str]]
    ts: np.ndarray
    user_index: np.ndarray | None = None
    #: (sessions, candidates) when every session has the same number of candidates.
    item_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True, eq=False)
class World:
    """A synthetic storefront. Build one with :meth:`generate`."""

    seed: int
    user_taste: np.ndarray
    item_taste: np.ndarray
    popularity: np.ndarray
    activity: np.ndarray
    drift_at_ms: int | None = None
    drift_strength: float = 0.0
    #: Tastes and popularity from ``drift_at_ms`` on (the same arrays when there is no drift).
    user_taste_after: np.ndarray | None = None
    item_taste_after: np.ndarray | None = None
    popularity_after: np.ndarray | None = None
    user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    @classmethod
    def generate(
        cls,
        seed: int = 0,
        n_users: int = 2000,
        n_items: int = 500,
        dim: int = 8,
        drift_at_ms: int | None = None,
        drift_strength: float = 0.5,
    ) -> World:
        if n_users < 1 or n_items < 2 or dim < 1:
            raise ModelError(
                f"a world needs users, at least two items and a taste dimension, not "
                f"{n_users}/{n_items}/{dim}"
            )
        if not 0.0 <= drift_strength <= 1.0:
            raise ModelError(f"drift strength must be in [0, 1], not {drift_strength}")
        rng = np.random.default_rng([seed, 0])
        user_taste = rng.standard_normal((n_users, dim))
        item_taste = rng.standard_normal((n_items, dim))
        popularity = rng.normal(0.0, POPULARITY_SPREAD, n_items)
        activity = rng.lognormal(0.0, 0.6, n_users)
        # Drawn whether or not there is drift, so a world's pre-drift part does not depend on the option.
        new_user = rng.standard_normal((n_users, dim))
        new_item = rng.standard_normal((n_items, dim))
        new_pop = rng.normal(0.0, POPULARITY_SPREAD, n_items)
        if drift_at_ms is not None and drift_strength > 0:
            # A rotation towards fresh draws keeps the variances, so only *which* items sell changes.
            angle = drift_strength * math.pi / 2
            c, s = math.cos(angle), math.sin(angle)
            after = (
                c * user_taste + s * new_user,
                c * item_taste + s * new_item,
                c * popularity + s * new_pop,
            )
        else:
            after = (user_taste, item_taste, popularity)
        return cls(
            seed=seed,
            user_taste=user_taste,
            item_taste=item_taste,
            popularity=popularity,
            activity=activity / activity.sum(),
            drift_at_ms=drift_at_ms,
            drift_strength=drift_strength if drift_at_ms is not None else 0.0,
            user_taste_after=after[0],
            item_taste_after=after[1],
            popularity_after=after[2],
            user_ids=_ids("u-", n_users),
            item_ids=_ids("i-", n_items),
        )

    @property
    def n_users(self) -> int:
        return len(self.user_taste)

    @property
    def n_items(self) -> int:
        return len(self.item_taste)

    def _rng(self, seed: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, seed, purpose])

    # ------------------------------------------------------------------ sessions and ground truth
    def sessions(
        self,
        n: int,
        seed: int,
        candidates: int = 20,
        start_ms: int = EPOCH_MS,
        rate_per_s: float | None = None,
    ) -> Sessions:
        """``n`` sessions from ``start_ms`` on, Poisson arrivals at ``rate_per_s`` (default 10/s)."""
        users, items, ts = self._session_arrays(n, seed, candidates, start_ms, rate_per_s)
        return Sessions(
            user_ids=self.user_ids[users].tolist(),
            candidates=self.item_ids[items].tolist(),
            ts=ts,
            user_index=users,
            item_index=items,
        )

    def _session_arrays(
        self, n: int, seed: int, candidates: int, start_ms: int, rate_per_s: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n < 0:
            raise ModelError(f"cannot make {n} sessions")
        if not 1 <= candidates <= self.n_items:
            raise ModelError(f"candidates must be in [1, {self.n_items}], not {candidates}")
        rate = DEFAULT_RATE_PER_S if rate_per_s is None else rate_per_s
        if rate <= 0:
            raise ModelError(f"rate_per_s must be positive, not {rate}")
        rng = self._rng(seed, _PURPOSE_SESSIONS)
        gaps = rng.exponential(1000.0 / rate, n)
        ts = start_ms + np.floor(np.cumsum(gaps)).astype(np.int64)
        users = rng.choice(self.n_users, size=n, p=self.activity)
        exposure = np.exp(self.popularity)
        weights = (
            EXPOSURE_BY_POPULARITY * exposure / exposure.sum() + (1 - EXPOSURE_BY_POPULARITY) / self.n_items
        )
        log_w = np.log(weights)
        items = np.empty((n, candidates), dtype=np.int64)
        # Gumbel top-k: distinct items per row, each drawn with probability proportional to its weight.
        step = max(1, _CHUNK_CELLS // self.n_items)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            keys = log_w - np.log(-np.log(rng.random((hi - lo, self.n_items))))
            top = np.argpartition(-keys, candidates - 1, axis=1)[:, :candidates]
            items[lo:hi] = top
        return users, items, ts

    def _indices(self, sessions: Sessions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index per session, flat item index, offsets into it) for any sessions, even foreign ones."""
        sizes = np.fromiter((len(c) for c in sessions.candidates), dtype=np.int64, count=len(sessions))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if sessions.user_index is not None:
            users = np.asarray(sessions.user_index, dtype=np.int64)
        else:
            users = _parse_ids(np.asarray(sessions.user_ids, dtype=str), "u-", self.n_users)
        if sessions.item_index is not None and sessions.item_index.size == offsets[-1]:
            items = np.asarray(sessions.item_index, dtype=np.int64).reshape(-1)
        else:
            flat = np.array([i for c in sessions.candidates for i in c], dtype=str)
            items = _parse_ids(flat, "i-", self.n_items)
        return users, items, offsets

    def probabilities(self, sessions: Sessions) -> list[np.ndarray]:
        """The TRUE purchase probability of each candidate at its session's time (0 for unknown ids)."""
        users, items, offsets = self._indices(sessions)
        if len(sessions) == 0:
            return []
        flat = self._flat_probabilities(users, items, offsets, np.asarray(sessions.ts, dtype=np.int64))
        return np.split(flat, offsets[1:-1])

    def _flat_probabilities(
        self, users: np.ndarray, items: np.ndarray, offsets: np.ndarray, ts: np.ndarray
    ) -> np.ndarray:
        sizes = np.diff(offsets)
        u = np.repeat(users, sizes)
        row_ts = np.repeat(ts, sizes)
        known = (u >= 0) & (items >= 0)
        uk, ik = np.where(known, u, 0), np.where(known, items, 0)
        p = self._p(uk, ik, self.user_taste, self.item_taste, self.popularity)
        if self.drift_at_ms is not None and self.user_taste_after is not None:
            after = row_ts >= self.drift_at_ms
            if after.any():
                assert self.item_taste_after is not None and self.popularity_after is not None
                p_after = self._p(
                    uk[after], ik[after], self.user_taste_after, self.item_taste_after, self.popularity_after
                )
                p[after] = p_after
        p[~known] = 0.0
        return p

    def _p(
        self, u: np.ndarray, i: np.ndarray, user: np.ndarray, item: np.ndarray, pop: np.ndarray
    ) -> np.ndarray:
        affinity = np.einsum("nd,nd->n", user[u], item[i]) / math.sqrt(user.shape[1])
        return _sigmoid(BASE_LOGIT + pop[i] + TASTE * affinity)

    def purchases(self, sessions: Sessions, seed: int) -> list[list[str]]:
        """What each session's user buys among its candidates, drawn from the true tastes at its time."""
        users, items, offsets = self._indices(sessions)
        bought = self._draw(users, items, offsets, np.asarray(sessions.ts, dtype=np.int64), seed)
        flat = [i for c in sessions.candidates for i in c]
        hits = np.flatnonzero(bought)
        # Group the (few) purchases by session: searchsorted maps each flat position to its session.
        owner = np.searchsorted(offsets, hits, side="right") - 1
        out: list[list[str]] = [[] for _ in range(len(sessions))]
        for s, pos in zip(owner.tolist(), hits.tolist(), strict=True):
            out[s].append(flat[pos])
        return out

    def _draw(
        self,
        users: np.ndarray,
        items: np.ndarray,
        offsets: np.ndarray,
        ts: np.ndarray,
        seed: int,
        purpose: int = _PURPOSE_PURCHASES,
    ) -> np.ndarray:
        p = self._flat_probabilities(users, items, offsets, ts)
        rng = self._rng(seed, purpose)
        drawn: np.ndarray = rng.random(len(p)) < p
        return drawn

    def interactions(
        self,
        n_sessions: int,
        seed: int,
        candidates: int = 20,
        start_ms: int = EPOCH_MS,
        rate_per_s: float | None = None,
    ) -> Interactions:
        """A training log of ``n_sessions`` sessions: one row per shown candidate, with its label."""
        users, items, ts = self._session_arrays(n_sessions, seed, candidates, start_ms, rate_per_s)
        offsets = np.arange(n_sessions + 1, dtype=np.int64) * candidates
        flat_items = items.reshape(-1)
        bought = self._draw(users, flat_items, offsets, ts, seed, _PURPOSE_INTERACTIONS)
        return Interactions(
            user_id=np.repeat(self.user_ids[users], candidates),
            item_id=self.item_ids[flat_items],
            purchased=bought,
            ts=np.repeat(ts, candidates),
            session=np.repeat(np.arange(n_sessions, dtype=np.int64), candidates),
        )
