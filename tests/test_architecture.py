"""The import contract: the package's layers import downward only, and no modules form a circle.

The layers (bottom first) are stated in ``docs/architecture.md``. Every module of
``src/bulkrnabert_sv`` is parsed with :mod:`ast`; all imports of package modules count
(module-level and inside functions, relative and absolute) for the layer rule, and the
module-level ones (run when the module is imported) for the circle rule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "bulkrnabert_sv"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Bottom first. A module may import modules of lower layers and of its own group; two groups
#: of one layer are independent of each other. A module's group is the longest entry that is
#: the module itself or one of its parent packages (names relative to the package).
LAYERS: tuple[dict[str, tuple[str, ...]], ...] = (
    {
        "shared": (
            "_version",
            "_lazy",
            "_logging",
            "_settings",
            "_keys",
            "_validation",
            "_anndata",
            "_files",
        )
    },
    {"model": ("model",)},
    {"pp": ("pp",)},
    {"datasets": ("datasets",), "training": ("training",)},
    {"tl": ("tl",)},
    {"pl": ("pl",), "app": ("cli", "_demo")},
    {"package": ("",)},
)


@dataclass(frozen=True)
class Import:
    """One import of a package module: who imports what, where, and whether at module level."""

    importer: str
    imported: str
    line: int
    module_level: bool


def module_names(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module under ``root`` (``__init__`` names its package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _module_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes that run when the module is imported (not in a def or class)."""
    found: set[int] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
            ):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.add(id(child))
            visit(child)

    visit(tree)
    return found


