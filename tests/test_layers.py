"""Import contracts of kaggle_utils, read from the source (ast), not by importing it.

Today's contract: 05's `ensemble` and 06's `predict` share `inference` and never import each other,
directly or through another module (a cycle between them is how two inference paths grew). The
helpers are general so that further layer rules can be added beside it.
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


def imports_of(module_path: str | Path, package_dir: Path = PACKAGE) -> set[str]:
    """Absolute names a module imports anywhere in its body (imports inside functions count: they
    run too). `import a.b` gives a.b; `from a import b` gives a and a.b (b may be a submodule);
    relative imports are resolved against the module's own package."""
    path = Path(module_path)
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
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


def import_graph(package_dir: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports directly (an imported attribute counts as its
    module; importing a submodule runs its parent packages' __init__ too)."""
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for imported in imports_of(path, package_dir):
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
