"""The package as users install it: declared dependencies, and a built wheel that works."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from conftest import TINY_DATA_OVERRIDES, TINY_MODEL_OVERRIDES

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "redifu"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def declared_dependencies(pyproject: dict) -> tuple[set[str], set[str]]:
    """(core distributions, distributions of every extra), normalised names."""
    project = pyproject["project"]
    core = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras = {_requirement_name(r) for group in project.get("optional-dependencies", {}).values() for r in group}
    return core, extras - {"redifu"}


def imported_modules(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Third-party top-level modules imported by the package's files: (at module level, inside
    functions), each with the files that import it."""
    eager: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(node) for function in functions for node in ast.walk(function)}
        guarded = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "redifu" or top == "__future__" or id(node) in guarded:
                    continue
                target = lazy if id(node) in inside else eager
                target.setdefault(top, set()).add(str(path.relative_to(root)))
    return eager, lazy


def undeclared(pyproject: dict, root: Path = PACKAGE) -> list[str]:
    """One line per imported module that ``pyproject`` does not declare where it must be."""
    core, extras = declared_dependencies(pyproject)
    distributions = packages_distributions()
    eager, lazy = imported_modules(root)

    def names(module: str) -> set[str]:
        # A module that is not installed here is assumed to be distributed under its own name.
        return {_normalise(d) for d in distributions.get(module, [module])}

    problems = []
    for module, files in sorted(eager.items()):
        if not names(module) & core:
            problems.append(f"{module} (imported at module level by {', '.join(sorted(files))}) is not a core dependency")
    for module, files in sorted(lazy.items()):
        if not names(module) & (core | extras):
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is neither a dependency nor in an extra")
    return problems


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_imported_module_is_declared(pyproject):
    assert undeclared(pyproject) == []


def test_the_modules_the_issue_named_are_found_and_required(pyproject):
    eager, lazy = imported_modules(PACKAGE)
    # The checker sees what the code imports, eagerly and lazily ...
    assert {"torch", "lightning", "scipy", "torchmetrics", "yaml", "sklearn"} <= set(eager)
    assert {"tqdm", "sentence_transformers", "opensmile", "soundfile", "av"} <= set(lazy) | set(eager)
    # ... and maps import names to distributions (yaml -> pyyaml, sklearn -> scikit-learn).
    core, _ = declared_dependencies(pyproject)
    assert {"torch", "lightning", "scipy", "torchmetrics", "tqdm", "pyyaml", "scikit-learn"} <= core


@pytest.mark.parametrize("removed", ["scipy", "torchmetrics", "tqdm", "pyyaml", "scikit-learn", "opensmile",
                                     "sentence-transformers"])
def test_removing_a_declaration_is_caught(pyproject, removed):
    project = dict(pyproject["project"])
    project["dependencies"] = [r for r in project["dependencies"] if _requirement_name(r) != removed]
    project["optional-dependencies"] = {
        extra: [r for r in group if _requirement_name(r) != removed]
        for extra, group in project.get("optional-dependencies", {}).items()
    }
    problems = undeclared({**pyproject, "project": project})
    assert problems, f"removing {removed} went unnoticed"


def test_an_optional_module_imported_at_module_level_must_be_core(pyproject, tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "eager.py").write_text("import opensmile\n")
    (package / "lazy.py").write_text("def f():\n    import soundfile\n")
    assert [line.split()[0] for line in undeclared(pyproject, package)] == ["opensmile"]


def test_torch_floor_allows_the_readme_pin(pyproject):
    torch = next(r for r in pyproject["project"]["dependencies"] if _requirement_name(r) == "torch")
    floor = tuple(int(part) for part in re.search(r">=\s*([\d.]+)", torch).group(1).split("."))
    assert (2, 4) <= floor <= (2, 13)  # nn.RMSNorm needs 2.4; `pip install torch==2.13.0 -e .` must hold


# -- the wheel --------------------------------------------------------------------------------

def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what a clone has (the configs link included), so no build/ or
    # egg-info lands in the working tree and nothing stale from it lands in the wheel.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", source / "src", symlinks=True, ignore=junk)
    shutil.copytree(REPO / "configs", source / "configs", symlinks=True, ignore=junk)
    # No build isolation: the build uses this environment's setuptools (no network needed).
    result = _pip("wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out), cwd=out)
    assert result.returncode == 0, result.stderr[-2000:]
    (built,) = out.glob("redifu-*.whl")
    return built


@pytest.mark.integration
def test_the_wheel_ships_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"redifu/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert shipped and shipped <= names
    assert "redifu/configs/authors-recipe-meld.yaml" in names


@pytest.mark.integration
def test_the_wheel_ships_the_serve_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {f"redifu/serve/static/{p.name}" for p in (PACKAGE / "serve" / "static").iterdir()}
    assert {"redifu/serve/static/index.html", "redifu/serve/static/app.js", "redifu/serve/static/style.css"} <= page
    assert page <= names


@pytest.mark.integration
def test_the_wheel_ships_the_pretrained_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    model = PACKAGE / "pretrained" / "meld-text"
    shipped = {f"redifu/pretrained/meld-text/{p.relative_to(model).as_posix()}" for p in model.rglob("*") if p.is_file()}
    assert "redifu/pretrained/meld-text/text-encoder/adapter.safetensors" in shipped
    assert shipped <= names


@pytest.mark.integration
def test_the_installed_wheel_trains_from_a_shipped_config_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    result = _pip("install", "--no-deps", "-q", "--target", str(target), str(wheel), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}

    def redifu(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "redifu", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    located = subprocess.run([sys.executable, "-c", "import redifu; print(redifu.__file__)"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert Path(located.stdout.strip()).is_relative_to(target), located.stdout + located.stderr

    help_ = redifu("train", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "synthetic-meld" in help_.stdout and "authors-recipe-meld" in help_.stdout

    trained = redifu("train", "--config", "synthetic-meld", "--output", "run", "training.max_epochs=1",
                     "training.progress_bar=false", "training.logger=none", *TINY_DATA_OVERRIDES,
                     *TINY_MODEL_OVERRIDES)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = work / "run"
    assert {"config.yaml", "metrics.json", "checkpoint"} <= {p.name for p in run.iterdir()}
    assert "preset: meld" in (run / "config.yaml").read_text()

    unknown = redifu("train", "--config", "meld-txt", "--output", "never")
    assert unknown.returncode == 2 and "meld-text" in unknown.stderr and "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
