"""Where the code of a user's own model lives, and reading the model file a user wrote.

A pickled model names its class by module (``shop_knn.ShopKNN``); unpickling imports that module. Users'
modules live outside modelwatch's packages, so whoever unpickles (a replica, ``modelwatch models
register``) must be able to import them. One way is supported and tested: the ``model_path`` setting
(``MODELWATCH_MODEL_PATH``, directories joined by ``:``), whose directories are put first on ``sys.path``
just before unpickling. (A package installed in the replicas' environment imports too, with nothing to
set.) The registry only unpickles a version after its digest and signature verified, so a directory on
``model_path`` gives nobody a way to run code through a forged version.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from os import PathLike
from typing import Any

import fsspec
import joblib

from schemas.errors import ModelError


def use_model_path(directories: Sequence[str | PathLike[str]]) -> None:
    """Put ``directories`` first on ``sys.path``, in order (each once; already there: moved first)."""
    for directory in reversed([str(d) for d in directories]):
        while directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)


def read_model_file(path: str, model_path: Sequence[str | PathLike[str]] = ()) -> Any:
    """Unpickle the joblib file a user wrote (a path or fsspec URL): their own artifact, which they trust.

    Raises :class:`ModelError` naming the file and what failed (missing, a module that cannot be imported
    with ``model_path``, not joblib)."""
    use_model_path(model_path)
    try:
        with fsspec.open(path, "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    try:
        return joblib.load(io.BytesIO(raw))
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"cannot load model file {path}: its module {exc.name!r} cannot be imported "
            "(add its directory to model_path, or install it)"
        ) from exc
    except Exception as exc:  # anything else pickle or joblib raise: not a model file
        raise ModelError(f"cannot load model file {path}: {type(exc).__name__}: {exc}") from exc
