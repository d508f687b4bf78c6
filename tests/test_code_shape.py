"""The shape of the code: short units (modules up to 400 lines, functions 60, classes 250), and
imports that only run down the layers of src/convvae: the foundation (errors, config, runtime)
< data < model < training < anomaly < uses, benchmark, serving < tracking < cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "convvae"
CHECKED = [PACKAGE, REPO / "pipeline", REPO / "speed"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_CLASS_LINES = 400, 60, 250
# Each part of the package and the parts it may import besides itself. Every part may import
# the foundation (errors, yamlconfig, config, runtime), whose parts import only each other.
FOUNDATION = {"errors", "yamlconfig", "config", "runtime"}
MAY_IMPORT = {
    **dict.fromkeys(FOUNDATION, FOUNDATION),
    "data": FOUNDATION,
    "metrics": FOUNDATION,
    "model": FOUNDATION | {"data"},
    "training": FOUNDATION | {"data", "model"},
    "anomaly": FOUNDATION | {"data", "model", "training", "metrics"},
    "uses": FOUNDATION | {"data", "model", "training", "anomaly", "metrics"},
    "benchmark": FOUNDATION | {"data", "model", "training", "anomaly", "metrics"},
    "serving": FOUNDATION | {"data", "model", "anomaly", "uses"},
    "tracking": FOUNDATION
    | {"data", "model", "training", "anomaly", "metrics", "uses", "benchmark", "serving"},
}


def python_files() -> list[Path]:
    return sorted(p for folder in CHECKED for p in folder.rglob("*.py"))


def part_of(path: Path) -> str:
    """The layer a module of the package belongs to: its subpackage, or its own name."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_no_module_function_or_class_is_too_long():
    too_long = []
    for path in python_files():
        source = path.read_text("utf-8")
        where = path.relative_to(REPO)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            limit = {
                ast.FunctionDef: MAX_FUNCTION_LINES,
                ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                ast.ClassDef: MAX_CLASS_LINES,
            }.get(type(node))
            if limit is None:
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if node.end_lineno - first + 1 > limit:
                too_long.append(
                    f"{where}:{node.lineno} {node.name}: {node.end_lineno - first + 1} lines"
                )
    assert not too_long, "over the limits (module 400, function 60, class 250):\n" + "\n".join(
        too_long
    )


def imported_parts(path: Path) -> set[str]:
    """The parts of the package a module imports (anywhere in its body)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if (
                parts[0] == "convvae"
                and len(parts) > 1
                and (PACKAGE / parts[1]).exists()
                or (
                    parts[0] == "convvae"
                    and len(parts) > 1
                    and (PACKAGE / f"{parts[1]}.py").exists()
                )
            ):
                found.add(parts[1])
    return found


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_only_run_down_the_layers(path):
    part = part_of(path)
    if part in ("cli", "__init__"):
        return  # the command line may import every layer
    upward = imported_parts(path) - MAY_IMPORT[part] - {part}
    assert not upward, (
        f"{path.relative_to(REPO)} ({part}) imports {sorted(upward)}: a layer above it"
    )


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(path) for path in PACKAGE.rglob("*.py")} - {"cli", "__init__"}
    assert parts == set(MAY_IMPORT)


def test_package_folders_have_empty_init_files():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent != PACKAGE:
            assert init.read_text().strip() == "", f"{init.relative_to(REPO)} is not empty"


def test_the_stages_shared_layout_imports_only_the_foundation():
    """pipeline/layout.py is imported by every stage, so every module it reaches is a dep of
    every stage in dvc.yaml: a scoring module there would make `prepare` rerun (and the whole
    pipeline after it) whenever scoring code changes."""
    reached = imported_parts(REPO / "pipeline" / "layout.py")
    assert reached <= FOUNDATION, f"pipeline/layout.py imports {sorted(reached - FOUNDATION)}"
