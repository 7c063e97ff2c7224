"""An on-disk cache of preprocessed cases that a crash can never corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pretext3d._atomic import atomic_path, remove_stale_temporaries

__all__ = ["CaseCache"]


class CaseCache:
    """Preprocessed arrays under ``root/<key>/``, one ``.npy`` per case and part.

    ``key`` should change whenever the preprocessing does (e.g.
    :meth:`~pretext3d.data.preprocess.CTPreprocessing.key`), so stale results are never
    read. Files are written under a temporary name and renamed; the image is written
    last, and a case counts as cached only when its image file exists, so an
    interrupted write is simply redone.

    Examples:
        >>> import numpy as np
        >>> cache = CaseCache("cache", key=p3.data.CTPreprocessing().key())
        >>> cache.has("pancreas_001")
        False
        >>> cache.store("pancreas_001", np.zeros((4, 4, 4), np.float16), np.zeros((4, 4, 4), np.uint8))
        >>> image, label = cache.load("pancreas_001", label=True)
        >>> cache.has("pancreas_001", label=True), image.shape
        (True, (4, 4, 4))
    """

    def __init__(self, root: str | os.PathLike[str], key: str) -> None:
        self.folder = Path(root) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)  # left by a killed writer

    def path(self, case: str, part: str) -> Path:
        """Where part ``part`` (``"image"`` or ``"label"``) of ``case`` is stored."""
        return self.folder / f"{case}_{part}.npy"

    def has(self, case: str, *, label: bool = False) -> bool:
        """Whether ``case`` is completely cached (with its label, when ``label``).

        An unlabelled pool and a labelled set may share one cache: a case that the pool
        cached without its label is not "cached" for the labelled set, which then writes it.
        """
        return self.path(case, "image").exists() and (not label or self.path(case, "label").exists())

    def load(self, case: str, *, label: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The cached image (and label, when ``label``) of ``case``.

        Raises:
            ValueError: a cached file cannot be read (damaged on disk); names the case and the
                file, which is removed so that the next read recomputes it.
        """
        image = self._read(case, "image")
        return image, self._read(case, "label") if label else None

    def _read(self, case: str, part: str) -> np.ndarray:
        path = self.path(case, part)
        try:
            array: np.ndarray = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            path.unlink(missing_ok=True)
            raise ValueError(
                f"the cached {part} of case {case!r} ({str(path)!r}) cannot be read ({err}); it was "
                "removed: run again to recompute it"
            ) from err
        return array

    def store(self, case: str, image: np.ndarray, label: np.ndarray | None = None) -> None:
        """Write ``case`` atomically (label first, image last)."""
        if label is not None:
            self._write(self.path(case, "label"), label)
        self._write(self.path(case, "image"), image)

    @staticmethod
    def _write(path: Path, array: np.ndarray) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
