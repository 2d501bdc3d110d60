"""projector's layers, read from the source: arrows point down only, and nothing imports in a circle.

core < runtime < web < (worker, cli, demo, bench). The core imports no Faust,
aiokafka, aiohttp, mode or rocksdict; the runtime nothing from the web.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "projector"
LAYERS = {"core": 0, "runtime": 1, "web": 2}
#: Subpackages and top-level modules above the web layer.
TOP = {"worker", "cli", "__main__", "demo", "bench", "verify"}
SUBPACKAGES = ["core", "runtime", "web", "demo", "bench"]
CLIENTS = ("faust", "aiokafka", "aiohttp", "mode", "rocksdict")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names
                       if f"{node.module}.{alias.name}" in MODULES)
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "projector"


GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_subpackage_imports(package):
    importlib.import_module(f"projector.{package}")


def test_no_import_cycle():
    cycles, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(GRAPH[u]):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_arrows_point_down_only():
    up = []
    for name, deps in GRAPH.items():
        here = layer(name)
        if here not in LAYERS:
            continue
        for dep in deps:
            there = layer(dep)
            if there == "projector" and dep == "projector":
                continue  # the package itself: __version__ and the decider errors
            if there not in LAYERS or LAYERS[there] > LAYERS[here]:
                up.append(f"{name} -> {dep}")
    assert not up, up


def test_the_core_imports_no_kafka_faust_or_web_library():
    found = [f"{name} imports {m}" for name, path in MODULES.items() if layer(name) == "core"
             for m in imports_of(path) if m.split(".")[0] in CLIENTS]
    assert not found, found


def test_every_module_is_in_a_layer_or_on_top():
    loose = [n for n in MODULES if layer(n) not in LAYERS and layer(n) not in TOP and n != "projector"]
    assert not loose, f"modules outside the layers: {loose}"


def test_the_readme_map_names_every_subpackage_and_only_real_paths():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [s for s in subpackages if f"`projector/{s}/`" not in section]
    assert not missing, f"README's 'Where things are' lacks {missing}"
    named = re.findall(r"`((?:projector|tables|tests|deploy)/[^`]*)`", section)
    gone = [n for n in named if not (PACKAGE.parent / n).exists()]
    assert not gone, f"README's 'Where things are' names paths that do not exist: {gone}"


def _silent(handler: ast.ExceptHandler) -> bool:
    """A broad handler that neither re-raises, logs, nor uses the error it caught."""
    broad = handler.type is None or (isinstance(handler.type, ast.Name) and handler.type.id in ("Exception",
                                                                                                 "BaseException"))
    if not broad:
        return False
    for node in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
        if isinstance(node, ast.Raise):
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "debug", "info", "warning", "error", "exception", "critical"):
            return False
        if handler.name and isinstance(node, ast.Name) and node.id == handler.name:
            return False  # carried on: in an answer, a report, a retry's last error
    return True


def test_no_broad_except_swallows_an_error_silently():
    silent = [f"{name}:{h.lineno}" for name, path in MODULES.items()
              for h in ast.walk(ast.parse(path.read_text())) if isinstance(h, ast.ExceptHandler) and _silent(h)]
    assert not silent, f"broad except blocks that neither log, re-raise nor use the error: {silent}"
