"""The documentation blocks that need a package only the interop environment holds."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"
PRELUDE = "import torch\nimport pretext3d as p3\ngen = torch.Generator().manual_seed(0)\n"


def run_blocks_requiring(module: str) -> int:
    """Run every Python block of the docs that starts with ``# requires: <module>``; how many ran."""
    ran = 0
    for page in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M):
            if block.startswith(f"# requires: {module}"):
                exec(compile(PRELUDE + block, f"{page.name} ({module})", "exec"), {})
                ran += 1
    return ran
