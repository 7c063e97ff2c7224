"""Medical preprocessing: CT resampling, windowing and cropping; fundus preprocessing.

CT (Taleb et al.'s pancreas pipeline, done right):

* orientation: volumes are read in the closest canonical orientation, RAS+ (see
  :func:`pretext3d.data.io.read_nifti`);
* spacing-aware resampling to a target spacing: images with linear (or cubic)
  interpolation, labels with nearest neighbour (the original interpolated labels
  linearly and created spurious pancreas voxels around tumours);
* an HU window with z-scoring (clip to ``[-96, 215]``, then standardise) or the
  paper's min-max scaling;
* a crop to the body or a fixed box, and the paper's "resize to 128³" as an option.

Fundus: Ben Graham's preprocessing (crop the dark border, resize, subtract the local
Gaussian mean, circular mask) or a plain resize to 224, as the paper did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pretext3d._checks import check_choice, check_int
from pretext3d.config import checked

__all__ = [
    "CTPreprocessing",
    "FundusPreprocessing",
    "Geometry",
    "ben_graham",
    "crop_or_pad",
    "crop_to_body",
    "resample_to_spacing",
    "resize_image",
    "resize_volume",
    "window",
]


_MIN_RESAMPLED = 4  # voxels per axis after resampling; fewer means the header's spacing is wrong


def _target_shape(
    shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[int, ...]:
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def resize_volume(array: np.ndarray, shape: tuple[int, ...], *, label: bool = False) -> np.ndarray:
    """Resize a 3D array to ``shape``: linear for images, nearest neighbour for labels.

    Voxels are treated as cells (``align_corners=False``), so the physical extent is kept.
    Label values are never mixed: every output voxel takes one input voxel's value.

    Examples:
        >>> import numpy as np
        >>> label = np.zeros((8, 8, 8), np.uint8)
        >>> label[2:6, 2:6, 2:6] = 2
        >>> out = resize_volume(label, (16, 16, 16), label=True)   # nearest neighbour: no new labels
        >>> out.shape, sorted(np.unique(out).tolist())
        ((16, 16, 16), [0, 2])
    """
    tensor = torch.from_numpy(np.array(array, copy=True))[None, None]
    if label:
        out = F.interpolate(tensor.float(), size=shape, mode="nearest-exact")
        return out[0, 0].numpy().astype(array.dtype)
    out = F.interpolate(tensor.float(), size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def resample_to_spacing(
    array: np.ndarray,
    spacing: tuple[float, ...],
    target: tuple[float, ...],
    *,
    label: bool = False,
) -> np.ndarray:
    """Resample a 3D array from ``spacing`` to ``target`` spacing (mm).

    The new size is ``round(size * spacing / target)`` per axis, so the physical extent
    changes by less than one target voxel.

    Examples:
        >>> import numpy as np
        >>> resample_to_spacing(np.zeros((40, 40, 10)), (1.0, 1.0, 5.0), (2.0, 2.0, 2.5)).shape
        (20, 20, 20)
    """
    return resize_volume(array, _target_shape(array.shape, spacing, target), label=label)


def window(
    array: np.ndarray, low: float, high: float, mode: Literal["zscore", "minmax"] = "zscore"
) -> np.ndarray:
    """Clip to ``[low, high]`` HU, then standardise (``zscore``) or scale to ``[0, 1]`` (``minmax``).

    Examples:
        >>> import numpy as np
        >>> window(np.array([-1000.0, 0.0, 100.0, 1000.0]), -100, 200, mode="minmax").tolist()
        [0.0, 0.33333..., 0.66666..., 1.0]
    """
    clipped = np.clip(array.astype(np.float32), low, high)
    if mode == "minmax":
        return (clipped - low) / (high - low)
    std = float(clipped.std())
    return (clipped - float(clipped.mean())) / (std if std > 0 else 1.0)


def crop_to_body(array: np.ndarray, threshold: float = -500.0, margin: int = 2) -> tuple[slice, ...]:
    """Bounding box (as slices) of the voxels above ``threshold`` HU, plus a margin.

    The largest connected component is taken, so the scanner table and stray air
    voxels do not widen the box. The whole volume if nothing is above the threshold.

    Examples:
        >>> import numpy as np
        >>> scan = np.full((20, 20, 20), -1000.0)   # air
        >>> scan[5:15, 6:14, 2:18] = 40.0   # soft tissue
        >>> crop_to_body(scan, margin=2)
        (slice(3, 17, None), slice(4, 16, None), slice(0, 20, None))
    """
    mask = array > threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return tuple(slice(0, n) for n in array.shape)
    sizes = np.bincount(labels.ravel())[1:]
    body = labels == (int(np.argmax(sizes)) + 1)
    boxes = ndimage.find_objects(body.astype(np.int8))[0]
    return tuple(
        slice(max(0, b.start - margin), min(n, b.stop + margin))
        for b, n in zip(boxes, array.shape, strict=True)
    )


def crop_or_pad(array: np.ndarray, shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    """Centre-crop or pad (with ``fill``) to ``shape``.

    Examples:
        >>> import numpy as np
        >>> crop_or_pad(np.ones((4, 10)), (6, 6), fill=-1.0).tolist()[0]   # rows padded, columns cropped
        [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
    """
    out = np.full(shape, fill, dtype=array.dtype)
    src, dst = [], []
    for n, m in zip(array.shape, shape, strict=True):
        if n >= m:
            start = (n - m) // 2
            src.append(slice(start, start + m))
            dst.append(slice(0, m))
        else:
            start = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = array[tuple(src)]
    return out


@dataclass(frozen=True)
class Geometry:
    """What :meth:`CTPreprocessing.transform` did to a scan's voxel grid, step by step.

    Attributes:
        steps: ``("resize", shape before)``, ``("box", (shape before, ((start, stop), ...)))``
            (the body crop) or ``("crop_or_pad", shape before)``, in the order applied.

    Examples:
        >>> import numpy as np
        >>> label = np.zeros((10, 12, 8), np.int16)
        >>> label[2:6, 3:9, 1:5] = 1
        >>> pipeline = CTPreprocessing.preset("mr", crop=(8, 8, 8), dtype="float32")
        >>> _, cropped, geometry = pipeline.transform(label.astype(np.float32), (1.0, 1.0, 1.0), label)
        >>> geometry.steps, bool((geometry.restore(cropped) == label).all())   # a crop undone exactly
        ((('crop_or_pad', (10, 12, 8)),), True)
    """

    steps: tuple[tuple[str, Any], ...] = ()

    def restore(self, label: np.ndarray) -> np.ndarray:
        """A label map of the preprocessed grid put back on the scan's (background 0 outside the crop).

        The steps undone in reverse: resizes by nearest neighbour (no new label values), a
        crop placed back into zeros, a centre crop or pad reversed.
        """
        for step, value in reversed(self.steps):
            if step == "resize":
                label = resize_volume(label, tuple(value), label=True)
            elif step == "box":
                shape, box = value
                out = np.zeros(tuple(shape), dtype=label.dtype)
                out[tuple(slice(a, b) for a, b in box)] = label
                label = out
            else:
                label = crop_or_pad(label, tuple(value))
        return label


@checked
@dataclass(frozen=True)
class CTPreprocessing:
    """The CT pipeline's arguments; call it on an image (and label) to apply them.

    The defaults are the paper's CT pipeline; :meth:`preset` gives MR's and an untouched one
    (the volume kinds of a config take them as ``data.preprocessing.modality``).

    Args:
        spacing: target spacing in mm per axis, or ``None`` to keep the scan's.
        interpolation: ``"linear"`` or ``"cubic"`` for images (labels: nearest always).
        window: HU range to clip to, or ``None`` (no clipping: MR, or already normalised data).
        normalize: ``"zscore"`` (standardise after the window), the paper's ``"minmax"``
            (the window to [0, 1]; needs a window), ``"percentile"`` (MR: clip to the image's
            0.5-99.5 percentiles, then standardise) or ``"none"``.
        crop: ``"body"`` (bounding box of the body), ``None``, or a fixed box size.
        resize: a final size, e.g. ``(128, 128, 128)`` as in the paper, or ``None``.
        dtype: ``"float16"`` or ``"float32"`` for the stored image.

    Examples:
        >>> case = p3.data.ct_phantom(0, size=32)   # SYNTHETIC, in HU
        >>> pipeline = CTPreprocessing(spacing=(10.0, 10.0, 10.0), crop=None, resize=(24, 24, 24),
        ...                            dtype="float32")
        >>> image, label = pipeline(case.image, case.spacing, case.label)
        >>> image.shape, label.shape, image.dtype
        ((24, 24, 24), (24, 24, 24), dtype('float32'))
        >>> pipeline.key() != CTPreprocessing().key()   # the cache key changes with any argument
        True

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020 (the pancreas
          pipeline).
    """

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 2.5)
    interpolation: Literal["linear", "cubic"] = "linear"
    window: tuple[float, float] | None = (-96.0, 215.0)
    normalize: Literal["zscore", "minmax", "percentile", "none"] = "zscore"
    crop: Literal["body"] | tuple[int, int, int] | None = "body"
    resize: tuple[int, int, int] | None = None
    dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        """Check the arguments."""
        check_choice("interpolation", self.interpolation, ("linear", "cubic"))
        check_choice("normalize", self.normalize, ("zscore", "minmax", "percentile", "none"))
        if self.normalize == "minmax" and self.window is None:
            raise ValueError('normalize="minmax" scales the window to [0, 1]: give a window (low, high)')
        if not (
            self.crop is None or self.crop == "body" or (isinstance(self.crop, tuple) and len(self.crop) == 3)
        ):
            raise ValueError(f"crop must be 'body', None or a 3-tuple of sizes, got {self.crop!r}")
        if self.window is not None and not (
            len(self.window) == 2 and np.isfinite(self.window).all() and self.window[0] < self.window[1]
        ):
            raise ValueError(f"window must be None or finite (low, high) with low < high, got {self.window}")
        for name in ("spacing", "resize"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or not all(np.isfinite(v) and v > 0 for v in value)):
                raise ValueError(f"{name} must be None or three finite sizes > 0, got {value!r}")
        if isinstance(self.crop, tuple) and not all(isinstance(v, int) and v > 0 for v in self.crop):
            raise ValueError(f"crop must be 'body', None or three sizes >= 1, got {self.crop!r}")
        check_choice("dtype", self.dtype, ("float16", "float32"))

    @classmethod
    def preset(cls, modality: str, **changes: Any) -> CTPreprocessing:
        """The pipeline of a modality, with ``changes`` to its fields.

        - ``"ct"``: the paper's (1.5 x 1.5 x 2.5 mm, body crop, [-96, 215] HU, z-score);
        - ``"mr"``: no resampling or crop, the 0.5-99.5 percentiles, z-score (MR intensities
          have no absolute scale);
        - ``"none"``: the scan as it is (float values, no resampling, crop or normalisation).

        Examples:
            >>> mr = CTPreprocessing.preset("mr")
            >>> mr.spacing, mr.window, mr.normalize, mr.crop
            (None, None, 'percentile', None)
            >>> CTPreprocessing.preset("pet")
            Traceback (most recent call last):
            ValueError: modality must be one of ['ct', 'mr', 'none'], got 'pet'
        """
        check_choice("modality", modality, tuple(_PRESETS))
        return cls(**{**_PRESETS[modality], **changes})

    def key(self) -> str:
        """A short hash of every argument: changes whenever any of them does."""
        text = json.dumps({"version": 1, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def __call__(
        self, image: np.ndarray, spacing: tuple[float, ...], label: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocess a canonical-orientation CT image in HU (and its label).

        Returns:
            ``(image, label)``: the image normalised, in ``dtype``; the label as int16.
        """
        image, label, _ = self.transform(image, spacing, label)
        return image, label

    def transform(
        self, image: np.ndarray, spacing: tuple[float, ...], label: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
        """As calling it, with the :class:`Geometry` that puts a label map back on the scan's grid.

        Examples:
            >>> import numpy as np
            >>> scan = np.full((20, 20, 10), -1000.0)   # air around a box of soft tissue
            >>> scan[4:16, 5:15, 2:8] = 40.0
            >>> pipeline = CTPreprocessing(spacing=(2.0, 2.0, 2.0), resize=(8, 8, 8), dtype="float32")
            >>> image, _, geometry = pipeline.transform(scan, (1.0, 1.0, 1.0))
            >>> image.shape, geometry.restore(np.ones((8, 8, 8), np.int16)).shape   # back on the scan's grid
            ((8, 8, 8), (20, 20, 10))
        """
        if label is not None and label.shape != image.shape:
            raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be three finite voxel sizes > 0 (mm), got {spacing!r}")
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise ValueError(
                f"image holds {int((~np.isfinite(image)).sum())} NaN or infinite values; one would make "
                "the whole normalised volume NaN"
            )
        steps: list[tuple[str, Any]] = []
        if self.spacing is not None:
            shape = _target_shape(image.shape, spacing, self.spacing)
            if min(shape) < _MIN_RESAMPLED:
                raise ValueError(
                    f"resampling a {image.shape} volume of {tuple(round(float(v), 4) for v in spacing)} mm "
                    f"voxels to {self.spacing} mm leaves {shape} voxels: the header's voxel size is "
                    "implausible for a scan (check its pixdim / PixelSpacing), or set spacing=None"
                )
            steps.append(("resize", image.shape))
            image = self._resize_image(image, shape)
            label = None if label is None else resize_volume(label, shape, label=True)
        if self.crop == "body":
            box = crop_to_body(image)
            steps.append(("box", (image.shape, tuple((b.start, b.stop) for b in box))))
            image = image[box]
            label = None if label is None else label[box]
        elif self.crop is not None:
            steps.append(("crop_or_pad", image.shape))
            image = crop_or_pad(image, self.crop, fill=float(image.min()))
            label = None if label is None else crop_or_pad(label, self.crop)
        if self.resize is not None:
            steps.append(("resize", image.shape))
            image = self._resize_image(image, self.resize)
            label = None if label is None else resize_volume(label, self.resize, label=True)
        image = self._normalize(image).astype(self.dtype)
        return image, None if label is None else label.astype(np.int16), Geometry(tuple(steps))

    def _normalize(self, image: np.ndarray) -> np.ndarray:
        if self.window is not None and self.normalize in ("zscore", "minmax"):
            return window(image, *self.window, mode=self.normalize)
        if self.window is not None:
            image = np.clip(image, *self.window)
        if self.normalize == "none":
            return image
        if self.normalize == "percentile":
            image = np.clip(image, *np.percentile(image, [0.5, 99.5]))
        std = float(image.std())
        return (image - float(image.mean())) / (std if std > 0 else 1.0)

    def _resize_image(self, image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.interpolation == "linear":
            return resize_volume(image, shape)
        zoom = [m / n for m, n in zip(shape, image.shape, strict=True)]
        out: np.ndarray = ndimage.zoom(image, zoom, order=3, mode="nearest", grid_mode=True)
        return out


_PRESETS: dict[str, dict[str, Any]] = {
    "ct": {},
    "mr": {"spacing": None, "window": None, "normalize": "percentile", "crop": None},
    "none": {"spacing": None, "window": None, "normalize": "none", "crop": None},
}


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` image to ``size x size`` (antialiased bilinear), float32 in [0, 255].

    Examples:
        >>> import numpy as np
        >>> out = resize_image(np.full((100, 80, 3), 255, np.uint8), 32)
        >>> out.shape, out.dtype, float(out.max())
        ((32, 32, 3), dtype('float32'), 255.0)
    """
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 255).numpy()


def ben_graham(
    image: np.ndarray, size: int = 224, *, tolerance: float = 7.0, sigma_fraction: float = 1 / 30
) -> np.ndarray:
    """Ben Graham's fundus preprocessing (Kaggle Diabetic Retinopathy 2015).

    Crops the dark border (rows and columns whose grey value never exceeds
    ``tolerance``), resizes to ``size``, subtracts the local average colour
    (``4 * image - 4 * gaussian(image) + 128``, sigma ``size * sigma_fraction``) and
    greys out everything outside a circle of 95 % of the radius.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        size: output edge.
        tolerance: grey level up to which border rows and columns count as dark.
        sigma_fraction: the Gaussian's sigma as a fraction of ``size``.

    Returns:
        ``(size, size, 3)`` float32 in ``[0, 255]``.

    Examples:
        >>> image, _ = p3.data.fundus_phantom(0, size=128)   # SYNTHETIC
        >>> out = ben_graham(image, size=64)   # border cropped, local mean subtracted, grey background 128
        >>> out.shape, out.dtype
        ((64, 64, 3), dtype('float32'))

    References:
        - Graham, "Kaggle Diabetic Retinopathy Detection competition report", 2015.
    """
    grey = image.astype(np.float32).mean(axis=2)
    rows = np.nonzero((grey > tolerance).any(axis=1))[0]
    cols = np.nonzero((grey > tolerance).any(axis=0))[0]
    if len(rows) and len(cols):
        image = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    resized = resize_image(image, size)
    sigma = size * sigma_fraction
    blurred = ndimage.gaussian_filter(resized, sigma=(sigma, sigma, 0))
    out = np.clip(4 * resized - 4 * blurred + 128, 0, 255)
    yy, xx = np.mgrid[:size, :size]
    centre = (size - 1) / 2
    outside = (yy - centre) ** 2 + (xx - centre) ** 2 > (0.95 * size / 2) ** 2
    out[outside] = 128
    result: np.ndarray = out.astype(np.float32)
    return result


@checked
@dataclass(frozen=True)
class FundusPreprocessing:
    """Fundus image preprocessing.

    Args:
        method: ``"ben_graham"``, or ``"resize"`` (the paper: plain resize).
        size: output edge (224 in the paper).
        channels: 3 (RGB) or 1 (grey: the mean of R, G and B).

    Examples:
        >>> image, _ = p3.data.fundus_phantom(0, size=128)   # SYNTHETIC
        >>> out = FundusPreprocessing(method="ben_graham", size=64)(image)
        >>> out.shape, out.dtype, bool(out.min() >= 0 and out.max() <= 1)
        ((3, 64, 64), dtype('float32'), True)

    References:
        - Graham, "Kaggle Diabetic Retinopathy Detection competition report", 2015.
    """

    method: Literal["ben_graham", "resize"] = "resize"
    size: int = 224
    channels: Literal[1, 3] = 3

    def __post_init__(self) -> None:
        """Check the arguments."""
        check_choice("method", self.method, ("ben_graham", "resize"))
        check_int("size", self.size, 8)
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(channels, size, size)`` float32 in ``[0, 1]``."""
        out = ben_graham(image, self.size) if self.method == "ben_graham" else resize_image(image, self.size)
        if self.channels == 1:
            out = out.mean(axis=2, keepdims=True)
        return np.ascontiguousarray(out.transpose(2, 0, 1) / 255.0, dtype=np.float32)
