"""dvc.yaml deps that cannot drift: every project module a stage imports is one of its deps.

A stage whose ``cmd`` runs ``python -m pipeline.<name>`` depends on every module of ``pipeline/``
and ``src/convvae/`` that ``pipeline/<name>.py`` imports, directly or through other project
modules, and on the data files packaged beside them that those modules name (e.g.
``published_results.yaml``). A dep missing from dvc.yaml means ``dvc repro`` keeps a stale output
after that file changes. Imports are read with ``ast``, inside functions too; imports built at
run time (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
import posixpath
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Top-level package -> its folder, relative to the repository root.
PROJECT_PACKAGES = {"pipeline": Path("pipeline"), "convvae": Path("src/convvae")}
STAGE_MODULE = re.compile(r"python3?\s+-m\s+(pipeline(?:\.\w+)+)")


@dataclass(frozen=True)
class MissingDep:
    """A file a stage reads through its imports that its deps do not cover."""

    stage: str
    path: str  # relative to the repository root, with "/"
    chain: tuple[str, ...]  # modules from the stage's script to the one that needs ``path``

    def message(self) -> str:
        return (
            f"stage {self.stage!r}: {self.path} is not in its deps "
            f"(reached by {' -> '.join(self.chain)}); add it to the stage's deps in dvc.yaml"
        )


def module_file(module: str, repo_root: Path) -> Path | None:
    """The file of a project module (``convvae.data``, ``pipeline``), or None if not one."""
    top, *rest = module.split(".")
    if top not in PROJECT_PACKAGES:
        return None
    base = (repo_root / PROJECT_PACKAGES[top]).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(module: str, path: Path, repo_root: Path) -> set[str]:
    """The project modules that ``module`` (its source at ``path``) imports anywhere in its body.

    A package's ``__init__.py`` counts only when imported by name (``import convvae``, ``from
    convvae import __version__``), not as the parent of ``convvae.data``: most are a docstring.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against this module's package, or a parent of it
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            # `from convvae import data` imports the module convvae.data, not a name of convvae.
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if module_file(name, repo_root)]
            if len(names) < len(submodules):
                names.append(base)
        else:
            continue
        found.update(name for name in names if module_file(name, repo_root) is not None)
    return found


