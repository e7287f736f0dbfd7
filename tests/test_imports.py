"""The library's layout holds: every module imports, the import graph between project modules has
no cycle, and no project import hides inside a function (where a cycle would go unseen): the modules
that load Lightning (``DEFERRED``) are imported inside functions by design, and count as edges of the graph."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path


from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
# Imported at a stage's first training, so that a stage that reuses its finished work never loads Lightning
# (benchmarks/stage_startup.py); their imports inside functions are edges of the graph like any other, and
# tests/test_dvc_deps.py loads them to check a training stage's deps.
DEFERRED = {"pipeline.training.fit", "pipeline.training.population"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ProjectImports(ast.NodeVisitor):
    """Project imports of one module: those run at import time (outside functions and outside
    ``if TYPE_CHECKING``), and those inside functions."""

    def __init__(self, name: str) -> None:
        self.name, self.functions = name, 0
        self.found: set[str] = set()
        self.nested: list[str] = []

    def _function(self, node: ast.AST) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        for child in node.orelse if _is_type_checking(node) else [node.test, *node.body, *node.orelse]:
            self.visit(child)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "pipeline"]
        elif node.module and node.module.split(".")[0] == "pipeline":
            # ``from pipeline.a import b``: b may be a submodule, imported too
            names = [node.module] + [
                f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES
            ]
        else:
            names = []
        deferred = bool(names) and set(names) <= DEFERRED
        if names and self.functions and not deferred:
            self.nested.append(f"{self.name}:{node.lineno}")
        self.found.update(names if not self.functions or deferred else ())

    visit_Import = visit_ImportFrom = _import


def runtime_imports(source: str, name: str) -> tuple[set[str], list[str]]:
    """(project modules ``name`` imports when it is imported; project imports inside its functions)."""
    visitor = _ProjectImports(name)
    visitor.visit(ast.parse(source))
    return visitor.found, visitor.nested


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules its import runs. Importing ``a.b.c`` also runs the packages
    ``a`` and ``a.b`` first: those edges count too."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for target in runtime_imports(path.read_text(), name)[0]:
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES}
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
        graph[name] = edges - own_packages  # a module's own enclosing packages are already running
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports_and_says_what_it_holds():
    """Each module of the library imports and opens with a docstring (what ``help()`` and a
    newcomer read first); one test for all, not one per module."""
    undocumented = [name for name in sorted(MODULES) if not (importlib.import_module(name).__doc__ or "").strip()]
    assert undocumented == []


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_no_project_import_hides_in_a_function():
    nested = [where for name, path in MODULES.items() for where in runtime_imports(path.read_text(), name)[1]]
    assert nested == []


def test_the_import_reader_tells_module_level_function_level_and_type_checking_apart():
    source = (
        "from typing import TYPE_CHECKING\nimport pipeline.errors\n"
        "if TYPE_CHECKING:\n    from pipeline.config import StudyConfig\n"
        "def f():\n    from pipeline.data import PreparedData\n"
    )
    found, nested = runtime_imports(source, "x")
    assert found == {"pipeline.errors"} and nested == ["x:6"]
    deferred = "def f():\n    from pipeline.training.fit import fit_genome\n"
    assert runtime_imports(deferred, "x") == ({"pipeline.training.fit"}, [])  # an edge, not a hidden import


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_package_edges_and_skips_type_checking_imports():
    graph = import_graph()
    # config validates through space and operators; space refers to config for annotations only
    assert {"pipeline.space", "pipeline.operators"} <= graph["pipeline.config.loading"]
    assert not {m for m in graph["pipeline.space.dimensions"] if m.startswith("pipeline.config")}
    assert "pipeline.search.protocol" in graph["pipeline.search.ga"]