def package_imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import, anywhere in a module, of a module of ``package``."""
    modules = module_names(root, package)
    imports = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        tree = ast.parse(path.read_text(), filename=str(path))
        top = _module_level_nodes(tree)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level - 1 > len(here) - 1:
                        raise ValueError(f"{path}:{node.lineno}: relative import above {package}")
                    base = here[: len(here) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from pkg import sub`` imports the module pkg.sub when there is one.
                subs = [f"{source}.{alias.name}" for alias in node.names]
                targets = [sub for sub in subs if sub in modules] or [source]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    known = target
                    while known not in modules and "." in known:
                        known = known.rsplit(".", 1)[0]  # import a.b.c where c is a name
                    imports.append(Import(name, known, node.lineno, id(node) in top))
    return imports


def layer_of(module: str, layers=LAYERS, package: str = PACKAGE) -> tuple[int, str]:
    """``(layer index, group)`` of a module; ``KeyError`` when no layer holds it."""
    relative = module[len(package) + 1 :] if module != package else ""
    best: tuple[int, int, str] | None = None
    for index, groups in enumerate(layers):
        for group, prefixes in groups.items():
            for prefix in prefixes:
                if (
                    relative == prefix
                    or (prefix and relative.startswith(prefix + "."))
                    or (prefix == "" and relative == "")
                ) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), index, group)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")
    return best[1], best[2]


def layer_violations(imports: list[Import], layers=LAYERS, package: str = PACKAGE) -> list[str]:
    """One message per import of a higher layer, or of another group of the same layer."""
    problems = []
    for item in imports:
        (low, low_group), (high, high_group) = (
            layer_of(item.importer, layers, package),
            layer_of(item.imported, layers, package),
        )
        if high > low or (high == low and high_group != low_group):
            problems.append(
                f"{item.importer} (line {item.line}, layer {low_group}) imports "
                f"{item.imported} (layer {high_group})"
            )
    return problems


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """The circles of module-level imports, each as ``[a, b, ..., a]`` (one per strongly
    connected group of modules; Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for item in imports:
        if item.module_level and item.imported != item.importer:
            graph.setdefault(item.importer, set()).add(item.imported)
            graph.setdefault(item.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(graph, set(group)) for group in groups]


def _cycle_through(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """One circle inside a strongly connected group, by a walk from its first module."""
    start = min(members)
    path, seen = [start], {start}
    node = start
    while True:
        following = sorted(graph[node] & members)
        if start in following and len(path) > 1:
            return [*path, start]
        step = next((other for other in following if other not in seen), None)
        if step is None:  # every neighbour seen: close at the first one on the path
            back = following[0]
            return [*path[path.index(back) :], back]
        path.append(step)
        seen.add(step)
        node = step


# ----------------------------------------------------------------------------- the package
def test_every_module_has_a_layer():
    for module in module_names(SOURCE):
        layer_of(module)


def test_layers_import_downward_only():
    problems = layer_violations(package_imports(SOURCE))
    assert not problems, "imports of a higher layer:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(package_imports(SOURCE))
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_are_found():
    """The parser sees the package's real imports (relative, in functions, from-package)."""
    imports = {(i.importer, i.imported, i.module_level) for i in package_imports(SOURCE)}
    # module level, relative, two dots
    assert (f"{PACKAGE}.pp._align", f"{PACKAGE}._anndata", True) in imports
    # ``from .. import _logging``: the module, not the package
    assert (f"{PACKAGE}.pl._utils", f"{PACKAGE}._logging", True) in imports
    # inside a function
    assert (f"{PACKAGE}.tl._embed", f"{PACKAGE}.pp._tokens", False) in imports


def test_layers_are_documented():
    text = (SOURCE.parents[1] / "docs" / "architecture.md").read_text()
    for groups in LAYERS:
        for prefixes in groups.values():
            for prefix in prefixes:
                if prefix:
                    assert f"`{prefix}`" in text, f"docs/architecture.md does not name {prefix}"


# ------------------------------------------------------------------ the checker catches ...
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "where",
    [
        "from ..tl._embed import embed\n",  # module level, relative
        "def f():\n    from bulkrnabert_sv.tl import _embed\n",  # in a function, absolute
        "import bulkrnabert_sv.tl._embed\n",  # plain import
        "from .. import tl\n",  # the package of a higher layer
    ],
)
def test_planted_upward_import_is_caught(tmp_path, where):
    root = _tree(
        tmp_path,
        {
            "_logging.py": "",
            "model/__init__.py": "",
            "model/modeling.py": "from .. import _logging\n" + where,
            "tl/__init__.py": "",
            "tl/_embed.py": "from ..model import modeling\n",
        },
    )
    problems = layer_violations(package_imports(root))
    assert problems, "the planted upward import was not reported"
    assert all(p.startswith(f"{PACKAGE}.model.modeling ") for p in problems)
    assert any(f"imports {PACKAGE}.tl" in p for p in problems)


def test_sibling_groups_are_independent(tmp_path):
    root = _tree(
        tmp_path,
        {
            "training/__init__.py": "",
            "training/fit.py": "from ..datasets import _gdc\n",
            "datasets/__init__.py": "",
            "datasets/_gdc.py": "",
        },
    )
    (problem,) = layer_violations(package_imports(root))
    assert "training.fit" in problem and "layer datasets" in problem


def test_planted_cycle_is_caught_and_named(tmp_path):
    root = _tree(
        tmp_path,
        {
            "model/__init__.py": "",
            "model/a.py": "from .b import x\n",
            "model/b.py": "from . import c\nx = 1\n",
            "model/c.py": "from .a import y\n",
            "model/d.py": "def f():\n    from .a import y\n",  # in a function: not a circle
        },
    )
    imports = package_imports(root)
    assert not layer_violations(imports)
    (cycle,) = import_cycles(imports)
    names = [name.rsplit(".", 1)[1] for name in cycle]
    assert names == ["a", "b", "c", "a"]


def test_import_in_function_makes_no_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "model/__init__.py": "",
            "model/a.py": "from .b import x\n",
            "model/b.py": "x = 1\ndef f():\n    from .a import y\n",
        },
    )
    assert import_cycles(package_imports(root)) == []


def test_module_without_a_layer_is_reported(tmp_path):
    root = _tree(tmp_path, {"newthing.py": ""})
    with pytest.raises(KeyError, match="newthing is in no layer"):
        for module in module_names(root):
            layer_of(module)
