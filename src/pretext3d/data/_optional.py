"""Import optional readers lazily, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRAS = {"nibabel": "nifti", "pydicom": "dicom", "PIL": "images"}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that says which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = _EXTRAS.get(module.split(".")[0], "data")
        raise ImportError(
            f"{module} is needed for this; install it with: pip install 'pretext3d[{extra}]' "
            "(or 'pretext3d[data]' for every reader)"
        ) from err
