"""The package's import graph: imports point down (no cycle), project modules are imported at module top."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """Project modules an import statement names (`from harness import x` names harness.x when it is a module)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    base = node.module or ""
    found = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    return found or ({base} if base in modules else set())


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module → project modules it imports at top level; and every import of a project module inside a def."""
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)
    edges: dict[str, set[str]] = {}
    nested: list[str] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        edges[name] = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges[name] |= imported(node, modules) - {name}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom) and imported(inner, modules):
                        nested.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return edges, nested


def test_no_import_cycle():
    edges, _ = graph()
    assert "harness.report.write" in edges and "harness.stores" in edges
    order = list(graphlib.TopologicalSorter(edges).static_order())  # raises CycleError on a cycle
    assert set(order) == set(edges)


def test_project_modules_are_imported_at_module_top():
    """Three exceptions: the CLI imports the heavy commands when one runs (`validate` stays under a second),
    `harness/__init__.py` imports the library API (`harness.run`, `harness.load_student`) on first use, so
    `import harness` loads no torch, and the thread benchmark's child sets the OpenMP environment before torch
    loads (what it measures)."""
    _, nested = graph()
    lazy = ("harness/cli.py:", "harness/__init__.py:", "harness/perf/threads.py:")
    assert [n for n in nested if not n.startswith(lazy)] == []
    assert sorted({n.split(":")[0] for n in nested}) == [
        "harness/__init__.py",
        "harness/cli.py",
        "harness/perf/threads.py",
    ], nested


@pytest.mark.slow
def test_import_harness_loads_no_heavy_library():
    """`import harness` (and its version) in a fresh interpreter imports neither torch nor MLflow; the API does."""
    code = (
        "import sys, harness; light = not {'torch', 'mlflow', 'lm_eval'} & set(sys.modules); "
        "harness.run; print(light, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_layers_point_down():
    """The sweep never reaches the report (the CLI calls both); the report reads stores, not the sweep."""
    edges, _ = graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in edges[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    assert not any(m.startswith("harness.report") for m in reach("harness.sweep"))
    assert not reach("harness.report.write") & {"harness.sweep", "harness.trial", "harness.cli"}
    assert not reach("harness.trial") & {"harness.sweep", "harness.tracking", "harness.cli"}
    assert reach("harness.metrics") == set()
    perf = {m for m in edges if m.startswith("harness.perf")}
    assert "harness.perf.cli" in perf
    assert not any(reach(m) & perf for m in edges if m not in perf)  # the benchmark imports the harness, never back
    assert reach("harness.stores") == {"harness.spec"} | reach("harness.spec")
