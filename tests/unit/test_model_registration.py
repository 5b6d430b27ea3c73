"""Registering a model of one's own (``modelwatch models register``) and where its code lives
(``model_path``): the user's module is written outside the project's packages, in the test's directory."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest

from schemas.errors import ModelError, RegistryError, VerificationError
from services.cli import main
from services.config import load_settings
from services.model.evaluation import evaluate
from services.model.popularity import Popularity
from services.model.registration import check_model, register_model
from services.registry import Registry
from services.sandbox.world import World

MODULE = """
import numpy as np
from pathlib import Path

from services.model.protocol import ModelBase

IMPORTED = Path(__file__).with_suffix(".imported")
IMPORTED.write_text("imported")  # lets a test see whether the module was ever imported


class Rates(ModelBase):
    '''Each item's purchase rate in the data it was fitted on; a wrong one scores {factor} times that.'''

    def __init__(self, factor=1.0):
        self.factor = factor

    def fit(self, log):
        items, rows = np.unique(log.item_id, return_inverse=True)
        rate = np.bincount(rows, weights=log.purchased) / np.bincount(rows)
        self.rates_ = dict(zip(items.tolist(), rate.tolist()))
        return self

    def score_batch(self, user_ids, candidates):
        return [self.factor * np.array([self.rates_.get(i, 0.1) for i in c]) for c in candidates]
"""


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """model_path edits sys.path: each test gets a copy, restored after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(5, n_users=150, n_items=60)


class UserCode:
    """A user's module in a directory of its own (not importable until that directory is on a path)."""

    def __init__(self, root: Path, factor: float = 1.0) -> None:
        self.name = f"user_rates_{uuid.uuid4().hex[:8]}"
        self.directory = root / "user-code"
        self.directory.mkdir(exist_ok=True)
        self.path = self.directory / f"{self.name}.py"
        self.path.write_text(textwrap.dedent(MODULE.format(factor=factor)))
        self.imported = self.path.with_suffix(".imported")
        self.factor = factor

    def model(self, log: Any) -> Any:
        """Import the module, fit its model, then forget the module (as a fresh process would not know it)."""
        sys.path.insert(0, str(self.directory))
        try:
            module = __import__(self.name)
            return module.Rates(self.factor).fit(log)
        finally:
            sys.path.remove(str(self.directory))

    def forget(self) -> None:
        sys.modules.pop(self.name, None)
        self.imported.unlink(missing_ok=True)


@pytest.fixture
def user_code(tmp_path: Path) -> Iterator[UserCode]:
    code = UserCode(tmp_path)
    yield code
    code.forget()


