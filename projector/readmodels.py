"""Read-model declarations: plain modules in the repository's ``tables/`` folder.

A read model module defines:

- ``NAME``: the table name (``[a-z][a-z0-9_]*``);
- ``DESCRIPTION``: one line for ``GET /tables``;
- ``HANDLES``: the event types its fold handles (others are ignored);
- ``fold(state, event) -> state``: a pure function, no Faust, no Kafka;
- optionally ``INITIAL``: the state before the first event (default ``None``);
- optionally ``key(event) -> str``: the row key (default: the aggregate id).

The folder is loaded by path, module by module, under the package name
``projector_tables`` - never as ``tables``, which belongs to PyTables.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

PACKAGE = "projector_tables"
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


class ReadModelError(Exception):
    """A module in tables/ does not declare a usable read model."""


@dataclass(frozen=True)
class ReadModel:
    name: str
    description: str
    handles: frozenset[str]
    fold: Callable[[Any, Any], Any]
    initial: Any = None
    key: Optional[Callable[[Any], str]] = None
    module: Optional[ModuleType] = None

    @property
    def keyed_by_aggregate(self) -> bool:
        return self.key is None

    def initial_state(self) -> Any:
        return copy.deepcopy(self.initial)


def default_tables_dir() -> Path:
    """``$PROJECTOR_TABLES_DIR``, else the ``tables/`` folder beside the package."""
    env = os.environ.get("PROJECTOR_TABLES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "tables"


def _load_module(path: Path) -> ModuleType:
    if PACKAGE not in sys.modules:
        pkg = ModuleType(PACKAGE)
        pkg.__path__ = []  # a namespace for the loaded read models only
        sys.modules[PACKAGE] = pkg
    name = f"{PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReadModelError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ReadModelError(f"{path}: failed to import: {exc!r}") from exc
    return module


def read_model_from_module(module: ModuleType, origin: str = "") -> ReadModel:
    where = origin or module.__name__

    def need(attr: str) -> Any:
        if not hasattr(module, attr):
            raise ReadModelError(f"{where}: a read model must define {attr}")
        return getattr(module, attr)

    name = need("NAME")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ReadModelError(f"{where}: NAME must match [a-z][a-z0-9_]*, got {name!r}")
    description = getattr(module, "DESCRIPTION", "") or ""
    if not isinstance(description, str):
        raise ReadModelError(f"{where}: DESCRIPTION must be a string")
    handles = need("HANDLES")
    if (
        isinstance(handles, str)
        or not isinstance(handles, (tuple, list, set, frozenset))
        or not handles
        or not all(isinstance(h, str) for h in handles)
    ):
        raise ReadModelError(f"{where}: HANDLES must be a non-empty tuple of event type names")
    fold = need("fold")
    if not callable(fold):
        raise ReadModelError(f"{where}: fold must be a function (state, event) -> state")
    key = getattr(module, "key", None)
    if key is not None and not callable(key):
        raise ReadModelError(f"{where}: key must be a function (event) -> str")
    return ReadModel(
        name=name,
        description=description,
        handles=frozenset(handles),
        fold=fold,
        initial=getattr(module, "INITIAL", None),
        key=key,
        module=module,
    )


def load_read_models(directory: Optional[Path] = None) -> list[ReadModel]:
    """Load every ``*.py`` module of ``directory`` (sorted) as a read model."""
    directory = Path(directory) if directory is not None else default_tables_dir()
    if not directory.is_dir():
        raise ReadModelError(f"read-model folder {directory} does not exist")
    if (directory / "__init__.py").exists():
        raise ReadModelError(
            f"{directory}/__init__.py must not exist: tables/ is a folder of modules, "
            "not a package named 'tables' (PyTables owns that name)"
        )
    models: list[ReadModel] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        model = read_model_from_module(_load_module(path), str(path))
        if model.name in seen:
            raise ReadModelError(f"{path}: NAME {model.name!r} is already used by {seen[model.name]}")
        seen[model.name] = path
        models.append(model)
    if not models:
        raise ReadModelError(f"no read models found in {directory}")
    return models
