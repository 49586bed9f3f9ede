"""Import contracts of kaggle_utils, read from the source (ast), not by importing it.

The layer contract (docs/ARCHITECTURE.md): io < data < models < inference < train / ensemble /
predict < pipeline / kernels; a module imports only from its own layer or below, and every module
has a layer. 05's `ensemble` and 06's `predict` share `inference` and never import each other,
directly or through another module (a cycle between them is how two inference paths grew).
Imports under `if TYPE_CHECKING:` never run and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kaggle_utils"


def module_name(path: Path, package_dir: Path = PACKAGE) -> str:
    """Dotted name of a source file: kaggle_utils/ensemble/oof.py -> kaggle_utils.ensemble.oof."""
    rel = path.resolve().relative_to(package_dir.resolve().parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST, top_only: bool = False):
    """Every node that can run: not the bodies of `if TYPE_CHECKING:`; with top_only, not the
    bodies of functions either (what importing the module runs)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            elif top_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            else:
                todo.append(child)


def imports_of(
    module_path: str | Path, package_dir: Path = PACKAGE, top_only: bool = False
) -> set[str]:
    """Absolute names a module imports anywhere in its body (imports inside functions count: they
    run too). `import a.b` gives a.b; `from a import b` gives a and a.b (b may be a submodule);
    relative imports are resolved against the module's own package."""
    path = Path(module_path)
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)), top_only):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return out


def import_graph(
    package_dir: Path = PACKAGE, top_only: frozenset[str] = frozenset()
) -> dict[str, set[str]]:
    """Module -> the package's modules it imports directly (an imported attribute counts as its
    module; importing a submodule runs its parent packages' __init__ too). Modules named in
    top_only count only the imports that importing them runs."""
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for imported in imports_of(path, package_dir, name in top_only):
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            while imported:
                deps.add(imported)
                imported = imported.rpartition(".")[0]
        graph[name] = deps - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_imports_of_reads_every_import_form(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    mod = pkg / "sub" / "mod.py"
    mod.write_text(
        "import os.path\n"
        "from pkg import predict\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "def f():\n"
        "    from pkg.lazy import x\n"
    )
    got = imports_of(mod, pkg)
    assert {"os.path", "pkg", "pkg.predict", "pkg.sub.sibling", "pkg.other.thing"} <= got
    assert "pkg.lazy" in got  # an import inside a function still runs


def test_the_graph_sees_the_real_imports(graph):
    assert "kaggle_utils.inference" in graph["kaggle_utils.predict"]
    assert "kaggle_utils.inference" in reachable(graph, "kaggle_utils.ensemble")
    assert "kaggle_utils.ensemble.oof" in graph["kaggle_utils.ensemble"]


def test_ensemble_and_predict_never_import_each_other(graph):
    ensemble = [m for m in graph if _in(m, "kaggle_utils.ensemble")]
    assert len(ensemble) > 1, "kaggle_utils.ensemble should be a package of small modules"
    for name in ensemble:
        bad = {m for m in reachable(graph, name) if _in(m, "kaggle_utils.predict")}
        assert not bad, f"{name} imports {bad}: share code through kaggle_utils.inference"
    bad = {m for m in reachable(graph, "kaggle_utils.predict") if _in(m, "kaggle_utils.ensemble")}
    assert not bad, f"kaggle_utils.predict imports {bad}: share code through kaggle_utils.inference"
    bad = {
        m
        for m in reachable(graph, "kaggle_utils.inference")
        if _in(m, "kaggle_utils.ensemble") or _in(m, "kaggle_utils.predict")
    }
    assert not bad, f"kaggle_utils.inference imports {bad}: it is the layer below both"


LAYERS = {
    "io": "constants atomic locks environment allocator config imageio rle rle_kernel layout corrections index synthetic tta",
    "data": "dataset augment folds eda eda_plots",
    "models": "models losses metrics refine postprocess checkpoint optim precision runs",
    "inference": "inference",
    "train / ensemble / predict": "engine train ensemble predict testset shards submit_resume submission plots widgets pseudo",
    "pipeline / kernels": "pipeline kernels notebook",
}
# config validates member files against the registries of models, losses and augment, importing
# them inside the validating functions (a lookup, not a dependency of the schema module itself)
LOOKUPS_AT_VALIDATION = frozenset({"kaggle_utils.config.specs"})


def layer_of(module: str) -> int | None:
    """Index of the layer of `kaggle_utils.X[.Y]` (None for the package itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for i, names in enumerate(LAYERS.values()):
        if parts[1] in names.split():
            return i
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__}")


def test_every_import_goes_down_the_layers():
    graph = import_graph(top_only=LOOKUPS_AT_VALIDATION)
    names = list(LAYERS)
    upward = []
    for module, deps in sorted(graph.items()):
        here = layer_of(module)
        for dep in sorted(deps):
            there = layer_of(dep)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} ({names[here]}) imports {dep} ({names[there]})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    pkg = tmp_path / "kaggle_utils"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rle.py").write_text("from kaggle_utils import train\n")
    (pkg / "train.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kaggle_utils.pipeline\n"
    )
    (pkg / "pipeline.py").write_text("")
    graph = import_graph(pkg)
    assert "kaggle_utils.train" in graph["kaggle_utils.rle"]
    assert layer_of("kaggle_utils.train") > layer_of("kaggle_utils.rle")
    assert "kaggle_utils.pipeline" not in graph["kaggle_utils.train"]  # never runs