def test_register_a_file_checks_evaluates_stores_and_prints_the_manifest(
    tmp_path: Path,
    world: World,
    user_code: UserCode,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = world.interactions(1500, seed=1)
    earlier, held = log.split_by_time(0.2)
    model = user_code.model(earlier)
    joblib.dump(model, tmp_path / "rates.joblib")
    log.save(str(tmp_path / "log.npz"))
    user_code.forget()
    monkeypatch.setenv("MODELWATCH_MODEL_PATH", str(user_code.directory))

    args = ["models", "register", str(tmp_path / "rates.joblib"), "--evaluate", str(tmp_path / "log.npz")]
    assert main([*args, "--json"]) == 0
    manifest = orjson.loads(capsys.readouterr().out)
    assert manifest["model"] == {"class": f"{user_code.name}.Rates"}
    assert manifest["data"]["source"] == "registered"
    assert manifest["metrics"] == evaluate(model, held, 5)
    assert manifest["baseline"] == evaluate(Popularity(k=5).fit(earlier), held, 5)
    assert manifest["metrics"]["f1"] is not None

    registry = Registry.from_settings(load_settings())
    loaded = registry.load(manifest["version"])
    candidates = [held.item_id[:5].tolist()]
    assert np.array_equal(loaded.score_batch(["u"], candidates)[0], model.score_batch(["u"], candidates)[0])
    assert main(["models", "register", str(tmp_path / "rates.joblib")]) == 0
    version = capsys.readouterr().out.strip()
    assert (
        registry.manifest(version).metrics == {} and registry.manifest(version).parent == manifest["version"]
    )
    assert main(["models", "show", version]) == 0
    assert "registered" in capsys.readouterr().out


class NoScore:
    pass


class TooHigh:
    def score_batch(self, user_ids: Any, candidates: Any) -> list[Any]:
        return [np.full(len(c), 2.0) for c in candidates]


class Raises:
    def score_batch(self, user_ids: Any, candidates: Any) -> list[Any]:
        if "probe-user-3" in user_ids:
            raise KeyError("probe-user-3")
        return [np.full(len(c), 0.5) for c in candidates]


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (NoScore(), "NoScore is not a model: it has no score_batch method"),
        (TooHigh(), "TooHigh fails the model protocol on 8 of 8 generated requests"),
        (TooHigh(), "score_batch returned a score outside [0, 1]"),
        (Raises(), "fails the model protocol on 1 of 8 generated requests (user 'probe-user-3'): KeyError"),
    ],
)
def test_a_model_out_of_protocol_is_refused_with_one_line_and_nothing_stored(
    tmp_path: Path, model: Any, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    joblib.dump(model, tmp_path / "model.joblib")
    assert main(["models", "register", str(tmp_path / "model.joblib")]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert Registry.from_settings(load_settings()).versions() == []


def test_a_file_whose_module_cannot_be_imported_names_the_module(
    tmp_path: Path, world: World, user_code: UserCode, capsys: pytest.CaptureFixture[str]
) -> None:
    joblib.dump(user_code.model(world.interactions(300, seed=2)), tmp_path / "rates.joblib")
    user_code.forget()
    assert main(["models", "register", str(tmp_path / "rates.joblib")]) == 1
    err = capsys.readouterr().err
    assert f"its module '{user_code.name}' cannot be imported" in err and "model_path" in err
    assert main(["models", "register", str(tmp_path / "missing.joblib")]) == 1
    assert "cannot read model file" in capsys.readouterr().err


def test_a_replica_without_model_path_cannot_load_the_version_and_is_told_the_module(
    tmp_path: Path, world: World, user_code: UserCode
) -> None:
    model = user_code.model(world.interactions(300, seed=2))
    version = Registry(str(tmp_path / "registry")).register(model, metrics={}, data_summary={}).version
    user_code.forget()
    with pytest.raises(RegistryError, match=f"its model's module '{user_code.name}' cannot be imported"):
        Registry(str(tmp_path / "registry")).load(version)
    loaded = Registry(str(tmp_path / "registry"), model_path=[user_code.directory]).load(version)
    assert type(loaded).__module__ == user_code.name


def test_model_path_is_used_only_after_the_version_verified(
    tmp_path: Path, world: World, user_code: UserCode
) -> None:
    model = user_code.model(world.interactions(300, seed=2))
    registry = Registry(str(tmp_path / "registry"), model_path=[user_code.directory])
    version = registry.register(model, metrics={}, data_summary={}).version
    user_code.forget()
    artifact = tmp_path / "registry" / version / "model.joblib"
    artifact.chmod(0o644)
    artifact.write_bytes(artifact.read_bytes().replace(b"Rates", b"Ratez"))
    with pytest.raises(VerificationError, match="does not match"):
        registry.load(version)
    assert not user_code.imported.exists()  # nothing was unpickled, so the user's module never ran
    assert str(user_code.directory) not in sys.path


def test_model_path_from_the_environment_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELWATCH_MODEL_PATH", f"/opt/models:{tmp_path}")
    assert load_settings().model_path == [Path("/opt/models"), tmp_path]
    monkeypatch.delenv("MODELWATCH_MODEL_PATH")
    (tmp_path / "modelwatch.toml").write_text('model_path = ["/srv/shop-models"]\n')
    monkeypatch.setenv("MODELWATCH_CONFIG", str(tmp_path / "modelwatch.toml"))
    assert load_settings().model_path == [Path("/srv/shop-models")]


def test_the_probe_uses_known_ids_when_given_a_log(world: World) -> None:
    class Known:
        """Raises on an unknown user, as a careless model would: registration says so."""

        def __init__(self, users: set[str]) -> None:
            self.users = users

        def score_batch(self, user_ids: Any, candidates: Any) -> list[Any]:
            unknown = [u for u in user_ids if u not in self.users]
            if unknown:
                raise KeyError(unknown[0])
            return [np.full(len(c), 0.5) for c in candidates]

    log = world.interactions(300, seed=3)
    with pytest.raises(ModelError, match="fails the model protocol on 1 of 8 generated requests"):
        check_model(Known(set(log.user_id.tolist())), log=log)


def test_the_python_api_takes_the_object_itself(tmp_path: Path, world: World) -> None:
    log = world.interactions(1500, seed=1)
    model = Popularity(k=5).fit(log.split_by_time(0.2)[0])
    manifest = register_model(load_settings(registry=str(tmp_path / "r")), model, evaluate=log)
    assert manifest.data["evaluated_on"] == "given" and manifest.metrics["f1"] is not None
