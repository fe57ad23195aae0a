"""The package's imports go one way: no cycle between modules, top-level or function-local imports.

Also every module of ``tfsafe`` and ``tflite_export`` stays under 500 lines (one concept each).
"""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfsafe", "tflite_export")
MAX_LINES = 500


def _modules():
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return modules


def _resolve(module, node, is_package):
    """Absolute module names an import node refers to (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph():
    """``{module: {imported tfsafe / tflite_export modules}}`` over every import statement."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _resolve(module, node, path.endswith("__init__.py")):
                    # "from a.b import c": c is a module when a.b.c is one, else a name in a.b.
                    if name in modules and name != module:
                        edges.add(name)
        graph[module] = edges
    return graph


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _package_edges_ignored(graph):
    """Drop edges from a package to its own submodules and from submodules to their package's
    ``__init__`` re-exports: only module -> module dependencies form cycles that matter."""
    out = {}
    for module, edges in graph.items():
        out[module] = {e for e in edges if not e.startswith(module + ".") and not module.startswith(e + ".")}
    return out


def test_no_import_cycle_between_modules():
    cycles = find_cycles(_package_edges_ignored(import_graph()))
    assert cycles == [], f"import cycles: {cycles}"


def test_the_cycle_finder_sees_function_local_imports(tmp_path, monkeypatch):
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    package = tmp_path / "tfsafe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import tfsafe.b\n")
    (package / "b.py").write_text("def f():\n    from tfsafe import a\n    return a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert find_cycles(_package_edges_ignored(import_graph())) == [["tfsafe.a", "tfsafe.b"]]


def _long_modules():
    out = []
    for path in _modules().values():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            out.append((os.path.relpath(path, ROOT), n))
    return sorted(out)


def test_no_module_over_500_lines():
    long = _long_modules()
    assert long == [], f"modules over {MAX_LINES} lines: {long}"
