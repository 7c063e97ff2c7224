"""The documentation blocks that need a package only the interop environment holds."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).parents[2] / "docs" / "extending.md"


def run_blocks_requiring(module: str) -> int:
    """Run every Python block of the page that starts with ``# requires: <module>``; how many ran."""
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.S | re.M)
    needed = [b for b in blocks if b.startswith(f"# requires: {module}")]
    for block in needed:
        prelude = "import torch\nimport pretext3d as p3\ngen = torch.Generator().manual_seed(0)\n"
        exec(compile(prelude + block, f"{PAGE.name} ({module})", "exec"), {})
    return len(needed)
