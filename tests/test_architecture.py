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
    "registry": 1,
    "engine": 1,
    "provenance": 1,
    "functional": 1,
    "permutations": 1,
    "heads": 2,
    "objectives": 2,
    "transforms": 2,
    "models": 3,
    "tasks": 3,
    "data": 3,
    "pretext_model": 4,
    "diagnostics": 4,
    "training": 5,
    "finetune": 6,
    "pretrainer": 6,
    "experiments": 7,
    "viz": 7,
    "lightning": 7,
    "cli": 8,
}
# Pairs the layers alone would allow but the design forbids: a loader serves any encoder and task;
# an encoder knows nothing of the training machinery.
FORBIDDEN: set[tuple[str, str]] = {
    ("data", "tasks"),
    ("data", "models"),
    ("data", "pretext_model"),
    ("models", "engine"),
    ("models", "provenance"),
    ("tasks", "engine"),
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


def test_no_forbidden_pairs() -> None:
    wrong = []
    for path in SRC.rglob("*.py"):
        package = path.relative_to(SRC).parts[0].removesuffix(".py")
        wrong += [f"{path.relative_to(SRC)} imports {i}" for i in _imports(path) if (package, i) in FORBIDDEN]
    assert not wrong, wrong


def _module_name(path: Path) -> str:
    return ".".join(("pretext3d", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def test_no_module_imports_a_private_name_of_another() -> None:
    """``from a import _b`` across modules is a seam nobody promised.

    Allowed: a private module of one's own package (``models`` importing ``models._layers``) and
    the public names of a private module (``from pretext3d._checks import check_int``).
    """
    wrong = []
    for path in SRC.rglob("*.py"):
        here = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pretext3d")):
                continue
            folder = SRC.parent.joinpath(*node.module.split("."))
            for alias in node.names:
                if not alias.name.startswith("_") or alias.name.startswith("__") or node.module == here:
                    continue
                own_submodule = (folder / f"{alias.name}.py").exists() and here.startswith(node.module + ".")
                if not own_submodule:
                    wrong.append(f"{here} imports {node.module}.{alias.name}")
    assert not wrong, wrong


def test_the_architecture_page_draws_the_layers_of_this_test() -> None:
    page = (SRC.parent.parent / "docs" / "architecture.md").read_text()
    for package, layer in LAYERS.items():
        if not package.startswith("_") and package not in ("config",):
            lines = [ln for ln in page.splitlines() if ln[:3].strip() == str(layer) and package in ln]
            assert lines, f"docs/architecture.md does not draw {package} on layer {layer}"
    for low, high in FORBIDDEN:
        assert f"`{low}` ↛ `{high}`" in page, f"docs/architecture.md does not list {low} ↛ {high}"
