"""The cache package's modules import each other one way only (issue 15: restore -> save ->
verify -> restore was a circle, held together by imports inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import runnerkeep.cache

CACHE_DIR = Path(runnerkeep.cache.__file__).parent


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(CACHE_DIR.glob("*.py"))}


def _sibling_imports(tree: ast.AST, modules: dict[str, ast.Module]) -> set[str]:
    """The cache modules a module imports with ``from .x import`` / ``from . import x``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found.update(name.split(".")[0] for name in names if name.split(".")[0] in modules)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once all its imports are

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_cycle_finder_finds_the_old_circle():
    old = {"restore": {"save"}, "save": {"verify"}, "verify": {"restore"}, "store": set()}
    assert _cycle(old) == ["restore", "save", "verify", "restore"]
    assert _cycle({"save": {"store"}, "store": set()}) is None


def test_no_import_cycle_between_cache_modules():
    modules = _modules()
    graph = {
        name: _sibling_imports(tree, modules) - {name}
        for name, tree in modules.items()
        if name != "__init__"  # the package's front: it imports everything, nothing imports it
    }
    assert "checks" in graph["restore"] and "checks" in graph["verify"]  # the graph is real
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_cache_module_imports_a_sibling_inside_a_function():
    modules = _modules()
    lazy = []
    for name, tree in modules.items():
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and _sibling_imports(node, modules):
                    lazy.append(f"{name}.py:{node.lineno}")
    assert lazy == []
