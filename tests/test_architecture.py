"""The layers of docs/architecture.md: what may import what; optional dependencies stay optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_import_pulls_no_optional_dependency() -> None:
    # torch itself imports tqdm when it is installed (torch.hub); count only what pretext3d adds
    code = (
        "import sys, torch; before = set(sys.modules); import pretext3d; "
        "optional = ('nibabel', 'PIL', 'matplotlib', 'tqdm', 'pydicom', 'sklearn', 'monai', "
        "'nilearn', 'skimage', 'pytorch_metric_learning', 'lightning', 'timm'); "
        "bad = [m for m in optional if m in sys.modules and m not in before]; "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# The layers of docs/architecture.md, lowest first. A module may import its own package and
# any lower layer, never its own layer's other packages or a higher layer (lazy imports in
# functions included).
LAYERS: dict[str, int] = {
    "_checks": 0,
    "_random": 0,
    "_atomic": 0,
    "_version": 0,
    "config": 0,
    "registry": 0,
    "engine": 1,
    "provenance": 1,
    "functional": 1,
    "permutations": 1,
    "heads": 2,
    "objectives": 2,
    "transforms": 2,
    "models": 3,
    "tasks": 3,
    "pretext_model": 4,
    "diagnostics": 4,
    "data": 5,
    "finetune": 5,
    "pretrainer": 5,
    "experiments": 6,
    "viz": 6,
    "lightning": 6,
    "cli": 7,
}
SRC = Path(__file__).parent.parent / "src" / "pretext3d"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pretext3d":
            names = [node.module] if "." in node.module else [f"pretext3d.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("pretext3d.")]
        found |= {n.split(".")[1] for n in names}
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert packages - {"__init__"} == set(LAYERS) | {"resources"}


def test_layers_import_only_downwards() -> None:
    wrong = []
    for path in SRC.rglob("*.py"):
        package = path.relative_to(SRC).parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        for imported in _imports(path) - {package}:
            if LAYERS[imported] >= LAYERS[package]:
                wrong.append(f"{path.relative_to(SRC)} imports {imported}")
    assert not wrong, wrong
