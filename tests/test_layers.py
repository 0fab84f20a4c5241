"""The layers of the package, read from the source: which files may import which, and no import cycles.

Every ``.py`` file under ``src/fewlabels`` is parsed with :mod:`ast`; every import counts wherever it sits (module
level, inside a function, under ``if TYPE_CHECKING:``), relative imports are resolved, and
``importlib.import_module("fewlabels....")`` with a literal name counts too. An import names one file: the module it
names (a package's ``__init__.py``), or the submodule for ``from package import submodule``, never the parent
packages Python initialises on the way (counting those would put every package in a cycle with its own submodules).

Layers, bottom up: data/, models/, metrics.py and config.py (with the leaves parallel.py, progress.py, viz.py and
files.py) -> methods/ -> engine/ -> commands/, cli.py, demo.py, report.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fewlabels"

#: the bottom layer: these import only from LOW_ALLOWED
LOW_LAYER: tuple[str, ...] = ("fewlabels.data", "fewlabels.models", "fewlabels.metrics", "fewlabels.config")
#: what the bottom layer may import: itself and the leaves
LOW_ALLOWED: tuple[str, ...] = (
    *LOW_LAYER,
    "fewlabels.parallel",
    "fewlabels.progress",
    "fewlabels.viz",
    "fewlabels.files",
)
#: modules that import nothing from fewlabels (which is why the bottom layer may use them)
LEAVES: tuple[str, ...] = ("fewlabels.parallel", "fewlabels.progress", "fewlabels.viz", "fewlabels.files")
#: above every method: the training engine, the command layer and its entry points, the demo, the reports, and the
#: package facade ``fewlabels/__init__.py`` (``fewlabels.train`` / ``fewlabels.load`` call into the engine)
ABOVE_METHODS: tuple[str, ...] = (
    "fewlabels.engine",
    "fewlabels.commands",
    "fewlabels.cli",
    "fewlabels.__main__",
    "fewlabels.demo",
    "fewlabels.report",
)
#: above the engine: the command layer, the entry points, the demo and the reports
ABOVE_ENGINE: tuple[str, ...] = (
    "fewlabels.commands",
    "fewlabels.cli",
    "fewlabels.__main__",
    "fewlabels.demo",
    "fewlabels.report",
)


@dataclass(frozen=True)
class Import:
    """One import statement (or ``import_module`` call) of ``source`` that resolves to the module ``target``."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.path.name}:{self.line})"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``src/package`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module a dotted name refers to: the longest prefix of it that is a module (the rest is an attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an AST node imports, absolute (none for a node that is not an import).

    ``from a import b`` gives ``a.b``: :func:`_resolve` turns it into the file a/b.py when there is one, else into
    ``a`` (``b`` is then a name defined in ``a``).
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        origin = node.module or ""
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join([*base, node.module] if node.module else base)
        return [f"{origin}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        arg = node.args[0]
        if name == "import_module" and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
    return []


def scan_imports(src: Path = SRC, package: str = PACKAGE) -> list[Import]:
    """Every import between the files of ``src/package``, function-level and ``importlib`` ones included."""
    modules = module_files(src, package)
    found: set[Import] = set()
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for name in _imported_names(node, module, is_package):
                target = _resolve(name, modules) if name.split(".")[0] == package else None
                if target is not None and target != module:
                    found.add(Import(module, target, path, getattr(node, "lineno", 0)))
    return sorted(found, key=lambda i: (i.source, i.target, i.line))


def within(module: str, prefixes: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or lies inside one of those packages."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def import_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module of the import graph (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def _report(bad: list[Import]) -> str:
    return "\n".join(str(i) for i in bad)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan_imports()


def test_the_scanner_sees_function_level_relative_and_importlib_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text(
        "import importlib\nimport os\n\n\ndef f():\n"
        "    from pkg.sub import deep\n"
        "    importlib.import_module('pkg.top')\n"
    )
    (pkg / "top.py").write_text("from pkg.low import f\nfrom pkg import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from . import deep\nfrom .deep import VALUE\n")
    (pkg / "sub" / "deep.py").write_text("VALUE = 1\nif False:\n    from ..low import f\n")
    edges = {(i.source, i.target) for i in scan_imports(tmp_path, "pkg")}
    assert edges == {
        ("pkg.low", "pkg.sub.deep"),  # function level, from a package import its submodule
        ("pkg.low", "pkg.top"),  # importlib with a literal name
        ("pkg.top", "pkg.low"),  # module level, the name f of pkg.low
        ("pkg.top", "pkg.sub"),  # a subpackage is its __init__
        ("pkg.sub", "pkg.sub.deep"),  # relative, twice
        ("pkg.sub.deep", "pkg.low"),  # relative two levels up, inside a block
    }
    cycles = import_cycles(scan_imports(tmp_path, "pkg"))
    assert cycles == [["pkg.low", "pkg.sub", "pkg.sub.deep", "pkg.top"]]


def test_every_source_file_is_scanned(imports):
    modules = module_files(SRC, PACKAGE)
    assert {"fewlabels.cli", "fewlabels.config", "fewlabels.engine", "fewlabels.methods.base"} <= set(modules)
    assert {i.source for i in imports} >= {"fewlabels.cli", "fewlabels.engine.trainer", "fewlabels.methods.base"}


def test_lower_layers_import_nothing_above_them(imports):
    bad = [i for i in imports if within(i.source, LOW_LAYER) and not within(i.target, LOW_ALLOWED)]
    assert not bad, "data/, models/, metrics.py and config.py import from above them:\n" + _report(bad)


def test_the_leaves_import_nothing_from_the_package(imports):
    bad = [i for i in imports if within(i.source, LEAVES)]
    assert not bad, (
        "parallel.py, progress.py, viz.py and files.py must stay leaves (lower layers use them):\n" + _report(bad)
    )


def test_methods_never_import_the_engine_commands_cli_or_demo(imports):
    bad = [
        i
        for i in imports
        if within(i.source, ["fewlabels.methods"]) and (within(i.target, ABOVE_METHODS) or i.target == PACKAGE)
    ]
    assert not bad, "methods/ imports from above it (pass loaded objects in instead):\n" + _report(bad)


def test_the_engine_never_imports_the_commands_cli_or_demo(imports):
    bad = [i for i in imports if within(i.source, ["fewlabels.engine"]) and within(i.target, ABOVE_ENGINE)]
    assert not bad, "engine/ imports from above it:\n" + _report(bad)


def test_no_import_cycles_between_files(imports):
    cycles = import_cycles(imports)
    arrows = [str(i) for c in cycles for i in imports if i.source in c and i.target in c]
    assert not cycles, f"import cycles {cycles}; their arrows:\n" + "\n".join(arrows)
