"""``make notebooks``: execute the example notebooks and write them as ``.ipynb`` beside their sources.

The notebooks are kept as jupytext percent scripts (``examples/*/notebook.py``); this reads each,
runs it in a Jupyter kernel in its own folder (in the mode ``PRETEXT3D_MODE`` names, ``quick`` by
default) and writes ``notebook.ipynb`` with its outputs. Needs ``pip install 'pretext3d[notebooks]'``.

    python examples/execute_notebooks.py [pancreas] [fundus]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbclient

EXAMPLES = Path(__file__).parent


def main() -> None:
    for name in sys.argv[1:] or ["pancreas", "fundus"]:
        folder = EXAMPLES / name
        notebook = jupytext.read(folder / "notebook.py")
        print(f"executing {folder / 'notebook.py'} ...", flush=True)
        nbclient.NotebookClient(
            notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
        ).execute()
        jupytext.write(notebook, folder / "notebook.ipynb")
        print(f"wrote {folder / 'notebook.ipynb'}")


if __name__ == "__main__":
    main()
