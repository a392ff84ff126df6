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
    graph = {
        name: sorted(
            {
                source
                for source, _, _ in imports_of(name, modules)
                if source != name and not name.startswith(source + ".")
            }
        )
        for name in modules
    }
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
    sources = {source for source, _, _ in imports_of("dcnv3.yolo.loading", modules)}
    assert {"dcnv3.yolo.checkpoints", "dcnv3.yolo"} <= sources


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


# The layers of docs/ARCHITECTURE.md, read from the folders: a module may import project modules of
# its own layer or below only. A new module takes the layer of the folder it is put in; a module in
# a folder that is not listed here, or at a package's top level and not in TOP_LEVEL, fails
# test_every_module_has_a_layer.
FOLDER_LAYERS = {
    "dcnv3.ops": 0,  # the operators, the hook protocol, capture (torch only)
    "dcnv3.record": 1,  # pure functions of a layer record
    "dcnv3.draw": 1,  # annotators
    "dcnv3.data": 1,  # the synthetic shapes
    "dcnv3.yolo": 2,  # the ultralytics integration: blocks, registration, checkpoints, loading
    "dcnv3.analysis": 3,  # probe, ablations, health, receptive fields, the dataset analysis
    "dcnv3.video": 3,  # video io, tracking, the pipeline
    "dcnv3.lesson": 3,  # the lesson network
    "dcnv3.training": 3,  # the trainer registers the health monitor, which probes
    "viz_app": 5,  # the app: state, views, components, tabs, the assembly
}
TOP_LEVEL = {
    "dcnv3": 0,
    "dcnv3.bundled": 0,
    "dcnv3.cli": 4,
    "dcnv3.__main__": 4,
    "viz_app.server": 6,  # the app's entry point (``deformlens-app``)
    "app": 6,
}
# The one import that may go up the layers: ``dcnv3.health(...)`` is the package's lazy module-level
# ``__getattr__``, which imports its layer-3 module on first access only (``import dcnv3`` stays
# torch-only: tests/yolo/test_integration.py), so that the report has a short name.
LAZY_FACADE = {("dcnv3", "dcnv3.analysis.health")}
# Third-party packages a layer must not import, anywhere in its modules (function level too).
FORBIDDEN = {
    0: {"ultralytics", "gradio", "plotly", "cv2", "viz_app"},
    1: {"gradio", "plotly", "viz_app"},
    2: {"gradio", "plotly", "viz_app"},
    3: {"gradio", "plotly", "viz_app"},
    4: {"gradio", "plotly", "viz_app"},
}
# viz_app folders that compute, draw or hold state: no gradio in them (only the tabs, the
# components and the assembly wire gradio).
GRADIO_FREE_FOLDERS = ("viz_app.state", "viz_app.views")


def layer_of(name: str) -> int | None:
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    for folder in sorted(FOLDER_LAYERS, key=len, reverse=True):  # the deepest folder first
        if name == folder or name.startswith(folder + "."):
            return FOLDER_LAYERS[folder]
    return None


def is_gradio_free(name: str) -> bool:
    return any(name == folder or name.startswith(folder + ".") for folder in GRADIO_FREE_FOLDERS)


def third_party_imports(name: str, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(modules[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_module_has_a_layer():
    unplaced = [name for name in project_modules() if layer_of(name) is None]
    assert unplaced == [], f"give these a layer in LAYERS and docs/ARCHITECTURE.md: {unplaced}"


def test_imports_go_down_the_layers():
    modules = project_modules()
    upward = []
    for name in modules:
        own = layer_of(name)
        for source, _, line in imports_of(name, modules):
            if (
                own is not None
                and layer_of(source) is not None
                and layer_of(source) > own
                and (name, source) not in LAZY_FACADE
            ):
                upward.append(f"{name} (layer {own}):{line} imports {source} (layer {layer_of(source)})")
    assert upward == []


def test_layers_keep_their_third_party_packages_out():
    modules = project_modules()
    bad = [
        f"{name} imports {package}"
        for name in modules
        for package in third_party_imports(name, modules)
        if package in FORBIDDEN.get(layer_of(name), set()) or (is_gradio_free(name) and package == "gradio")
    ]
    assert bad == []


def test_no_tab_imports_the_app_assembly():
    modules = project_modules()
    assert [
        name
        for name in modules
        if name.startswith("viz_app.")
        and name not in ("viz_app.ui", "viz_app.server")
        and any(source == "viz_app.ui" for source, _, _ in imports_of(name, modules))
    ] == []


def test_no_import_cycles():
    assert import_cycles(project_modules()) == []


def test_no_private_names_imported_across_modules():
    assert private_imports(project_modules()) == []


LONG_MODULE_LINES = 400


def test_a_long_module_says_why_it_is_one():
    """A module over 400 lines states at its top why it is not split ("Why one module ...")."""
    unexplained = []
    for name, path in project_modules().items():
        text = path.read_text()
        if len(text.splitlines()) > LONG_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if "Why one module" not in docstring:
                unexplained.append(f"{name} ({len(text.splitlines())} lines)")
    assert unexplained == []
