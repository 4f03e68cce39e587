"""Architecture rules as tests: no import cycle among the modules of ``slimkit/``.

Imports are read from the source with ``ast`` (nothing is imported): every
``import``/``from ... import`` at any depth (module level, inside functions and
classes, under ``if TYPE_CHECKING``), so a cycle cannot hide behind a function-local
import. An edge ``a -> b`` means module ``a`` names module ``b`` (or an attribute of
``b`` that is itself a module of the package, e.g. ``from slimkit import ops``).
Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so those
packages count as imported too.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = "slimkit"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every .py file under ``root/package``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) ``from X import ...``."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _named(name: str, modules) -> tuple[str | None, set[str]]:
    """The module of ours that ``name`` names (None if none), and the packages above it, whose
    ``__init__`` runs first."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ours = [p for p in prefixes if p in modules]
    if not ours:
        return None, set()
    return (name if name in modules else None), set(ours) - {name}


def import_graph(root: Path = REPO, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from every import statement at any depth.

    The module an import names is an edge; so are the packages above it, except this
    module's own packages (a submodule always runs its packages' ``__init__`` first; that
    is a cycle only when it names the package itself, e.g. ``from slimkit.nn import x``
    inside a module that ``slimkit/nn/__init__.py`` imports).
    """
    files = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        targets: set[str] = set()

        def add(name: str) -> None:
            named, parents = _named(name, files)
            targets.update(parents - ancestors)
            if named:
                targets.add(named)

        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_package, node)
                submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                if len(submodules) < len(node.names):  # some names are attributes of `base` itself
                    add(base)
                for sub in submodules:  # `from slimkit import ops` imports the module slimkit.ops
                    add(sub)
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-loop), as a
    cycle through it (Tarjan's algorithm, then a path back to the start)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, set(c)) for c in components]


def _cycle_through(graph, component: set[str]) -> list[str]:
    """A shortest cycle start -> ... -> start inside ``component`` (breadth-first), for the message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {component}")  # Tarjan's components always have one


def test_no_import_cycle_in_slimkit():
    graph = import_graph()
    assert "slimkit.nn.masked" in graph and "slimkit.ops" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in slimkit/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_ops_hold_functional_ops_only_and_never_import_nn():
    """Layers (nn) use ops; an op module that imported nn would put the cycle back, and no
    op module defines an nn.Module (the layers live in slimkit.nn)."""
    graph = import_graph()
    ops = [m for m in graph if m == "slimkit.ops" or m.startswith("slimkit.ops.")]
    assert "slimkit.ops.conv" in ops
    for module in ops:
        assert not {t for t in graph[module] if t == "slimkit.nn" or t.startswith("slimkit.nn.")}, module
        tree = ast.parse(module_files(REPO, PACKAGE)[module].read_text())
        classes = [c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                   and any(ast.unparse(b) in ("nn.Module", "torch.nn.Module", "Module") for b in c.bases)]
        assert not classes, f"{module} defines modules {classes}: layers belong in slimkit.nn"


def test_cycle_finder_finds_function_local_and_package_cycles(tmp_path):
    """The checker itself: a cycle closed only by a function-local import, and one through a
    package ``__init__`` (``from pkg import sub``), are both found; an acyclic tree is not flagged."""
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from demo import b\n")
    (pkg / "b.py").write_text("def f():\n    from demo.a import g  # dodges the cycle at import time\n")
    (pkg / "sub" / "__init__.py").write_text("from demo.sub.leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("from . import other\n")
    (pkg / "sub" / "other.py").write_text("import demo.sub\n")
    (pkg / "c.py").write_text("import demo.b\nfrom .sub import leaf\n")
    cycles = find_cycles(import_graph(tmp_path, "demo"))
    assert sorted(map(tuple, cycles)) == [("demo.a", "demo.b", "demo.a"),
                                          ("demo.sub", "demo.sub.leaf", "demo.sub.other", "demo.sub")]
    (pkg / "b.py").write_text("import math\n")
    (pkg / "sub" / "other.py").write_text("x = 1\n")
    assert find_cycles(import_graph(tmp_path, "demo")) == []
