"""The documentation cannot rot: every Python block of the README and docs/ runs, and the site
builds with mkdocs --strict (broken links, anchors and docstring references are errors)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import pretext3d as p3

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# A block that needs a package the test environment cannot hold starts with "# requires: <module>".
# timm imports torchvision, and no torchvision release loads beside the CPU build of torch 2.13.0
# that the tests pin ("operator torchvision::nms does not exist"); such a block runs where the
# module is installed and, where it is not, in `make test-interop` (tests/interop/docs_blocks.py).
REQUIRES = re.compile(r"^# requires: (\w+)")
OPTIONAL = {"timm", "lightly"}  # the only modules a block may require (both import torchvision)


def _volume_folder(name: str, count: int) -> None:
    folder = Path(name)
    folder.mkdir()
    for i in range(count):
        np.save(folder / f"scan{i}.npy", p3.data.ct_phantom(i, 40).image)


# What a page assumes is on disk (its data folders), written SYNTHETIC into the test's folder.
SETUP: dict[str, Callable[[], None]] = {
    "data.md": lambda: (p3.data.write_task07_phantom(".", 3, 1), p3.data.write_aptos_phantom(".", 4, 1)),
    "pretraining.md": lambda: (_volume_folder("scans", 6), _volume_folder("held-out", 2)),
}


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks of a page run in order in one namespace, like a reader pasting them in turn."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    # a page may register its own
    for registry in (p3.registry.TASKS, p3.registry.ENCODERS, p3.registry.RECIPES, p3.registry.DATA_KINDS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    SETUP.get(page.name, lambda: None)()
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(_blocks(page)):
        needed = REQUIRES.match(code)
        if needed:  # only the interop environment's modules; run there if not installed here
            assert needed.group(1) in OPTIONAL, (
                f"block {i + 1} requires {needed.group(1)}: add it to the test extra"
            )
            if importlib.util.find_spec(needed.group(1)) is None:
                continue
        exec(compile(code, f"{page.name}, python block {i + 1}", "exec"), namespace)


TOML_PAGES = [p for p in PAGES if "```toml" in p.read_text()]


@pytest.mark.parametrize("page", TOML_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_toml_block_parses(page: Path) -> None:
    from pretext3d.config import _toml_loads

    for block in re.findall(r"^```toml\n(.*?)^```", page.read_text(), re.S | re.M):
        _toml_loads(block)  # raises on a syntax error


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """``make docs``: the task figures from the phantoms, then ``mkdocs build --strict``."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    docs = tmp_path / "repo"
    for name in ("docs", "src", "README.md", "CHANGELOG.md", "mkdocs.yml"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, docs / name)
    subprocess.run([sys.executable, "docs/make_figures.py"], cwd=docs, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=docs, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    api = (site / "api" / "tasks" / "index.html").read_text()
    for name in ("pretext3d.tasks.Rotation", "pretext3d.tasks.Jigsaw", "pretext3d.tasks.CPC"):
        assert name in api, name  # the API reference is generated from the docstrings
    assert (site / "figures" / "tasks" / "rotation.png").is_file()
    assert "issue 15: the reproductions" in (site / "changelog" / "index.html").read_text()
