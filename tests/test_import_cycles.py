"""No import cycle in the package: between its modules, nor between its parts (``store/``, ``server/``,
``page/``, ``recorder.py``...), read from the source's AST (imports inside functions count; imports under
``if TYPE_CHECKING:`` do not, as they never run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import checkpoint_records

PACKAGE = Path(checkpoint_records.__file__).parent
ROOT = "checkpoint_records"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runs(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under ``node`` that can run (not those under ``if TYPE_CHECKING:``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for branch in child.orelse:
                yield from _runs_in(branch)
            continue
        yield from _runs_in(child)


def _runs_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _runs(node)


def imported(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules that importing ``name`` runs: each one named, and the packages above it
    that are not above ``name`` itself (importing ``a.b.c`` runs ``a.b`` first)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for statement in _runs(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(statement, ast.Import):
            names = [alias.name for alias in statement.names]
        else:
            base = statement.module or ""
            if statement.level:
                anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from . import lifecycle`` imports a module; ``from .store import RecordStore`` a name
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in statement.names]
        for target in names:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and not f"{name}.".startswith(f"{candidate}."):
                    targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def part_of(module: str) -> str:
    """The part a module belongs to: its top-level module or subpackage (``checkpoint_records.store``)."""
    return ".".join(module.split(".")[:2])


def parts_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in graph.items():
        part = part_of(module)
        parts.setdefault(part, set()).update(part_of(target) for target in targets if part_of(target) != part)
    return parts


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path back to its start) per strongly connected group of two or more nodes."""
    found = []
    for group in strongly_connected(graph):
        if len(group) < 2:
            continue
        start = min(group)
        path, seen = [start], {start}
        while True:  # walk inside the group until a node repeats: a cycle, named from where it closes
            step = min(target for target in graph[path[-1]] if target in group)
            if step in seen:
                found.append([*path[path.index(step) :], step])
                break
            path.append(step)
            seen.add(step)
    return found


def strongly_connected(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph.get(target, ())))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return groups


def test_the_graph_is_read_from_the_source() -> None:
    """The graph sees what it must: relative, absolute and function-level imports, not TYPE_CHECKING ones."""
    graph = import_graph()
    assert "checkpoint_records.bookkeeper" in graph["checkpoint_records.recorder"]  # from .bookkeeper import
    assert "checkpoint_records.lifecycle" in graph["checkpoint_records.recorder"]  # from . import lifecycle
    assert "checkpoint_records.store" in graph["checkpoint_records.storage.uploads"]  # from ..store import
    assert "checkpoint_records.recorder" in graph["checkpoint_records.delivery_commands"]  # inside a function
    assert "checkpoint_records.server" not in graph["checkpoint_records.page.routes"]  # TYPE_CHECKING only
    assert parts_graph(graph)["checkpoint_records.server"] >= {"checkpoint_records.page"}


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycle_between_modules_or_parts() -> None:
    graph = import_graph()
    found = cycles(graph) + cycles(parts_graph(graph))
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)
