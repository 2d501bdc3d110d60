"""projector.runtime.faust_patches: each Faust private name it uses exists in the pinned Faust.

A Faust release that renames or drops one of them fails here, before a
worker meets it: each patch's docstring says what breaks without it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
from importlib.metadata import version

import pytest

from projector.runtime import faust_patches
from projector.runtime.faust_patches import CHECKED_AGAINST, FAUST_PRIVATE_NAMES

PACKAGE = pathlib.Path(faust_patches.__file__).resolve().parent.parent


def _owner(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _assigned_in_source(cls: type, name: str) -> bool:
    """``self.<name> = ...`` (or an annotated assignment) in the source of ``cls`` or a base from Faust, mode or aiokafka."""
    pattern = re.compile(rf"self\.{re.escape(name)}\s*(:[^=\n]*)?=[^=]")
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in ("faust", "mode", "aiokafka"):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def test_the_installed_faust_is_the_one_the_patches_were_checked_against():
    assert version("faust-streaming") == CHECKED_AGAINST, (
        "faust-streaming changed: re-check every patch in projector/runtime/faust_patches.py, then update CHECKED_AGAINST"
    )


@pytest.mark.parametrize("path, name, use", FAUST_PRIVATE_NAMES, ids=[f"{p}.{n}" for p, n, _ in FAUST_PRIVATE_NAMES])
def test_each_private_name_exists_in_the_pinned_faust(path, name, use):
    cls = _owner(path)
    assert hasattr(cls, name) or _assigned_in_source(cls, name), (
        f"{path} has no {name} any more (projector uses it: {use}); see projector/runtime/faust_patches.py"
    )


def test_the_check_can_tell_a_missing_name():
    cls = _owner("faust.transport.consumer.Consumer")
    assert not hasattr(cls, "_no_such_name") and not _assigned_in_source(cls, "_no_such_name")


def _private_attributes_used(tree: ast.AST) -> set[str]:
    """Names ``x._name`` in the tree, except on ``self`` or ``cls`` (the module's own classes)."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            used.add(node.attr)
    return used


def test_every_private_name_the_module_touches_is_listed():
    listed = {name for _, name, _ in FAUST_PRIVATE_NAMES}
    tree = ast.parse(pathlib.Path(faust_patches.__file__).read_text())
    used = _private_attributes_used(tree)
    # Methods of BatchingConsumer reach inherited state through self: list them by hand.
    self_used = {
        n.attr for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
        and n.attr.startswith("_") and not n.attr.startswith("__")
    }
    own = {"_idle", "_no_more_fetches", "_held_for_seek", "_seek_lock", "_topic_on", "_take_fetch", "_commit_acked",
           "_take_one_by_one", "_ack_all"}
    missing = (used | self_used) - listed - own
    assert not missing, f"private names used in faust_patches.py but not in FAUST_PRIVATE_NAMES: {sorted(missing)}"


def test_no_other_module_touches_faust_privates():
    """Outside faust_patches.py, no module of projector reaches a private name listed there."""
    listed = {name for _, name, _ in FAUST_PRIVATE_NAMES}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "faust_patches.py":
            continue
        tree = ast.parse(path.read_text())
        hits = _private_attributes_used(tree) & listed
        if hits:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {sorted(hits)}")
    assert not offenders, offenders
