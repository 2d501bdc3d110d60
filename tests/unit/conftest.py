"""Fixtures for the unit tests: the repository's read models and module hygiene.

Nothing here touches Kafka or the network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from projector.core.catalog import PACKAGE, ReadModel, load_read_models  # noqa: E402

TABLES_DIR = Path(__file__).resolve().parents[2] / "tables"


@pytest.fixture(scope="session")
def read_models() -> dict[str, Any]:
    """The repository's read models, aggregate-keyed and re-keyed, loaded by path (never ``import tables``)."""
    return {m.name: m for m in load_read_models(TABLES_DIR)}


@pytest.fixture(scope="session")
def accounts(read_models: dict[str, ReadModel]) -> ReadModel:
    return read_models["accounts"]


def _table_modules() -> dict[str, object]:
    return {n: m for n, m in sys.modules.items() if n == PACKAGE or n.startswith(PACKAGE + ".")}


@pytest.fixture
def clean_table_modules() -> Iterator[None]:
    """Forget the ``projector_tables.*`` modules a test loads, so tests do not leak into each other."""
    saved = _table_modules()
    yield
    for name in _table_modules():
        if name not in saved:
            del sys.modules[name]
    sys.modules.update(saved)
