"""Built-in SYNTHETIC phantoms: an abdominal CT and a colour fundus photograph.

The CT has the shape of an MSD Task07 case, the photograph that of an APTOS 2019 image.

They are procedural drawings, not patient data, made so that a pretext task has
something real to learn and a downstream task cannot be solved by intensity alone. No
result on them says anything about real scans; every figure made on them must say so.

CT: values in Hounsfield units (int16), labels 0 background, 1 pancreas, 2 cancer, in
RAS+ orientation (array axis 0 to the patient's right, 1 anterior, 2 superior). The
anatomy is a set of implicit shapes evaluated on randomly warped coordinates (a small
rotation, anisotropic scale, shift and a smooth elastic warp): body wall and fat, liver,
spleen, stomach with a gas cap on its anterior side, kidneys with enhancing cortex, a
spine with vertebral bodies, discs and canal, aorta and IVC, bowel loops, and a lobulated
pancreas along a random curve (head in the duodenal C-loop by the IVC, body in front of
the aorta, tail towards the spleen) whose intensity overlaps the duodenal wall, bowel and
splenic vein. Most cases carry a hypodense tumour (sometimes a cyst) on the pancreas
curve that may bulge out of the gland. Cases vary enough that a few labelled ones
under-sample them: pose (in-plane rotation up to ±30°), the contrast phase (the gland
enhances early, the liver late; the bowel and duodenal walls follow the gland), gland size
and course, tumour size and contrast, a low-frequency non-uniformity, soft-tissue gain and
offset, blur and noise.

Fundus: RGB uint8, a circular field of view (sometimes clipped top and bottom), camera
colour cast, vignetting and uneven illumination, an optic disc with its cup on the nasal
side, a darker macula and fovea below the disc's level, four vessel arcades (the inferior
ones wider) with branches, and lesions by grade
0-4 drawn from the APTOS label prior (about 49/10/27/5/8 %): microaneurysms;
haemorrhages and hard exudates near the macula; cotton-wool spots and venous beading;
neovascularisation, pre-retinal haemorrhage and laser scars. Lesions are drawn larger
than life so that they survive 64 px.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._atomic import write_text
from pretext3d._checks import check_choice, check_int, check_unit_interval
from pretext3d._random import Seeds

__all__ = [
    "APTOS_PRIOR",
    "CTPhantom",
    "PhantomImages",
    "ct_phantom",
    "ct_phantom_batch",
    "fundus_phantom",
    "fundus_phantom_batch",
    "write_aptos_phantom",
    "write_task07_phantom",
]

APTOS_PRIOR = (1805 / 3662, 370 / 3662, 999 / 3662, 193 / 3662, 295 / 3662)  # APTOS 2019 train.csv
_EXTENT_MM = np.array([400.0, 300.0, 250.0])  # field of view per axis (R, A, S)


@dataclass
class CTPhantom:
    """One synthetic CT case.

    Attributes:
        image: ``(X, Y, Z)`` int16 Hounsfield units, RAS+.
        label: ``(X, Y, Z)`` uint8, 0 background, 1 pancreas, 2 cancer.
        spacing: voxel size in mm.

    Examples:
        >>> case = ct_phantom(0, size=32)   # SYNTHETIC
        >>> case.image.dtype, case.label.dtype, [round(s, 1) for s in case.spacing]   # HU, labels 0-2, mm
        (dtype('int16'), dtype('uint8'), [12.5, 9.4, 7.8])
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world matrix (RAS+, centred)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = -np.array(self.spacing) * (np.array(self.image.shape) - 1) / 2
        return affine


