"""The house rules DESIGN.md states for the code itself: no import cycles, and the library never imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "edgepilot"
CLI = f"{PACKAGE}.cli"
ENTRY_POINTS = {f"{PACKAGE}.__main__"}  # `python -m edgepilot` is the CLI's own door


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The edgepilot modules an import statement names (a `from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    base = _resolve(module, node)
    if base.split(".")[0] != PACKAGE:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str) -> tuple[list[str], list[str]]:
    """(module-level imports, imports inside functions) of one module, as edgepilot module names."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    eager: list[str] = []
    lazy: list[str] = []

    def walk(node: ast.AST, inside_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for n in child.orelse:  # the TYPE_CHECKING branch never runs; its else does
                    walk(ast.Module(body=[n], type_ignores=[]), inside_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if inside_function else eager).extend(_targets(module, child))
            walk(child, inside_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return eager, lazy


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _graph() -> dict[str, set[str]]:
    """Module-level import edges. Importing a.b.c also runs the packages a.b: an edge to each one the importer is
    not itself inside (those are already being imported when it runs)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        own = set(_ancestors(module)) | ({module} if _is_package(module) else set())
        edges: set[str] = set()
        for target in _imports(module)[0]:
            if target not in MODULES:
                continue
            edges.add(target)
            edges.update(a for a in _ancestors(target) if a not in own and a in MODULES)
        edges.discard(module)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_module_level_and_lazy_imports_apart():
    eager, lazy = _imports("edgepilot.runtime.sources")
    assert "edgepilot.runtime.sources.capture" in eager and "edgepilot.runtime.sources.decoder_process" in lazy
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_module_level_imports():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (module-level imports): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_library_never_imports_the_cli():
    offenders = []
    for module in MODULES:
        if module == CLI or module.startswith(CLI + ".") or module in ENTRY_POINTS:
            continue
        eager, lazy = _imports(module)
        offenders += [f"{module} imports {t}" for t in eager + lazy if t == CLI or t.startswith(CLI + ".")]
    assert not offenders, offenders
