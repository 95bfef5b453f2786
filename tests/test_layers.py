"""The import graph of matseg: no cycle, and no stage reaches back up into the executors.

Every ``import`` in the package is read from the source (function-level imports included, since
they run too; ``if TYPE_CHECKING:`` blocks left out, since they never run), so a lazy import that
closes a cycle fails here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "matseg"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def _targets(name: str, importer: str) -> set[str]:
    """The matseg modules an import of ``name`` from ``importer`` runs: the module and its
    parent packages, except the importer's own ancestors (already being initialised: a
    submodule importing its sibling is not a cycle through their package)."""
    parts = name.split(".")
    found = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    own = importer.split(".")
    ancestors = {".".join(own[:i]) for i in range(1, len(own))}
    return {m for m in found if m in MODULES and m not in ancestors and (m != "matseg" or
            name == "matseg")}  # fmt: skip


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("matseg"):
                        edges |= _targets(alias.name, module)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                    ).strip(".")
                if not base.startswith("matseg"):
                    continue
                edges |= _targets(base, module)
                for alias in node.names:  # ``from matseg.report import figures``: a module
                    if f"{base}.{alias.name}" in MODULES:
                        edges.add(f"{base}.{alias.name}")
        edges.discard(module)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize("stage", ["matseg.qc", "matseg.explain", "matseg.deploy",
                                   "matseg.report", "matseg.record"])  # fmt: skip
def test_no_stage_imports_the_executors(stage: str) -> None:
    graph = import_graph()
    offenders = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module == stage or module.startswith(stage + ".")
        for target in targets
        if target == "matseg.execution" or target.startswith("matseg.execution.")
    }
    assert not offenders, sorted(offenders)


def test_execution_holds_only_executors() -> None:
    names = {p.stem for p in (PACKAGE / "execution").glob("*.py")}
    assert names == {"__init__", "local", "workers"}
    graph = import_graph()
    # and the run folder is the bottom layer: it knows no stage above it
    stages = ("matseg.job", "matseg.pipeline", "matseg.api", "matseg.qc", "matseg.record",
              "matseg.report", "matseg.explain", "matseg.deploy", "matseg.execution")  # fmt: skip
    assert not {t for t in graph["matseg.rundir"] if t.startswith(stages)}


def test_a_cycle_is_caught() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_one_csv_writer() -> None:
    """Every CSV matseg writes goes through ``matseg.atomic`` (one quoting, rounding, NaN rule):
    no other module builds a ``csv.writer`` or ``csv.DictWriter``."""
    writers = {
        f"{module}:{node.lineno}"
        for module, path in MODULES.items()
        if module != "matseg.atomic"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and node.attr in ("writer", "DictWriter")
        and isinstance(node.value, ast.Name)
        and node.value.id == "csv"
    }
    assert not writers, sorted(writers)
