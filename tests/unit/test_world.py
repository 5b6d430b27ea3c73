"""The storefront world: deterministic, vectorized, faithful to its true tastes, and drifting on demand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.errors import ModelError
from services.model.interactions import Interactions
from services.sandbox.world import EPOCH_MS, Sessions, World


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(3, n_users=200, n_items=80)


def test_same_seed_same_world_sessions_and_purchases(world: World) -> None:
    again = World.generate(3, n_users=200, n_items=80)
    assert np.array_equal(world.user_taste, again.user_taste)
    a, b = world.sessions(50, seed=9), again.sessions(50, seed=9)
    assert a.user_ids == b.user_ids and a.candidates == b.candidates
    assert np.array_equal(a.ts, b.ts)
    assert world.purchases(a, seed=4) == again.purchases(b, seed=4)
    c = world.sessions(50, seed=10)
    assert c.candidates != a.candidates
    log1, log2 = world.interactions(100, seed=1), again.interactions(100, seed=1)
    assert np.array_equal(log1.purchased, log2.purchased) and np.array_equal(log1.item_id, log2.item_id)


def test_sessions_have_distinct_known_candidates_and_poisson_times(world: World) -> None:
    s = world.sessions(400, seed=1, candidates=20, start_ms=5_000, rate_per_s=50.0)
    assert len(s) == 400
    assert all(len(c) == 20 == len(set(c)) for c in s.candidates)
    assert all(u.startswith("u-") for u in s.user_ids)
    assert {i for c in s.candidates for i in c} <= set(world.item_ids.tolist())
    assert s.ts[0] >= 5_000 and np.all(np.diff(s.ts) >= 0)
    # 400 arrivals at 50/s span about 8 s.
    assert 6_000 < s.ts[-1] - 5_000 < 10_000


def test_purchases_follow_the_true_probabilities(world: World) -> None:
    s = world.sessions(3000, seed=2)
    p = np.concatenate(world.probabilities(s))
    bought = world.purchases(s, seed=5)
    assert all(set(b) <= set(c) for b, c in zip(bought, s.candidates, strict=True))
    labels = np.concatenate([np.isin(c, b) for c, b in zip(s.candidates, bought, strict=True)]).astype(float)
    assert abs(labels.mean() - p.mean()) < 0.01
    # Likely items are bought far more often than unlikely ones: the labels carry the tastes.
    high, low = p > np.quantile(p, 0.9), p < np.quantile(p, 0.5)
    assert labels[high].mean() > 4 * labels[low].mean()


def test_sessions_from_elsewhere_are_judged_by_their_ids(world: World) -> None:
    s = world.sessions(30, seed=3)
    foreign = Sessions(list(s.user_ids), [list(c) for c in s.candidates], s.ts.copy())
    assert world.purchases(foreign, seed=1) == world.purchases(s, seed=1)
    strangers = Sessions(["u-99999", "nobody"], [["i-1", "zzz"], ["i-2"]], np.array([EPOCH_MS, EPOCH_MS]))
    probabilities = world.probabilities(strangers)
    assert all((p == 0).all() for p in probabilities)
    assert world.purchases(strangers, seed=1) == [[], []]


def test_drift_changes_tastes_only_from_its_time() -> None:
    drift_at = EPOCH_MS + 60_000
    stable = World.generate(5, n_users=100, n_items=50)
    drifting = World.generate(5, n_users=100, n_items=50, drift_at_ms=drift_at, drift_strength=1.0)
    before = stable.sessions(200, seed=1, start_ms=EPOCH_MS, rate_per_s=100)
    assert before.ts[-1] < drift_at
    assert np.allclose(
        np.concatenate(stable.probabilities(before)), np.concatenate(drifting.probabilities(before))
    )
    after = stable.sessions(2000, seed=1, start_ms=drift_at, rate_per_s=100)
    p_old = np.concatenate(stable.probabilities(after))
    p_new = np.concatenate(drifting.probabilities(after))
    assert np.corrcoef(p_old, p_new)[0, 1] < 0.3
    half = World.generate(5, n_users=100, n_items=50, drift_at_ms=drift_at, drift_strength=0.5)
    p_half = np.concatenate(half.probabilities(after))
    assert 0.3 < np.corrcoef(p_old, p_half)[0, 1] < 0.95


def test_interactions_are_one_row_per_shown_candidate(world: World) -> None:
    log = world.interactions(500, seed=1, candidates=10)
    assert len(log) == 5000
    assert len(np.unique(log.session)) == 500
    users, candidates, purchased = log.requests()
    assert len(users) == 500 and all(len(c) == 10 for c in candidates)
    assert sum(map(len, purchased)) == int(log.purchased.sum())
    summary = log.summary()
    assert summary["rows"] == 5000 and summary["sessions"] == 500 and 0 < summary["purchase_rate"] < 0.5


def test_split_by_time_holds_out_whole_later_sessions(world: World) -> None:
    log = world.interactions(1000, seed=2)
    early, late = log.split_by_time(0.2)
    assert len(early) + len(late) == len(log)
    assert len(np.unique(late.session)) == 200
    assert early.ts.max() <= late.ts.min()
    assert not set(early.session.tolist()) & set(late.session.tolist())
    with pytest.raises(ModelError, match="held-out"):
        log.split_by_time(1.5)


@pytest.mark.parametrize("url", ["{tmp}/log.npz", "{tmp}/log.csv", "memory://world-test/log.npz"])
def test_logs_round_trip_through_files(world: World, tmp_path: Path, url: str) -> None:
    log = world.interactions(200, seed=4)
    path = url.format(tmp=tmp_path)
    log.save(path)
    back = Interactions.load(path)
    for column in Interactions.COLUMNS:
        assert np.array_equal(getattr(back, column), getattr(log, column)), column


def test_csv_without_sessions_groups_a_users_rows_at_one_instant(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "user_id,item_id,purchased,ts\nu-1,i-1,1,10\nu-1,i-2,0,10\nu-2,i-1,true,10\nu-1,i-3,0,20\n"
    )
    log = Interactions.load(str(path))
    assert log.purchased.tolist() == [True, False, True, False]
    assert len(np.unique(log.session)) == 3
    assert log.session[0] == log.session[1] != log.session[3]


def test_bad_logs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"\*\.npz or \*\.csv"):
        Interactions.load(str(tmp_path / "log.parquet"))
    with pytest.raises(ModelError, match="no interaction log"):
        Interactions.load(str(tmp_path / "missing.npz"))
    (tmp_path / "cols.csv").write_text("user_id,ts\nu-1,1\n")
    with pytest.raises(ModelError, match="lacks column"):
        Interactions.load(str(tmp_path / "cols.csv"))
    # A log is data: an .npz holding pickled objects is refused, not unpickled.
    np.savez(tmp_path / "evil.npz", user_id=np.array([object()], dtype=object))
    with pytest.raises(ModelError, match="cannot read"):
        Interactions.load(str(tmp_path / "evil.npz"))