@functools.lru_cache(maxsize=64)
def _zoom_matrix(coarse: int, size: int) -> np.ndarray:
    """``(size, coarse)``: scipy's cubic-spline zoom of ``coarse`` samples to ``size`` as a matrix.

    ``ndimage.zoom(..., order=3, grid_mode=True, mode="nearest")`` is linear and separable (its
    spline prefilter and its interpolation weights are per axis), so a zoom of an N-D grid is
    this matrix applied along each axis: the same field (to rounding, ~1e-16), without
    evaluating 4^N spline weights per output voxel.
    """
    columns = [
        ndimage.zoom(unit, size / coarse, order=3, grid_mode=True, mode="nearest") for unit in np.eye(coarse)
    ]
    return np.stack(columns, axis=1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], coarse: int) -> np.ndarray:
    """Smooth random field in about [-1, 1], from a coarse grid upsampled with cubic splines."""
    field = rng.standard_normal((coarse,) * len(shape))
    for axis in reversed(range(len(shape))):  # last axis first: each product lands contiguous
        before, after = coarse**axis, int(np.prod(shape[axis + 1 :]))
        field = np.matmul(_zoom_matrix(coarse, shape[axis]), field.reshape(before, coarse, after))
    return field.reshape(shape)


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = points
    out: np.ndarray = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return out


