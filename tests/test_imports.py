"""No module of onnxquant imports a module that imports it back (directly or through others).

The import graph is read with ``ast`` from the source (every import, also those inside functions:
a lazy import still ties the two modules together), so the test needs no import to succeed.
"""
from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "onnxquant"

# Cycles another branch removes (the CLI package, issue 17); asserted once it is merged.
KNOWN: set[frozenset[str]] = set()  # none: every cycle is a failure


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports (``from pkg import mod`` counts as pkg.mod when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # a submodule by name, else a name the module itself defines
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan), each a set of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_a_self_contained_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_lazy_and_submodule_imports_are_edges(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "__init__.py").write_text("from a.b import f\n")
    (tmp_path / "a" / "b.py").write_text("def f():\n    from . import c\n    from .c import g\n")
    (tmp_path / "a" / "c.py").write_text("import os\nfrom a import b\n")
    modules = {"a", "a.b", "a.c"}
    assert _imports(tmp_path / "a" / "__init__.py", "a", modules) == {"a.b"}
    assert _imports(tmp_path / "a" / "b.py", "a.b", modules) == {"a.c"}
    assert _imports(tmp_path / "a" / "c.py", "a.c", modules) == {"a.b"}
    assert "onnxquant.api" in import_graph()["onnxquant"]  # the package re-exports the facade


def test_no_import_cycle_outside_the_known_ones():
    unexpected = [sorted(c) for c in cycles(import_graph()) if c not in KNOWN]
    assert unexpected == [], f"import cycles: {unexpected}"
