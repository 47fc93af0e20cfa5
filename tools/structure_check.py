#!/usr/bin/env python3
"""Structure facts of the core that a reviewer can rerun: long functions and import cycles.

    python3 tools/structure_check.py            # report, exit 1 when a rule is broken
    python3 tools/structure_check.py --json

Rules (issue 15):
- no function in the core longer than MAX_LINES lines unless a comment on the line before its
  ``def`` (or decorator) starts with ``# long:`` and says why;
- no import cycle between modules of the core (module-level imports and imports inside
  functions both count: a lazy import hides a cycle, it does not break it);
- the subsystems cache/, cleanup/ and disk/ import each other only along ALLOWED_ARROWS.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "module_utils", "runnerkeep")
PACKAGE = "runnerkeep"
MAX_LINES = 80
SUBSYSTEMS = ("cache", "cleanup", "disk")
# Arrows allowed between subsystems: none. What one needs of another (the budget's quota and
# targets, a cleanup stage) is handed in by the front doors, built in runnerkeep.wiring. An
# arrow added here needs its reason written beside it.
ALLOWED_ARROWS: frozenset[tuple[str, str]] = frozenset()


def core_files() -> Iterator[tuple[str, str]]:
    """(module name, path) for every .py file of the core."""
    for dirpath, dirnames, filenames in os.walk(CORE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, os.path.dirname(CORE))[: -len(".py")]
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def _is_package(module: str, path: str) -> bool:
    return path.endswith("__init__.py")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names an ImportFrom refers to (the module and, for `from pkg import x`, pkg.x)."""
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def _is_ancestor(package: str, module: str) -> bool:
    # Python imports a module's parent packages before the module itself, so an edge to one's
    # own package says nothing about the design (`from . import walk` names walk, not cleanup).
    return module.startswith(package + ".")


def imports_of(module: str, path: str, known: set[str]) -> dict[str, int]:
    """Core modules imported by one module -> line of the first such import."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            names = _resolve(module, _is_package(module, path), node)
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name in known and name != module and not _is_ancestor(name, module):
                found.setdefault(name, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    files = dict(core_files())
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def subsystem(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBSYSTEMS else None


def subsystem_arrows(graph: dict[str, dict[str, int]]) -> list[dict[str, object]]:
    arrows = []
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            source, dest = subsystem(module), subsystem(target)
            if source and dest and source != dest:
                arrows.append(
                    {
                        "from": module,
                        "to": target,
                        "line": line,
                        "allowed": (source, dest) in ALLOWED_ARROWS,
                    }
                )
    return arrows


def _has_reason(lines: list[str], node: ast.AST) -> bool:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    before = lines[first - 2].strip() if first >= 2 else ""
    return before.startswith("# long:")


def long_functions(limit: int = MAX_LINES) -> list[dict[str, object]]:
    found = []
    for module, path in core_files():
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(
                        {
                            "function": f"{module}.{node.name}",
                            "line": node.lineno,
                            "lines": length,
                            "reason_given": _has_reason(lines, node),
                        }
                    )
    return sorted(found, key=lambda item: -int(item["lines"]))


def report() -> dict[str, object]:
    graph = import_graph()
    return {
        "modules": len(graph),
        "long_functions": long_functions(),
        "import_cycles": find_cycles(graph),
        "subsystem_arrows": subsystem_arrows(graph),
    }


def problems(facts: dict[str, object]) -> list[str]:
    found = []
    for item in facts["long_functions"]:
        if not item["reason_given"]:
            found.append(
                f"{item['function']} is {item['lines']} lines (> {MAX_LINES}, no '# long:' reason)"
            )
    for cycle in facts["import_cycles"]:
        found.append("import cycle: " + " <-> ".join(cycle))
    for arrow in facts["subsystem_arrows"]:
        if not arrow["allowed"]:
            found.append(f"subsystem arrow {arrow['from']} -> {arrow['to']} (line {arrow['line']})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    facts = report()
    found = problems(facts)
    if args.json:
        print(json.dumps({**facts, "problems": found}, indent=2))
    else:
        print(f"{facts['modules']} core modules")
        for line in found:
            print(line)
        print("structure ok" if not found else f"{len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