def _tube(coords: np.ndarray, curve: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """For every voxel: its distance to the curve over the curve's radius there (< 1: inside the tube).

    Only voxels within the curve's bounding box grown by the largest radius are measured; the
    others are at least that far from every point, so outside (``inf``). Those measured get the
    sums they always had (squared distances added axis by axis, the nearest point by argmin):
    the phantoms are the same, bit for bit, as when every voxel was measured.
    """
    flat = coords.reshape(3, -1)
    reach = radius.max()
    near = np.ones(flat.shape[1], dtype=bool)
    for axis in range(3):
        near &= (flat[axis] > curve[:, axis].min() - reach) & (flat[axis] < curve[:, axis].max() + reach)
    chosen = np.flatnonzero(near)
    ratio = np.full(flat.shape[1], np.inf)
    for start in range(0, len(chosen), 8192):  # a block of voxels at a time, in the cache
        index = chosen[start : start + 8192]
        d2 = (flat[0, index][:, None] - curve[None, :, 0]) ** 2
        d2 += (flat[1, index][:, None] - curve[None, :, 1]) ** 2
        d2 += (flat[2, index][:, None] - curve[None, :, 2]) ** 2
        nearest = d2.argmin(1)
        ratio[index] = np.sqrt(np.take_along_axis(d2, nearest[:, None], 1)[:, 0]) / radius[nearest]
    return ratio.reshape(coords.shape[1:])


def ct_phantom(
    seed: int, size: int | tuple[int, int, int] = 40, *, tumour_probability: float = 0.8
) -> CTPhantom:
    """Draw one synthetic abdominal CT case (deterministic per ``seed``).

    Args:
        seed: the case.
        size: voxels per axis (or per axis as a tuple); the field of view stays
            400 x 300 x 250 mm, so the spacing follows.
        tumour_probability: chance that the case has a tumour.

    Examples:
        >>> case = ct_phantom(0, size=32)   # SYNTHETIC abdominal CT, in HU, with its label map
        >>> case.image.shape, sorted(set(case.label.flatten().tolist()))   # background, pancreas, tumour
        ((32, 32, 32), [0, 1, 2])
    """
    rng = np.random.default_rng(seed)
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    spacing = tuple(float(v) for v in _EXTENT_MM / np.array(shape))
    axes = [np.linspace(-1, 1, n) for n in shape]
    u = np.stack(np.meshgrid(*axes, indexing="ij"))  # (3, X, Y, Z)

    # random pose: small rotation, anisotropic scale, shift, smooth elastic warp
    angles = np.radians(rng.uniform(-1, 1, 3) * np.array([6.0, 6.0, 30.0]))  # mostly in-plane
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a] = r[b, b] = np.cos(angle)
        r[a, b], r[b, a] = -np.sin(angle), np.sin(angle)
        rot = r @ rot
    scale = rng.uniform(0.85, 1.15, 3)
    shift = rng.uniform(-0.12, 0.12, 3)
    b = np.einsum("ij,j...->i...", rot, (u - shift[:, None, None, None]) / scale[:, None, None, None])
    b = b + 0.07 * np.stack([_smooth_noise(rng, shape, 4) for _ in range(3)])
    x, y, z = b

    def ellipsoid(c: tuple[float, ...], r: tuple[float, ...]) -> np.ndarray:
        inside: np.ndarray = (
            ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        ) < 1
        return inside

    def cylinder(cx: float, cy: float, r: float) -> np.ndarray:
        inside: np.ndarray = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
        return inside

    # contrast phase: early (pancreatic) phase enhances the gland, portal-venous the liver;
    # each organ's enhancement also varies on its own, so intensity alone does not transfer
    phase = rng.uniform()
    liver_hu = 70 + 50 * phase + rng.uniform(-10, 10)
    gland_hu = 150 - 75 * phase + rng.uniform(-10, 10)
    spleen_hu = 100 + rng.uniform(-20, 20)
    hu = np.full(shape, -1000.0)
    body = ((x / 0.95) ** 2 + (y / 0.9) ** 2) < 1
    hu[body] = -100  # subcutaneous fat
    wall = ((x / 0.86) ** 2 + (y / 0.8) ** 2) < 1
    hu[wall] = 50  # muscle wall
    cavity = ((x / 0.8) ** 2 + (y / 0.73) ** 2) < 1
    hu[cavity] = -90 + 20 * _smooth_noise(rng, shape, 6)[cavity]  # visceral fat
    for side in (-1, 1):  # paraspinal muscles
        hu[ellipsoid((side * 0.25, -0.72, 0), (0.16, 0.12, 9))] = 55

    hu[ellipsoid((0.45, 0.12, 0.35), (0.42, 0.5, 0.6)) & cavity] = liver_hu
    hu[ellipsoid((-0.6, -0.32, 0.35), (0.2, 0.28, 0.35)) & cavity] = spleen_hu
    stomach_c, stomach_r = (-0.3, 0.35, 0.35), (0.28, 0.22, 0.3)
    stomach = ellipsoid(stomach_c, stomach_r) & cavity
    lumen = ellipsoid(stomach_c, tuple(v * 0.75 for v in stomach_r)) & cavity
    hu[stomach] = 60
    hu[lumen] = 15
    hu[lumen & (y > stomach_c[1] + 0.05)] = -1000  # gas rises anteriorly in a supine patient
    for side in (-1, 1):  # kidneys: enhancing cortex, darker medulla
        kidney = (side * 0.42, -0.45, -0.05)
        hu[ellipsoid(kidney, (0.13, 0.14, 0.3))] = 170
        hu[ellipsoid(kidney, (0.078, 0.084, 0.18))] = 60
    vertebra = cylinder(0, -0.62, 0.14)
    hu[vertebra] = 800
    hu[cylinder(0, -0.62, 0.11)] = 350
    hu[vertebra & (np.cos(z * 12 + rng.uniform(0, 6)) > 0.8)] = 90  # discs along z
    hu[cylinder(0, -0.82, 0.06)] = 15  # canal
    hu[ellipsoid((0, -0.93, 0), (0.05, 0.05, 9))] = 600  # spinous process
    hu[cylinder(-0.1, -0.42, 0.09)] = 200  # aorta
    hu[cylinder(0.18, -0.36, 0.1)] = 150  # IVC

    for _ in range(int(rng.integers(5, 11))):  # bowel loops, anterior and caudal
        start = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.5), rng.uniform(-0.7, -0.1)])
        ctrl = start + rng.uniform(-0.3, 0.3, 3)
        end = start + rng.uniform(-0.4, 0.4, 3)
        loop = _tube(b, _bezier(np.stack([start, ctrl, end]), 24), np.full(24, 0.07))
        hu[(loop < 1) & cavity] = gland_hu + rng.uniform(-25, 15)  # wall like the gland
        hu[(loop < 0.55) & cavity] = -900 if rng.random() < 0.4 else 10

    # pancreas: head in the duodenal C-loop by the IVC, body before the aorta, tail at the spleen
    head = np.array([0.2, -0.08, -0.1]) + rng.uniform(-0.1, 0.1, 3)
    neck = np.array([-0.05, -0.1, 0.05]) + rng.uniform(-0.1, 0.1, 3)
    tail = np.array([-0.5, -0.24, 0.15]) + rng.uniform(-0.1, 0.1, 3)
    n = 48
    curve = _bezier(np.stack([head, neck, tail]), n)
    lobules = 1 + 0.15 * np.sin(np.linspace(0, rng.uniform(10, 18), n) + rng.uniform(0, 6))
    radius = np.linspace(0.2, 0.11, n) * lobules * rng.uniform(0.75, 1.1)  # atrophy to plump
    duodenum = _tube(
        b,
        np.array(
            [
                head + 0.22 * np.array([np.cos(t), 0.6 * np.sin(t), 0.8 * np.sin(t)])
                for t in np.linspace(-1.8, 1.8, 24)
            ]
        ),
        np.full(24, 0.07),
    )
    hu[(duodenum < 1) & cavity] = gland_hu + rng.uniform(-20, 10)  # duodenal wall, like the pancreas
    hu[(duodenum < 0.5) & cavity] = 20
    vein = _tube(b, curve[n // 3 :] + np.array([0, -0.12, 0]), np.full(n - n // 3, 0.04))
    hu[vein < 1] = 135  # splenic vein behind the body and tail
    gland_ratio = _tube(b, curve, radius)
    gland = gland_ratio < 1
    hu[gland] = gland_hu + 12 * _smooth_noise(rng, shape, 8)[gland]
    label = np.zeros(shape, dtype=np.uint8)
    label[gland] = 1

    if rng.random() < tumour_probability:
        centre = curve[int(rng.integers(n // 6, n - n // 8))] + rng.uniform(-0.06, 0.06, 3)
        radii = rng.uniform(0.1, 0.22, 3)
        tumour = ellipsoid(tuple(centre), tuple(radii)) & cavity
        cyst = rng.random() < 0.2
        contrast = rng.uniform(25, 70)  # hypodense, by how much varies
        hu[tumour] = 10 if cyst else gland_hu - contrast + 8 * _smooth_noise(rng, shape, 8)[tumour]
        label[tumour] = 2  # cancer overrides pancreas

    # scan-level variation: soft-tissue gain and offset, blur, noise
    soft = (hu > -150) & (hu < 300)
    hu[soft] = hu[soft] * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    hu += 25 * _smooth_noise(rng, shape, 3)  # low-frequency non-uniformity (beam hardening, scatter)
    hu = ndimage.gaussian_filter(hu, rng.uniform(0.3, 1.1))
    hu += rng.normal(0, rng.uniform(10, 35), shape)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return CTPhantom(image, label, spacing)  # type: ignore[arg-type]


def _draw_disc(
    canvas: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float | np.ndarray = 1.0
) -> None:
    weight = mask * alpha
    canvas[:] = canvas * (1 - weight[..., None]) + np.array(colour) * weight[..., None]


def fundus_phantom(
    seed: int, size: int = 64, *, grade: int | None = None, label_noise: float = 0.0
) -> tuple[np.ndarray, int]:
    """Draw one synthetic colour fundus photograph (deterministic per ``seed``).

    Args:
        seed: the image.
        size: edge in pixels.
        grade: the DR grade 0-4 to draw; default drawn from :data:`APTOS_PRIOR`.
        label_noise: probability that the returned grade is off by one from the drawn
            lesions (graders disagree too).

    Returns:
        ``(image (size, size, 3) uint8, grade)``.

    Examples:
        >>> image, grade = fundus_phantom(0, size=64, grade=2)   # SYNTHETIC RGB fundus photograph
        >>> image.shape, image.dtype, grade
        ((64, 64, 3), dtype('uint8'), 2)
    """
    check_unit_interval("label_noise", label_noise)
    rng = np.random.default_rng(seed)
    true_grade = int(rng.choice(5, p=APTOS_PRIOR)) if grade is None else int(grade)
    if true_grade not in range(5):
        raise ValueError(f"grade must be 0-4, got {grade}")
    yy, xx = np.mgrid[:size, :size]
    x = (xx - (size - 1) / 2) / (size / 2)
    y = (yy - (size - 1) / 2) / (size / 2)
    r2 = x**2 + y**2
    eye = rng.choice([-1, 1])  # which side the disc (nasal) is on
    cast = rng.uniform(0.85, 1.15, 3)
    illumination = 1 + 0.15 * _smooth_noise(rng, (size, size), 4)
    base = np.array([190.0, 80.0, 35.0]) * cast
    canvas = base * (illumination * (1 - 0.35 * r2))[..., None]
    canvas += 6 * rng.standard_normal((size, size, 1))  # choroidal texture

    # the fovea lies below the disc and the inferior arcade is the wider one (as in real
    # eyes), so a left eye turned 180 degrees does not look like a right eye
    macula = np.array([-eye * 0.05, rng.uniform(0.06, 0.12)])
    _draw_disc(canvas, np.exp(-((x - macula[0]) ** 2 + (y - macula[1]) ** 2) / 0.03), (110, 40, 20), 0.45)
    _draw_disc(canvas, np.exp(-((x - macula[0]) ** 2 + (y - macula[1]) ** 2) / 0.002), (80, 25, 15), 0.6)
    disc = np.array([eye * 0.4, rng.uniform(-0.06, 0.0)])

    beading = true_grade >= 3
    for sign in (-1, 1):  # superior and inferior arcades, temporal and nasal
        for reach, spread in ((-eye * 1.0, 0.42 + 0.1 * sign), (eye * 0.45, 0.3 + 0.06 * sign)):
            t = np.linspace(0, 1, 40)
            px = disc[0] + reach * t
            py = disc[1] + sign * spread * np.sin(np.pi * t * 0.9) * (1 + rng.uniform(-0.1, 0.1))
            width = np.linspace(0.05, 0.018, 40)
            if beading:
                width = width * (1 + 0.5 * np.sin(t * 60) ** 2)
            _draw_vessel(canvas, x, y, px, py, width, rng)
            for _ in range(2):  # branches
                k = int(rng.integers(10, 30))
                bx = px[k] + np.linspace(0, rng.uniform(0.2, 0.35) * np.sign(reach), 15)
                by = py[k] + sign * np.linspace(0, rng.uniform(0.15, 0.3), 15)
                _draw_vessel(canvas, x, y, bx, by, np.linspace(width[k] * 0.7, 0.012, 15), rng)
    for shift, spread, colour in ((0.0, 0.012, (240, 200, 120)), (eye * 0.02, 0.003, (255, 235, 170))):
        # the disc, then its cup: 0 beyond sqrt(1.3 * spread) of the centre, drawn in that window
        cx, cy = disc[0] + shift, disc[1]
        rows, cols = _window(x, y, np.array([cx]), np.array([cy]), 1.2 * np.sqrt(spread))
        d2 = (x[rows, cols] - disc[0] - shift) ** 2 + (y[rows, cols] - cy) ** 2
        _draw_disc(canvas[rows, cols], np.clip(1.3 - d2 / spread, 0, 1), colour)

    def spots(
        count: int,
        radius: tuple[float, float],
        colour: tuple[float, float, float],
        near: np.ndarray | None,
        spread: float,
        soft: bool = False,
    ) -> None:
        for _ in range(count):
            centre = (near if near is not None else np.zeros(2)) + rng.normal(0, spread, 2)
            rad = rng.uniform(*radius)
            if soft:  # a Gaussian: nowhere 0, drawn on the whole image
                d2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2
                _draw_disc(canvas, np.exp(-d2 / (2 * rad**2)), colour)
                continue
            rows, cols = _window(x, y, centre[:1], centre[1:], 1.25 * rad)  # 0 beyond sqrt(1.5) radii
            d2 = (x[rows, cols] - centre[0]) ** 2 + (y[rows, cols] - centre[1]) ** 2
            _draw_disc(canvas[rows, cols], np.clip(1.5 - d2 / rad**2, 0, 1), colour)

    if true_grade >= 1:
        spots({1: 4, 2: 8, 3: 14, 4: 10}[true_grade], (0.018, 0.028), (150, 20, 20), macula, 0.35)
    if true_grade >= 2:
        spots({2: 3, 3: 14, 4: 8}[true_grade], (0.035, 0.06), (120, 15, 15), macula, 0.4)
        spots({2: 6, 3: 10, 4: 6}[true_grade], (0.018, 0.03), (250, 220, 90), macula, 0.18)
    if true_grade >= 3:
        spots(int(rng.integers(2, 5)), (0.04, 0.07), (240, 235, 215), macula, 0.35, soft=True)
    if true_grade == 4:
        for _ in range(6):  # neovascularisation: fine tangled vessels at the disc
            t = np.linspace(0, 1, 12)
            angle = rng.uniform(0, 2 * np.pi)
            px = disc[0] + 0.18 * t * np.cos(angle) + 0.04 * np.sin(t * 15)
            py = disc[1] + 0.18 * t * np.sin(angle) + 0.04 * np.cos(t * 13)
            _draw_vessel(canvas, x, y, px, py, np.full(12, 0.012), rng)
        centre = macula + rng.normal(0, 0.25, 2)  # boat-shaped pre-retinal haemorrhage
        rows, cols = _window(x, y, centre[:1], centre[1:], 0.21)
        bx, by = x[rows, cols], y[rows, cols]
        boat = (((bx - centre[0]) / 0.2) ** 2 + ((by - centre[1]) / 0.12) ** 2 < 1) & (by > centre[1])
        _draw_disc(canvas[rows, cols], boat.astype(float), (110, 10, 10))
        if rng.random() < 0.6:  # laser scars in the periphery
            for angle in rng.uniform(0, 2 * np.pi, 14):
                rad = rng.uniform(0.65, 0.85)
                cx, cy = rad * np.cos(angle), rad * np.sin(angle)
                rows, cols = _window(x, y, np.array([cx]), np.array([cy]), 0.045)  # 0 beyond 0.04
                d2 = (x[rows, cols] - cx) ** 2 + (y[rows, cols] - cy) ** 2
                _draw_disc(canvas[rows, cols], ((d2 < 0.0016) & (d2 > 0.0005)).astype(float), (60, 40, 20))
                _draw_disc(canvas[rows, cols], (d2 <= 0.0005).astype(float), (200, 170, 110))

    field = r2 < 0.95**2
    if rng.random() < 0.3:  # field of view clipped at top and bottom
        field &= np.abs(y) < rng.uniform(0.75, 0.85)
    image = np.clip(canvas, 0, 255) * field[..., None]
    reported = true_grade
    if label_noise and rng.random() < label_noise:
        reported = int(np.clip(true_grade + rng.choice([-1, 1]), 0, 4))
    return image.astype(np.uint8), reported


def _draw_vessel(
    canvas: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    width: np.ndarray,
    rng: np.random.Generator,
) -> None:
    colour = (120, 25, 20) if rng.random() < 0.5 else (150, 40, 30)  # veins darker than arteries
    rows, cols = _window(x, y, px, py, 1.5 * width.max())  # the mask is 0 beyond 1.5 widths
    x, y = x[rows, cols], y[rows, cols]
    d2 = (x[..., None] - px) ** 2 + (y[..., None] - py) ** 2
    nearest = d2.argmin(-1)
    dist = np.sqrt(np.take_along_axis(d2, nearest[..., None], -1)[..., 0])
    mask = np.clip(1.5 - dist / width[nearest], 0, 1)
    _draw_disc(canvas[rows, cols], mask, colour, 0.85)


def _window(
    x: np.ndarray, y: np.ndarray, xs: np.ndarray, ys: np.ndarray, reach: float
) -> tuple[slice, slice]:
    """The rows and columns of the grids ``x`` (per column) and ``y`` (per row) near the points.

    Near: within ``reach`` of the bounding box of the points ``(xs, ys)``. A drawing whose mask is
    0 beyond ``reach`` of its points is drawn in this window alone: the pixels outside would be
    blended with weight 0, which leaves them as they are, so the image is the same, bit for bit.
    """
    cols = np.flatnonzero((x[0] > xs.min() - reach) & (x[0] < xs.max() + reach))
    rows = np.flatnonzero((y[:, 0] > ys.min() - reach) & (y[:, 0] < ys.max() + reach))
    if not len(cols) or not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def ct_phantom_batch(
    count: int,
    size: int = 32,
    *,
    seed: int = 0,
    first: int = 0,
    window: tuple[float, float] = (-96.0, 215.0),
) -> tuple[Tensor, Tensor]:
    """``count`` CT phantoms in memory, windowed and z-scored, for quick experiments.

    Case ``i`` is ``ct_phantom(seed * 100_003 + first + i, size)`` (as
    :func:`write_task07_phantom` numbers them for ``first=0``). Each image is clipped to
    ``window`` HU and z-scored.

    Returns:
        ``(images (count, 1, size, size, size) float32, labels (count, size, size, size) int64)``.

    Examples:
        >>> images, labels = ct_phantom_batch(4, size=32)   # SYNTHETIC, windowed and z-scored
        >>> images.shape, labels.shape, labels.dtype
        (torch.Size([4, 1, 32, 32, 32]), torch.Size([4, 32, 32, 32]), torch.int64)
    """
    from pretext3d.data.preprocess import window as apply_window

    cases = [ct_phantom(Seeds.phantom_case(seed, first, i), size) for i in range(count)]
    images = np.stack([apply_window(c.image, *window) for c in cases])[:, None]
    labels = np.stack([c.label for c in cases]).astype(np.int64)
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


def fundus_phantom_batch(
    count: int, size: int = 64, *, seed: int = 0, first: int = 0, label_noise: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``count`` fundus phantoms in memory: image ``i`` is ``fundus_phantom(seed * 100_003 + first + i)``.

    Numbered as :func:`write_aptos_phantom` numbers them for ``first=0``.

    Returns:
        ``(images (count, 3, size, size) float32 in [0, 1], grades (count,) int64)``.

    Examples:
        >>> images, grades = fundus_phantom_batch(4, size=64)   # SYNTHETIC, in [0, 1]
        >>> images.shape, grades.shape, bool(images.min() >= 0 and images.max() <= 1)
        (torch.Size([4, 3, 64, 64]), torch.Size([4]), True)
    """
    drawn = [
        fundus_phantom(Seeds.phantom_case(seed, first, i), size, label_noise=label_noise)
        for i in range(count)
    ]
    images = np.stack([image for image, _ in drawn]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    return torch.from_numpy(images), torch.tensor([grade for _, grade in drawn])


def write_task07_phantom(
    root: str | os.PathLike[str], num_train: int = 8, num_test: int = 4, *, size: int = 40, seed: int = 0
) -> Path:
    """Write phantom cases as a Task07-style folder that :class:`~pretext3d.data.Task07Pancreas` reads.

    Creates ``root/Task07_Pancreas/`` with ``dataset.json`` (the real file's keys,
    including its spellings ``licence`` and ``relase``), ``imagesTr``, ``labelsTr`` and
    ``imagesTs`` NIfTI files. Needs nibabel (``pip install 'pretext3d[nifti]'``).

    Returns:
        The ``Task07_Pancreas`` folder.

    Examples:
        >>> root = write_task07_phantom("data", num_train=2, num_test=1, size=24)   # SYNTHETIC
        >>> root.as_posix(), sorted(p.name for p in root.iterdir())   # nested in data/Task07_Pancreas
        ('data/Task07_Pancreas', ['dataset.json', 'imagesTr', 'imagesTs', 'labelsTr'])
        >>> len(p3.data.Task07Pancreas(root))
        2
    """
    from pretext3d.data.io import write_nifti

    folder = Path(root) / "Task07_Pancreas"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for i in range(num_train + num_test):
        case = ct_phantom(Seeds.phantom_case(seed, 0, i), size)
        name = f"pancreas_{i + 1:03d}.nii.gz"
        if i < num_train:
            write_nifti(folder / "imagesTr" / name, case.image, case.affine)
            write_nifti(folder / "labelsTr" / name, case.label, case.affine)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(folder / "imagesTs" / name, case.image, case.affine)
            test.append(f"./imagesTs/{name}")
    meta = {
        "name": "Pancreas",
        "description": "SYNTHETIC phantom in the layout of MSD Task07 (not patient data)",
        "reference": "pretext3d built-in phantom",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": num_train,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    write_text(folder / "dataset.json", json.dumps(meta, indent=4))
    return folder


def write_aptos_phantom(
    root: str | os.PathLike[str],
    num_train: int = 20,
    num_test: int = 5,
    *,
    size: int = 64,
    seed: int = 0,
    label_noise: float = 0.0,
) -> Path:
    """Write phantom images as an APTOS-style folder that :class:`~pretext3d.data.APTOS` reads.

    Creates ``root/aptos2019/`` with ``train.csv`` (``id_code,diagnosis``),
    ``train_images/<id>.png``, ``test.csv`` and ``test_images/``. Needs pillow
    (``pip install 'pretext3d[images]'``).

    Returns:
        The ``aptos2019`` folder.

    Examples:
        >>> root = write_aptos_phantom("data", num_train=4, num_test=2, size=32)   # SYNTHETIC
        >>> sorted(p.name for p in root.iterdir())
        ['test.csv', 'test_images', 'train.csv', 'train_images']
        >>> image, grade = p3.data.APTOS(root)[0]
        >>> image.shape   # resized to the paper's 224
        torch.Size([3, 224, 224])
    """
    from pretext3d.data.io import write_png

    check_unit_interval("label_noise", label_noise)  # before any file is written
    folder = Path(root) / "aptos2019"
    for split, count, offset in (("train", num_train, 0), ("test", num_test, num_train)):
        (folder / f"{split}_images").mkdir(parents=True, exist_ok=True)
        lines = ["id_code,diagnosis" if split == "train" else "id_code"]
        for i in range(count):
            image, grade = fundus_phantom(Seeds.phantom_case(seed, offset, i), size, label_noise=label_noise)
            ident = f"phantom{seed:03d}{offset + i:05d}"
            write_png(folder / f"{split}_images" / f"{ident}.png", image)
            lines.append(f"{ident},{grade}" if split == "train" else ident)
        write_text(folder / f"{split}.csv", "\n".join(lines) + "\n")
    return folder


class PhantomImages(Dataset[Tensor]):
    """Phantom images drawn one at a time, for streaming (nothing held in memory).

    Image ``i`` equals ``ct_phantom_batch(count, size, seed=seed, first=first)[0][i]`` (or the
    fundus one): the same cases, drawn in the loader's workers.

    Args:
        kind: ``"ct"`` (``(1, size, size, size)``, windowed and z-scored) or ``"fundus"``
            (``(3, size, size)`` in ``[0, 1]``).
        count: number of images.
        size: their edge.
        seed: the phantom seed.
        first: the first case number.

    Examples:
        >>> pool = PhantomImages("ct", count=100, size=32)   # drawn on demand, nothing held
        >>> len(pool), pool[0].shape, pool.case_ids[:2]
        (100, torch.Size([1, 32, 32, 32]), ['ct-phantom-0', 'ct-phantom-1'])
        >>> torch.equal(pool[1], ct_phantom_batch(2, 32)[0][1])
        True
    """

    def __init__(self, kind: str, count: int, size: int, *, seed: int = 0, first: int = 0) -> None:
        self.kind = check_choice("kind", kind, ("ct", "fundus"))
        self.count, self.size = check_int("count", count, 1), check_int("size", size, 1)
        self.seed, self.first = check_int("seed", seed, 0), check_int("first", first, 0)
        self._drawn: dict[int, Tensor] = {}  # small: drawn once per process, then reused

    def __len__(self) -> int:
        return self.count

    @property
    def case_ids(self) -> list[str]:
        """``ct-phantom-<case number>`` (or ``fundus-phantom-...``), as the CLI names them."""
        start = Seeds.phantom_case(self.seed, self.first, 0)
        return [f"{self.kind}-phantom-{start + i}" for i in range(self.count)]

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} is out of range for {self.count} phantoms")
        if index not in self._drawn:
            draw = ct_phantom_batch if self.kind == "ct" else fundus_phantom_batch
            self._drawn[index] = draw(1, self.size, seed=self.seed, first=self.first + index)[0][0]
        return self._drawn[index]
