"""The package's layers: every import points down the table of docs/architecture.md.

Each module's ``ast`` is walked, imports inside functions included. Fails on an import of a higher floor, on
an import cycle between modules, on ``from other_module import _private``, and on a module that the table
does not place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DOC = REPO / "docs" / "architecture.md"


def read_floors(text: str) -> dict[str, int]:
    """``{top-level module or package: floor}`` from the page's table (0 = the bottom floor)."""
    block = re.search(r"<!-- layers.*?-->\s*```text\n(.*?)```\s*<!-- /layers -->", text, re.S)
    assert block, f"{DOC}: no layers table between <!-- layers --> and <!-- /layers -->"
    rows = [line.split(":", 1)[1] for line in block.group(1).strip().splitlines()]
    floors = {}
    for floor, row in enumerate(reversed(rows)):
        for name in row.split(","):
            floors[name.strip()] = floor
    return floors


def package_modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package __init__)}`` of every module under src/vsekit."""
    mods = {}
    for path in sorted((SRC / "vsekit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def imports_of(name: str, path: Path, is_pkg: bool, mods: dict) -> list[tuple[str, str | None, int]]:
    """``(imported vsekit module, imported name or None, line)`` for every import in the module's file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] == "vsekit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: None if is_pkg else -1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vsekit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, None, node.lineno) if sub in mods else (target, alias.name, node.lineno))
    return out


def floor_of(module: str, floors: dict[str, int]) -> int | None:
    parts = module.split(".")
    return floors.get("vsekit" if len(parts) == 1 else parts[1])


MODS = package_modules()
FLOORS = read_floors(DOC.read_text(encoding="utf-8"))
EDGES = {name: imports_of(name, path, is_pkg, MODS) for name, (path, is_pkg) in MODS.items()}


def test_the_table_places_every_module_once():
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```text\n(.*?)```", text, re.S).group(1)
    names = [n.strip() for line in block.strip().splitlines() for n in line.split(":", 1)[1].split(",")]
    assert len(names) == len(set(names)), names
    unplaced = sorted(m for m in MODS if floor_of(m, FLOORS) is None)
    assert not unplaced, f"modules missing from the table of {DOC.name}: {unplaced}"
    tops = {"vsekit" if m == "vsekit" else m.split(".")[1] for m in MODS}
    assert set(FLOORS) <= tops, f"the table names modules that do not exist: {sorted(set(FLOORS) - tops)}"


def test_imports_point_down():
    upward = [
        f"{name} (floor {floor_of(name, FLOORS)}) imports {target} (floor {floor_of(target, FLOORS)}) at line {line}"
        for name, edges in EDGES.items()
        for target, _, line in edges
        if floor_of(target, FLOORS) is not None and floor_of(target, FLOORS) > floor_of(name, FLOORS)
    ]
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{name} imports {target}.{imported} at line {line}"
        for name, edges in EDGES.items()
        for target, imported, line in edges
        if imported and imported.startswith("_") and target != name
    ]
    assert not private, "\n".join(private)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    graph = {name: {t for t, _, _ in edges if t in MODS and t != name} for name, edges in EDGES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}, ["b", "b2", "b"]),
    ],
)
def test_find_cycle(graph, expected):
    assert find_cycle(graph) == expected


def test_the_checks_see_an_upward_import_inside_a_function(tmp_path):
    """The walk sees a relative import inside a function and resolves it to its floor."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ..training import train\n    from .datasets import _hidden\n")
    edges = imports_of("vsekit.data.m", module, False, {**MODS, "vsekit.data.m": (module, False)})
    assert ("vsekit.training", "train", 2) in edges and ("vsekit.data.datasets", "_hidden", 3) in edges
    assert floor_of("vsekit.training", FLOORS) > floor_of("vsekit.data.m", FLOORS)


MAX_FUNCTION_LINES = 80  # a function reads on one screen
MAX_MODULE_LINES = 450  # a module reads whole ("about 400")


def long_functions(path: Path, limit: int) -> list[str]:
    """``name (lines)`` of every function or method of the file longer than ``limit`` lines, docstring included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    ]


def test_functions_and_modules_stay_readable():
    too_long = {name: long_functions(path, MAX_FUNCTION_LINES) for name, (path, _) in MODS.items()}
    assert not {k: v for k, v in too_long.items() if v}, f"functions over {MAX_FUNCTION_LINES} lines"
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, (path, _) in MODS.items()}
    assert not {k: n for k, n in sizes.items() if n > MAX_MODULE_LINES}, f"modules over {MAX_MODULE_LINES} lines"


def test_the_size_check_sees_a_long_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def short():\n    return 1\n\n\ndef long():\n" + "    x = 1\n" * 90)
    assert long_functions(module, MAX_FUNCTION_LINES) == ["long (91)"]
