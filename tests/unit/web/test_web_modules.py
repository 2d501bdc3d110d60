"""projector.web's layout: modules a newcomer can find, without cycles, runtime imports or the demo domain.

Read from the source (ast), not by importing: an import cycle or a module-level
``import projector.runtime.app`` shows here whatever order the modules load in.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Iterator

import pytest

WEB = Path(__file__).resolve().parents[3] / "projector" / "web"
MODULES = sorted(p.stem for p in WEB.glob("*.py") if p.stem != "__init__")


def tree(name: str) -> ast.Module:
    return ast.parse((WEB / f"{name}.py").read_text(), filename=f"projector/web/{name}.py")


def module_level_imports(module: ast.Module) -> Iterator[str]:
    """The modules imported when ``module`` loads: top-level statements, not under ``if TYPE_CHECKING:``."""

    def walk(statements: list[ast.stmt]) -> Iterator[str]:
        for node in statements:
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield node.module
                # ``from projector.web import openapi`` imports a module too.
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    yield from walk(block)

    yield from walk(module.body)


def web_imports(name: str) -> set[str]:
    return {m.rsplit(".", 1)[1] for m in module_level_imports(tree(name))
            if m.startswith("projector.web.") and m.rsplit(".", 1)[1] in MODULES}


def test_the_expected_modules_are_there():
    assert {"routes", "middleware", "responses", "openapi", "status", "tables", "aggregates", "commands",
            "control", "deadletters"} <= set(MODULES)
    assert "views" not in MODULES, "projector/web/views.py was split into the modules above"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name: str) -> None:
    importlib.import_module(f"projector.web.{name}")


def test_no_import_cycle_inside_projector_web():
    graph = {name: web_imports(name) for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(name):], name]))
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, [*path, name])
        done.add(name)

    for name in MODULES:
        visit(name, [])


@pytest.mark.parametrize("name", MODULES)
def test_no_module_level_import_of_the_runtime_app(name: str) -> None:
    imported = set(module_level_imports(tree(name)))
    assert "projector.runtime.app" not in imported, "import it under `if TYPE_CHECKING:` for type hints only"


def test_routes_installs_every_view_module():
    handlers = {"tables", "aggregates", "commands", "control", "deadletters", "operations", "status", "openapi"}
    assert handlers & set(MODULES) <= web_imports("routes")


@pytest.mark.parametrize("name", MODULES)
def test_no_module_names_the_demo_domain(name: str) -> None:
    """The demo domain lives in tables/; the web layer learns commands and settings from the catalog."""
    source = (WEB / f"{name}.py").read_text()
    found = re.findall(r"(?i)account|withdraw|deposit", source)
    assert not found, f"projector/web/{name}.py names the demo domain: {sorted(set(found))}"


def handler_uses(handler: ast.ExceptHandler) -> tuple[bool, bool, bool]:
    """Whether the handler logs (``log.<level>(...)``), raises, and answers with the caught error."""
    logs = raises = answers = False
    for node in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "log":
            logs = True
        elif isinstance(node, ast.Raise):
            raises = True
        elif isinstance(node, ast.Return) and handler.name and node.value is not None and any(
            isinstance(n, ast.Name) and n.id == handler.name for n in ast.walk(node.value)
        ):
            answers = True
    return logs, raises, answers


@pytest.mark.parametrize("name", MODULES)
def test_no_broad_except_swallows_an_error(name: str) -> None:
    """A bare ``except:`` or ``except Exception`` logs the error, raises, or answers with it."""
    for node in ast.walk(tree(name)):
        if not isinstance(node, ast.ExceptHandler):
            continue
        broad = node.type is None or (
            isinstance(node.type, ast.Name) and node.type.id in ("Exception", "BaseException")
        )
        if broad:
            assert any(handler_uses(node)), f"projector/web/{name}.py:{node.lineno} swallows an exception"
