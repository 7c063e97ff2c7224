"""The layers of docs/architecture.md: what may import what; optional dependencies stay optional."""

from __future__ import annotations

import subprocess
import sys


def test_import_pulls_no_optional_dependency() -> None:
    # torch itself imports tqdm when it is installed (torch.hub); count only what pretext3d adds
    code = (
        "import sys, torch; before = set(sys.modules); import pretext3d; "
        "optional = ('nibabel', 'PIL', 'matplotlib', 'tqdm', 'pydicom', 'sklearn', 'monai', "
        "'nilearn', 'skimage'); "
        "bad = [m for m in optional if m in sys.modules and m not in before]; "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