def packaged_data_files(path: Path) -> set[Path]:
    """Non-Python files beside a module whose names its source spells in a string literal."""
    strings = {
        node.value
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    return {
        file
        for file in path.parent.iterdir()
        if file.is_file() and file.suffix not in (".py", ".pyc") and file.name in strings
    }


def import_closure(script_module: str, repo_root: Path) -> dict[Path, tuple[str, ...]]:
    """Every file the stage script reads through its project imports -> the chain reaching it."""
    chains = {script_module: (script_module,)}
    files = {}
    queue = deque([script_module])
    while queue:
        module = queue.popleft()
        path = module_file(module, repo_root)
        files.setdefault(path, chains[module])
        for data_file in packaged_data_files(path):
            files.setdefault(data_file, (*chains[module], f"reads {data_file.name}"))
        for imported in sorted(imported_modules(module, path, repo_root)):
            if imported not in chains:
                chains[imported] = (*chains[module], imported)
                queue.append(imported)
    return files


def python_stages(dvc_yaml_path: Path) -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (the pipeline module its cmd runs, its deps), for ``python -m`` stages."""
    stages = {}
    for name, stage in (yaml.safe_load(dvc_yaml_path.read_text()) or {}).get("stages", {}).items():
        stage = stage.get("do", stage)  # foreach stages keep their body under `do`
        commands = stage.get("cmd", [])
        for command in [commands] if isinstance(commands, str) else commands:
            match = STAGE_MODULE.search(command)
            if match:
                stages[name] = (match.group(1), [str(dep) for dep in stage.get("deps", [])])
    return stages


def missing_deps(dvc_yaml_path: Path, repo_root: Path) -> list[MissingDep]:
    """Every (stage, file) where a file reached through the stage's imports is not a dep."""
    missing = []
    for stage, (script_module, deps) in python_stages(dvc_yaml_path).items():
        covered = [posixpath.normpath(dep) for dep in deps]
        if module_file(script_module, repo_root) is None:
            continue  # reported by uncovered_imports: no deps can fix a wrong cmd
        for path, chain in import_closure(script_module, repo_root).items():
            relative = path.relative_to(repo_root).as_posix()
            if not any(relative == dep or relative.startswith(f"{dep}/") for dep in covered):
                missing.append(MissingDep(stage, relative, chain))
    return missing


def uncovered_imports(dvc_yaml_path: Path, repo_root: Path) -> list[str]:
    """One message per project file a ``python -m pipeline.*`` stage imports but does not list,
    and per stage whose cmd runs a module that does not exist."""
    no_script = [
        f"stage {stage!r}: its cmd runs {module}, which is not a file under pipeline/"
        for stage, (module, _) in python_stages(dvc_yaml_path).items()
        if module_file(module, repo_root) is None
    ]
    return no_script + [dep.message() for dep in missing_deps(dvc_yaml_path, repo_root)]


def stale_deps(dvc_yaml_path: Path, repo_root: Path) -> list[str]:
    """One message per ``.py`` dep of any stage that does not exist."""
    stale = []
    for name, stage in (yaml.safe_load(dvc_yaml_path.read_text()) or {}).get("stages", {}).items():
        for dep in stage.get("do", stage).get("deps", []):
            if (
                str(dep).endswith(".py")
                and "${" not in str(dep)
                and not (repo_root / dep).is_file()
            ):
                stale.append(f"stage {name!r}: dep {dep} does not exist; remove it from dvc.yaml")
    return stale


def test_every_imported_project_module_is_a_dep():
    problems = uncovered_imports(REPO / "dvc.yaml", REPO)
    assert not problems, "\n".join(problems)


def test_no_python_dep_is_stale():
    problems = stale_deps(REPO / "dvc.yaml", REPO)
    assert not problems, "\n".join(problems)


def test_the_real_dvc_yaml_passes_once_the_reported_files_are_added(tmp_path):
    """What the message asks for is enough: adding each reported file makes dvc.yaml pass."""
    config = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for dep in missing_deps(REPO / "dvc.yaml", REPO):
        stage = config["stages"][dep.stage]
        stage.get("do", stage).setdefault("deps", []).append(dep.path)
    fixed = tmp_path / "dvc.yaml"
    fixed.write_text(yaml.safe_dump(config, sort_keys=False))
    assert python_stages(fixed).keys() == python_stages(REPO / "dvc.yaml").keys()
    assert uncovered_imports(fixed, REPO) == []


def write(root: Path, relative: str, text: str = "") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project: a stage script reaching convvae.deep only through other modules."""
    write(tmp_path, "pipeline/__init__.py", '"""Stages."""\n')
    write(tmp_path, "pipeline/layout.py", "from pathlib import Path\n")
    write(
        tmp_path,
        "pipeline/fit.py",
        "import numpy\nfrom convvae.core import fit\nfrom pipeline import layout\n\n"
        "def main():\n    from convvae import plots  # imported where it is used\n",
    )
    write(tmp_path, "src/convvae/__init__.py", '__version__ = "1"\n')
    write(tmp_path, "src/convvae/core.py", "from . import deep\n\ndef fit():\n    pass\n")
    write(tmp_path, "src/convvae/deep.py", "from .tables import ROWS\n")
    write(tmp_path, "src/convvae/tables.py", 'NAME = "rows.yaml"\n')
    write(tmp_path, "src/convvae/rows.yaml", "a: 1\n")
    write(tmp_path, "src/convvae/plots.py", "import matplotlib\n")
    write(tmp_path, "src/convvae/unused.py", "")
    return tmp_path


def dvc_yaml(root: Path, deps: list[str], cmd: str = "python -m pipeline.fit") -> Path:
    path = root / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": {"fit": {"cmd": cmd, "deps": deps}}}))
    return path


def test_a_module_reached_through_two_imports_must_be_a_dep(project):
    deps = ["pipeline/fit.py", "pipeline/layout.py", "src/convvae/core.py"]
    deps += ["src/convvae/plots.py", "src/convvae/rows.yaml", "src/convvae/tables.py"]
    problems = uncovered_imports(dvc_yaml(project, deps), project)
    assert problems == [
        "stage 'fit': src/convvae/deep.py is not in its deps (reached by pipeline.fit -> "
        "convvae.core -> convvae.deep); add it to the stage's deps in dvc.yaml"
    ]


def test_imports_inside_functions_and_packaged_data_count(project):
    deps = ["pipeline/fit.py", "pipeline/layout.py", "src/convvae/core.py"]
    deps += ["src/convvae/deep.py", "src/convvae/tables.py"]
    missing = missing_deps(dvc_yaml(project, deps), project)
    assert {dep.path: dep.chain for dep in missing} == {
        "src/convvae/plots.py": ("pipeline.fit", "convvae.plots"),
        "src/convvae/rows.yaml": (
            "pipeline.fit",
            "convvae.core",
            "convvae.deep",
            "convvae.tables",
            "reads rows.yaml",
        ),
    }


def test_a_package_init_counts_only_when_imported_by_name(project):
    deps = ["pipeline/", "src/convvae/core.py", "src/convvae/deep.py", "src/convvae/tables.py"]
    deps += ["src/convvae/plots.py", "src/convvae/rows.yaml"]
    assert uncovered_imports(dvc_yaml(project, deps), project) == []
    write(project, "pipeline/layout.py", "from convvae import __version__, deep\n")
    assert [dep.path for dep in missing_deps(dvc_yaml(project, deps), project)] == [
        "src/convvae/__init__.py"
    ]


def test_a_matrix_stage_covered_by_folders_passes(project):
    path = project / "dvc.yaml"
    stage = {
        "matrix": {"seed": [0, 1]},
        "cmd": "python -m pipeline.fit --seed ${item.seed}",
        "deps": ["pipeline/", "src/convvae", "data/${item.seed}.npz"],
    }
    path.write_text(yaml.safe_dump({"stages": {"fit": stage, "other": {"cmd": "echo hi"}}}))
    assert python_stages(path) == {"fit": ("pipeline.fit", stage["deps"])}
    assert uncovered_imports(path, project) == []
    assert stale_deps(path, project) == []


def test_a_stale_python_dep_is_reported(project):
    path = dvc_yaml(project, ["pipeline", "src/convvae", "src/convvae/gone.py"])
    assert uncovered_imports(path, project) == []
    assert stale_deps(path, project) == [
        "stage 'fit': dep src/convvae/gone.py does not exist; remove it from dvc.yaml"
    ]


def test_a_stage_running_a_missing_module_is_reported(project):
    path = dvc_yaml(project, ["pipeline", "src"], cmd="python -m pipeline.gone")
    assert uncovered_imports(path, project) == [
        "stage 'fit': its cmd runs pipeline.gone, which is not a file under pipeline/"
    ]
