"""The code's import structure: no import cycles and no ``_private`` names taken across modules,
in dcnv3, viz_app and app.py. Walking the source with ``ast`` is the cheap way to keep both true
(nothing is imported or run)."""
from __future__ import annotations

import ast
from pathlib import Path

from repo_paths import ROOT

PACKAGES = ("dcnv3", "viz_app")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages and app.py."""
    modules = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imports_of(name: str, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported project module, imported name or None, line) for every import in a module,
    at module level or inside functions; relative imports resolved."""
    tree = ast.parse(modules[name].read_text(), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:  # `from package import submodule`
                    found.append((submodule, None, node.lineno))
                elif source in modules:
                    found.append((source, alias.name, node.lineno))
    return found


def private_imports(modules: dict[str, Path]) -> list[str]:
    """``from x import _name`` where x is another project module (dunders aside)."""
    bad = []
    for name in modules:
        for source, imported, line in imports_of(name, modules):
            if imported and imported.startswith("_") and not imported.startswith("__") and source != name:
                bad.append(f"{name}:{line} imports {source}.{imported}")
    return bad


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Strongly connected groups (> 1 module) of the project's import graph. An import of a
    package's own submodule by the package (``__init__``) is the package's content, not a
    cycle, so edges from a submodule to its parent package are left out."""
    graph = {name: sorted({source for source, _, _ in imports_of(name, modules)
                           if source != name and not name.startswith(source + ".")})
             for name in modules}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_walker_sees_the_project():
    modules = project_modules()
    assert {"app", "dcnv3", "dcnv3.ops", "dcnv3.yolo", "viz_app.ui"} <= set(modules)
    sources = {source for source, _, _ in imports_of("dcnv3.loading", modules)}
    assert {"dcnv3.checkpoints", "dcnv3.yolo"} <= sources


def test_the_walker_finds_cycles_and_private_imports(tmp_path, monkeypatch):
    """On a made-up package: a -> b -> a is a cycle, and `from .b import _hidden` is flagged."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import _hidden\n")
    (package / "b.py").write_text("def f():\n    from . import a\n_hidden = 1\n")
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": package / "b.py"}
    assert import_cycles(modules) == [["pkg.a", "pkg.b"]]
    assert private_imports(modules) == ["pkg.a:1 imports pkg.b._hidden"]


import pytest  # noqa: E402

# The probe/overlay split (issue 16, item 3) removes the last private imports (overlay's
# helpers); strict, so this marker must go when it lands.
PENDING = pytest.mark.xfail(strict=True, reason="viz_app/overlay refactor in progress")


def test_no_import_cycles():
    assert import_cycles(project_modules()) == []


@PENDING
def test_no_private_names_imported_across_modules():
    assert private_imports(project_modules()) == []
