"""The ``pretext3d`` command's entry point.

It lies outside the package so that a Ctrl-C while the package and PyTorch are imported (a second
or more) ends the command quietly instead of with a traceback through the imports.
"""

from __future__ import annotations

import sys


def console() -> None:
    """Import the command line and run it (``pretext3d.cli.console``); exit 130 on an early Ctrl-C."""
    try:
        from pretext3d.cli import console as run
    except KeyboardInterrupt:
        sys.stderr.write("pretext3d: interrupted while starting; nothing was run\n")
        raise SystemExit(130) from None
    run()
