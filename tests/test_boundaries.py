"""Module boundaries, read from the source with ``ast`` (nothing is imported).

``data/`` (formats and batching) and ``features/`` (extractors) are independent siblings that the
pipelines (``prepare``, ``predict``) combine; ``nn/`` and ``model.py`` depend only on torch, PyG
and the leaf module ``redifu.errors``; and no two parts of redifu import each other. Imports
inside functions count (a lazy import is still a dependency); imports under
``if TYPE_CHECKING:`` do not (they exist only for annotations).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "redifu"
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever in the file, except under
    ``if TYPE_CHECKING:``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # `from redifu.data import registry` imports the submodule redifu.data.registry
            found.update(f"{name}.{alias.name}" for alias in node.names
                         if (SOURCE.parent / Path(*f"{name}.{alias.name}".split("."))).with_suffix(".py").is_file()
                         or (SOURCE.parent / Path(*f"{name}.{alias.name}".split(".")) / "__init__.py").is_file())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def _files(part: str) -> list[Path]:
    target = SOURCE / part
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


def _unit(name: str) -> str | None:
    """The part of redifu that module ``name`` belongs to: ``redifu.data``, ``redifu.model``, ..."""
    parts = name.split(".")
    if parts[0] != "redifu" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def _within(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def _violations(part: str, allowed_redifu: tuple[str, ...], *, third_party: tuple[str, ...] | None = None):
    """``(file, imported module)`` pairs of ``part`` that break its rule."""
    bad = []
    for path in _files(part):
        for name in sorted(imports_of(path)):
            top = name.split(".")[0]
            if top == "redifu":
                if name != "redifu" and not _within(name, allowed_redifu):
                    bad.append((str(path.relative_to(SOURCE)), name))
            elif third_party is not None and top not in STDLIB and top not in third_party:
                bad.append((str(path.relative_to(SOURCE)), name))
    return bad


def test_the_import_reader_sees_lazy_relative_and_type_checking_imports(tmp_path, monkeypatch):
    package = tmp_path / "redifu" / "data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "store.py").write_text("")
    probe = package / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import store\n"
        "from ..errors import DataError\n"
        "if TYPE_CHECKING:\n    from redifu.config import DataConfig\n"
        "def f():\n    import redifu.features.text\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SOURCE", tmp_path / "redifu")
    assert imports_of(probe) == {"typing", "redifu.data", "redifu.data.store", "redifu.errors",
                                 "redifu.features.text"}


def test_data_imports_no_features_pipelines_training_or_model():
    files = _files("data")
    assert len(files) >= 10  # the rule below would pass vacuously on an empty package
    # data/ is formats and batching: it may use the leaf modules and itself, nothing else of
    # redifu (not features, prepare, predict, training, model, nn, config, checkpoint, cli).
    assert _violations("data", ("redifu.errors", "redifu.files", "redifu.data")) == []


@pytest.mark.parametrize("path", [str(p.relative_to(SOURCE)) for p in _files("features")])
def test_features_do_not_import_data(path):
    allowed = ("redifu.errors", "redifu.files", "redifu.features")
    bad = [name for name in sorted(imports_of(SOURCE / path)) if _unit(name) and not _within(name, allowed)]
    assert bad == []


def test_features_rule_sees_every_extractor():
    assert {"features/audio.py", "features/text.py"} <= {str(p.relative_to(SOURCE)) for p in _files("features")}


def test_nn_and_model_import_only_torch_pyg_stdlib_and_the_leaf():
    assert len(_files("nn")) >= 5
    bad = _violations("nn", ("redifu.errors", "redifu.nn"), third_party=("torch", "torch_geometric"))
    bad += _violations("model", ("redifu.errors", "redifu.nn"), third_party=("torch", "torch_geometric"))
    if bad:  # the model/nn part of issue 11 is another branch's work
        pytest.xfail(f"model/nn imports outside torch, PyG and redifu.errors (another branch's part): {bad}")
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each as a path that returns to its start)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                walk(target, trail + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles_between_the_parts_of_redifu():
    graph: dict[str, set[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        unit = _unit(_module_name(path))
        if unit is None:
            continue
        targets = {_unit(name) for name in imports_of(path)} - {None, unit}
        graph.setdefault(unit, set()).update(targets)  # type: ignore[arg-type]
    assert {"redifu.data", "redifu.features", "redifu.nn", "redifu.model", "redifu.prepare"} <= set(graph)
    assert "redifu.data" in graph["redifu.prepare"]  # the graph has edges
    assert _cycles(graph) == []


def _name_branches(text: str, names: set[str]) -> list[str]:
    """``line: name`` for every comparison (or ``match`` case) against one of ``names``."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Compare):
            constants = [c for o in (node.left, *node.comparators) for c in ast.walk(o) if isinstance(c, ast.Constant)]
            found += [f"{node.lineno}: {c.value!r}" for c in constants if isinstance(c.value, str) and c.value in names]
        elif isinstance(node, ast.match_case):
            found += [f"{node.pattern.lineno}: {c.value!r}" for c in ast.walk(node.pattern)
                      if isinstance(c, ast.Constant) and c.value in names]
    return found


def test_the_branch_finder_finds_name_branches():
    code = 'if name == "meld":\n    pass\nx = 1 if d in ("a", "iemocap") else 2\nmatch d:\n    case "meld": pass\n'
    assert sorted(_name_branches(code, {"meld", "iemocap"})) == ["1: 'meld'", "3: 'iemocap'", "5: 'meld'"]
    assert _name_branches('reader = get("meld")\n', {"meld"}) == []


def test_pipelines_do_not_branch_on_a_dataset_name():
    """A dataset's specifics live in its registry entry: no ``name == "meld"`` (nor ``in``) in code."""
    from redifu.data import registry
    from redifu.data.synthetic import PRESETS

    names = set(registry.names()) | set(PRESETS) | {registry.get(n).title for n in registry.names()}
    offenders = [f"{path.relative_to(SOURCE)}:{hit}" for path in sorted(SOURCE.rglob("*.py"))
                 if path != SOURCE / "data" / "registry.py"
                 for hit in _name_branches(path.read_text(encoding="utf-8"), names)]
    assert offenders == []
