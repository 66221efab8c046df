"""The package's layers (README, "Layout"): each imports only the layers before it."""

from __future__ import annotations

import ast
from pathlib import Path

import cbir_utils

PACKAGE = Path(cbir_utils.__file__).parent
LAYERS = ("sources", "engine", "evaluation", "learning", "evidence")
FOUNDATION = {"config", "errors", "io", "paths", "_compat"}
FRONT = {"runs", "cli", "__main__"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """0 the foundation, 1-5 the sub-packages in :data:`LAYERS` order, 6 the front ends."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return 1 + LAYERS.index(parts[1])
    if len(parts) > 1 and parts[1] in FRONT:
        return len(LAYERS) + 1
    return 0


def _imports(path: Path) -> list[tuple[str, bool]]:
    """The package modules ``path`` imports, and whether inside a function."""
    tree = ast.parse(path.read_text())
    inside = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
    }
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level:
            raise AssertionError(f"{path}: relative import; the package imports by full name")
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cbir_utils"):
            for a in n.names:  # `from cbir_utils.engine import models` names a module
                full = f"{n.module}.{a.name}"
                is_module = (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists()
                out.append((full if is_module else n.module, id(n) in inside))
    return out


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        name = _name(path)
        if name.count(".") == 1 and name.split(".")[1] not in LAYERS:
            assert name.split(".")[1] in FOUNDATION | FRONT, name


def test_imports_point_one_way_and_form_no_cycle():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        src = _name(path)
        graph[src] = set()
        for target, in_function in _imports(path):
            assert _layer(target) <= _layer(src), f"{src} imports {target}, a layer after it"
            # a function may defer a heavy third-party library, never a module of the package
            assert not in_function, f"{src}: import of {target} inside a function"
            if target != src:
                graph[src].add(target)
    done, stack = set(), []

    def visit(m: str) -> None:
        assert m not in stack, f"import cycle: {' -> '.join([*stack[stack.index(m) :], m])}"
        if m in done:
            return
        stack.append(m)
        for t in graph.get(m, ()):
            visit(t)
        stack.pop()
        done.add(m)

    for m in graph:
        visit(m)
    assert len(done) > 30  # every module was read
