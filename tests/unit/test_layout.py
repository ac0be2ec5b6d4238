"""The package's import graph keeps the layout honest: no cycles, and the engine depends on
contracts, never on a concrete source or sink."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "gateway"
ENGINE = {
    "gateway.contracts",
    "gateway.topics",
    "gateway.decoder",
    "gateway.batching",
    "gateway.pipeline",
    "gateway.activity",
}
CONCRETE = ("gateway.sources", "gateway.sinks")
# Activity upserts its counts to PostgreSQL itself, so it reads the one table of what a
# PostgreSQL failure means, as the PostgreSQL sink does.
ALLOWED = {("gateway.activity", "gateway.sinks.pg_errors")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every `gateway` module this file names in an import, wherever the import sits."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                targets.add(submodule if submodule in modules else node.module)
    return {t for t in targets if t in modules and t != "gateway"}


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_the_import_graph_has_no_cycles() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            cycle = [*stack[stack.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, [*stack, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


def test_the_engine_imports_no_concrete_source_or_sink() -> None:
    edges = graph()
    assert edges.keys() >= ENGINE, ENGINE - edges.keys()
    offending = {
        module: sorted(
            t for t in edges[module] if t.startswith(CONCRETE) and (module, t) not in ALLOWED
        )
        for module in ENGINE
    }
    assert {module: found for module, found in offending.items() if found} == {}


def test_the_graph_sees_real_imports() -> None:
    """Guards the checks above against a walker that finds nothing."""
    edges = graph()
    assert "gateway.batching" in edges["gateway.pipeline"]
    assert "gateway.sources.acks" in edges["gateway.sources.kafka"]
