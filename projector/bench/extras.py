"""The bench's optional dependencies, imported only when a contestant that needs them runs.

Quix Streams and confluent-kafka are not dependencies of projector: they are
the ``bench`` extra of pyproject.toml (``pip install -e '.[bench]'``, or
``make bench``, which installs it). The contestants that use them call
:func:`require` before their first import, so a missing extra is one clear
line (what is missing, for which contestant, and how to install it) instead
of a traceback, and ``import projector.bench.<any module>`` never needs them.

Only the standard library is imported here: the contestants run as
subprocesses whose start-up time is part of what the bench measures.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: How to install the extras, in every error message.
INSTALL_HINT = "pip install -e '.[bench]' (or make bench)"
#: Import name -> distribution name on PyPI.
DISTRIBUTIONS = {"quixstreams": "quixstreams", "confluent_kafka": "confluent-kafka"}


class MissingExtra(ImportError):
    """An optional dependency of the bench cannot be imported; the message says which and how to install it."""


def require(contestant: str, *modules: str) -> list[ModuleType]:
    """Import ``modules`` for ``contestant``; :class:`MissingExtra` when one cannot be imported."""
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except ImportError as exc:
            dist = DISTRIBUTIONS.get(name, name)
            raise MissingExtra(
                f"the {contestant} contestant needs {dist} (import {name}), which is not installed "
                f"or does not import ({type(exc).__name__}: {exc}); install the bench extras: {INSTALL_HINT}",
                name=name,
            ) from exc
    return imported
