"""The library's version (one place; ``pyproject.toml`` repeats it for the build)."""

__version__ = "0.2.0.dev0"
