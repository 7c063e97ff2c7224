"""Permutation sets for the jigsaw task, chosen for large pairwise Hamming distance.

A jigsaw classifier must tell the permutations of its set apart, so the set should
keep every pair far apart (Noroozi & Favaro, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles", ECCV 2016). Their greedy search enumerates
all ``n!`` permutations, impossible for the 27 cells of a 3D 3x3x3 grid; Taleb et al.
(NeurIPS 2020) fell back on random permutations (minimum distance 19 for 100 of 27).

Here, sharply transitive permutation groups give the proven optimum directly:

* the affine maps ``x -> a*x + b`` over the finite field GF(q) act sharply
  2-transitively on ``q`` points: two distinct maps agree on at most one point, so
  every pair differs in at least ``q - 1`` places (the maximum for distinct
  permutations), and there are ``q(q - 1)`` of them;
* the Möbius maps ``x -> (a*x + b) / (c*x + d)`` over GF(q) act sharply
  3-transitively on the ``q + 1`` points of the projective line: distance at least
  ``q - 1 = n - 2``, ``(q + 1) q (q - 1)`` of them.

Where neither applies (``n`` not a prime power or one more than one, or more
permutations asked for than the group has) a greedy max-min search over an
enumerated or sampled pool is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations as _all_permutations
from os import PathLike
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pretext3d._checks import check_choice, check_int

__all__ = [
    "HammingStats",
    "hamming_stats",
    "load_permutation_set",
    "permutation_set",
]

Method = Literal["auto", "affine", "mobius", "greedy", "random"]
_METHODS = ("auto", "affine", "mobius", "greedy", "random")
_MAX_FIELD = 512  # largest field for the affine construction
_MAX_MOBIUS = 32  # largest field for the Möbius construction (it enumerates q**3 maps)
_ENUMERATE_UP_TO = 8  # greedy search enumerates all n! permutations up to this n


@dataclass(frozen=True)
class HammingStats:
    """Pairwise Hamming distances of a permutation set.

    Attributes:
        min: smallest distance between two distinct permutations of the set.
        mean: mean distance over all unordered pairs.

    Examples:
        >>> hamming_stats(permutation_set(9, 30))   # Noroozi & Favaro's 2D 3 x 3 grid
        HammingStats(min=..., mean=...)
    """

    min: int
    mean: float


def hamming_stats(perms: Tensor | np.ndarray) -> HammingStats:
    """Minimum and mean pairwise Hamming distance of a set of permutations.

    Args:
        perms: ``(count, num_cells)`` integer array, ``count >= 2``.

    Returns:
        The :class:`HammingStats` of the set.

    Examples:
        >>> hamming_stats(torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]]))
        HammingStats(min=3, mean=3.0)
    """
    arr = perms.detach().cpu().numpy() if isinstance(perms, Tensor) else np.asarray(perms)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"perms must have shape (count >= 2, num_cells), got {arr.shape}")
    dist = _pairwise_hamming(arr)
    upper = dist[np.triu_indices(arr.shape[0], k=1)]
    return HammingStats(min=int(upper.min()), mean=float(upper.mean()))


def permutation_set(num_cells: int, count: int, seed: int = 0, method: Method = "auto") -> Tensor:
    """``count`` distinct permutations of ``num_cells`` items, far apart in Hamming distance.

    Deterministic in ``(num_cells, count, seed, method)`` and cached. Row ``k`` is
    the permutation of class ``k``; the jigsaw task puts cell ``perm[p]`` into slot
    ``p``.

    ``method="auto"`` takes the construction with the largest proven minimum distance
    that has ``count`` elements: affine maps over GF(q) when ``num_cells`` is a prime
    power ``q`` (minimum ``num_cells - 1``), Möbius maps when ``num_cells - 1`` is one
    (minimum ``num_cells - 2``), else a greedy search. For the usual grids this gives
    the optimum: 100 of 27 cells at distance 26, 100 of 9 at 7, 100 of 8 at 6.
    ``"random"`` draws uniformly, as the original code did, for comparison.

    Args:
        num_cells: number of jigsaw cells, ``>= 2``.
        count: number of permutations, ``1 <= count <= num_cells!``.
        seed: chooses among equally good sets.
        method: ``"auto"``, ``"affine"``, ``"mobius"``, ``"greedy"`` or ``"random"``.

    Returns:
        ``LongTensor (count, num_cells)``, each row a permutation of ``0..num_cells-1``.

    Raises:
        ValueError: for a count above ``num_cells!``, an unknown method, or a
            construction that does not exist for ``num_cells`` or has fewer than
            ``count`` elements.

    Examples:
        >>> perms = permutation_set(27, 100, seed=0)   # 3x3x3 jigsaw: 100 permutations of 27 cells
        >>> perms.shape, hamming_stats(perms).min       # every pair differs in at least 26 cells
        (torch.Size([100, 27]), 26)

    References:
        - Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV
          2016.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """
    check_int("num_cells", num_cells, 2)
    check_int("count", count, 1)
    check_int("seed", seed, 0)
    check_choice("method", method, _METHODS)
    if num_cells <= 20 and count > math.factorial(num_cells):
        raise ValueError(
            f"count must be <= num_cells! = {math.factorial(num_cells)} for num_cells="
            f"{num_cells} (there are no more distinct permutations), got {count}"
        )
    return torch.from_numpy(_cached_set(num_cells, count, seed, method).copy())


def load_permutation_set(path: str | PathLike[str], num_cells: int | None = None) -> Tensor:
    """Load a permutation set saved as ``.npy`` (0- or 1-based, as Noroozi's files are).

    A set whose values run ``1..n`` is taken as 1-based and shifted to ``0..n-1``.

    Args:
        path: a ``.npy`` file holding a ``(count, num_cells)`` integer array.
        num_cells: if given, the number of cells each row must permute.

    Returns:
        ``LongTensor (count, num_cells)``, 0-based.

    Raises:
        ValueError: if a row is not a permutation, rows repeat, or the width differs
            from ``num_cells``.

    Examples:
        >>> import numpy as np
        >>> np.save("perms.npy", np.array([[1, 2, 3], [3, 1, 2]]))   # 1-based, as in Noroozi's files
        >>> load_permutation_set("perms.npy", num_cells=3)
        tensor([[0, 1, 2],
                [2, 0, 1]])

    References:
        - Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV
          2016.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read permutation file {str(path)!r} as a .npy array: {err}") from err
    if not isinstance(arr, np.ndarray):  # an .npz archive (np.savez) holds several arrays
        arr.close()
        raise ValueError(
            f"permutation file {str(path)!r} is an .npz archive; save the set with np.save as one .npy array"
        )
    if arr.ndim != 2 or (not np.issubdtype(arr.dtype, np.integer) and not _is_integral(arr)):
        raise ValueError(
            f"permutation file {str(path)!r} must hold a 2-D integer array (count, num_cells), "
            f"got shape {arr.shape} and dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    n = arr.shape[1]
    if num_cells is not None and n != num_cells:
        raise ValueError(f"permutation file {str(path)!r} permutes {n} cells, but num_cells={num_cells}")
    if arr.min() == 1 and arr.max() == n:
        arr = arr - 1
    if not (np.sort(arr, axis=1) == np.arange(n)).all():
        raise ValueError(
            f"permutation file {str(path)!r}: every row must be a permutation of 0..{n - 1} (or 1..{n})"
        )
    if len(np.unique(arr, axis=0)) != len(arr):
        raise ValueError(f"permutation file {str(path)!r} contains repeated rows")
    return torch.from_numpy(arr)


def _is_integral(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr)))


def _pairwise_hamming(arr: np.ndarray) -> np.ndarray:
    """``(count, count)`` Hamming distances, one row at a time to bound memory."""
    out = np.empty((arr.shape[0], arr.shape[0]), dtype=np.int64)
    for i in range(arr.shape[0]):
        out[i] = (arr != arr[i]).sum(axis=1)
    return out


@lru_cache(maxsize=64)
def _cached_set(num_cells: int, count: int, seed: int, method: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if method == "random":
        _check_feasible(num_cells, count, greedy=False)
        return _random_set(num_cells, count, rng)
    construction = "greedy" if method == "greedy" else _construction(num_cells, count, method)
    _check_feasible(num_cells, count, greedy=construction == "greedy")
    if construction == "affine":
        return _affine_set(num_cells, count, rng)
    if construction == "mobius":
        return _greedy(_mobius_group(num_cells - 1), count, rng)
    return _greedy(_pool(num_cells, count, rng), count, rng)


def _construction(num_cells: int, count: int, method: str) -> str:
    """The group construction for ``method`` (``auto``: the best one that is large enough)."""
    affine_size = num_cells * (num_cells - 1) if _prime_power(num_cells) else 0
    q = num_cells - 1
    mobius_size = (q + 1) * q * (q - 1) if _prime_power(q) else 0
    if method == "affine":
        if not affine_size or num_cells > _MAX_FIELD:
            raise ValueError(
                f"method='affine' needs num_cells to be a prime power <= {_MAX_FIELD}, "
                f"got num_cells={num_cells}"
            )
        return _checked_size("affine", affine_size, num_cells, count)
    if method == "mobius":
        if not mobius_size or q > _MAX_MOBIUS:
            raise ValueError(
                f"method='mobius' needs num_cells - 1 to be a prime power <= {_MAX_MOBIUS}, "
                f"got num_cells={num_cells}"
            )
        return _checked_size("mobius", mobius_size, num_cells, count)
    if num_cells <= _MAX_FIELD and count <= affine_size:
        return "affine"
    if q <= _MAX_MOBIUS and count <= mobius_size:
        return "mobius"
    return "greedy"


def _checked_size(method: str, size: int, num_cells: int, count: int) -> str:
    if count > size:
        raise ValueError(
            f"method={method!r} gives {size} permutations of {num_cells} cells, fewer than "
            f"count={count}; use method='auto' or 'greedy'"
        )
    return method


# Bounds on the work (element comparisons) and memory (elements) of a set, so that a
# request that cannot finish in seconds is refused with what is feasible instead of running for hours.
_MAX_GREEDY_WORK = 2 * 10**8
_MAX_ELEMENTS = 5 * 10**7


def _check_feasible(num_cells: int, count: int, greedy: bool) -> None:
    if count * num_cells > _MAX_ELEMENTS:
        raise ValueError(
            f"count={count} permutations of {num_cells} cells would hold {count * num_cells:,} numbers; "
            f"at most {_MAX_ELEMENTS // num_cells:,} permutations of {num_cells} cells are supported"
        )
    if greedy and num_cells > _ENUMERATE_UP_TO and count * count * num_cells > _MAX_GREEDY_WORK:
        feasible = int((_MAX_GREEDY_WORK / num_cells) ** 0.5)
        raise ValueError(
            f"a greedy far-apart set of count={count} permutations of {num_cells} cells is beyond a "
            f"search of a few seconds (feasible: count <= {feasible:,}); ask for fewer, or use "
            "method='random' (uniform draws, as the original code did)"
        )


def _random_set(num_cells: int, count: int, rng: np.random.Generator) -> np.ndarray:
    if num_cells <= 10 and 2 * count > math.factorial(num_cells):
        # most of all n! permutations: draw without replacement from the enumeration (drawing
        # one at a time until count are distinct would take ~ n! log n! tries)
        every = np.array(list(_all_permutations(range(num_cells))), dtype=np.int64)
        return every[rng.choice(len(every), count, replace=False)]
    rows: dict[bytes, np.ndarray] = {}
    while len(rows) < count:
        p = rng.permutation(num_cells)
        rows.setdefault(p.tobytes(), p)
    return np.stack(list(rows.values()))


def _pool(num_cells: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Candidates for the greedy search: all permutations if few, else a random sample."""
    if num_cells <= _ENUMERATE_UP_TO:
        return np.array(list(_all_permutations(range(num_cells))), dtype=np.int64)
    # 20 candidates per pick, fewer (but at least count) when that would exceed the work bound
    size = max(count, min(max(20 * count, 2000), _MAX_GREEDY_WORK // (count * num_cells)))
    return _random_set(num_cells, min(size, math.factorial(min(num_cells, 20))), rng)


def _greedy(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``count`` rows of ``pool`` greedily.

    Each pick maximises its minimum distance to those already picked (ties: the larger
    summed distance, then chance).
    """
    first = int(rng.integers(len(pool)))
    chosen = [first]
    min_dist = (pool != pool[first]).sum(axis=1)
    sum_dist = min_dist.astype(np.float64)
    min_dist[first] = -1
    tiebreak = rng.random(len(pool))
    for _ in range(count - 1):
        best = np.lexsort((tiebreak, sum_dist, min_dist))[-1]
        chosen.append(int(best))
        d = (pool != pool[best]).sum(axis=1)
        min_dist = np.minimum(min_dist, d)
        sum_dist += d
        min_dist[chosen] = -1
    return pool[chosen]


# --- finite fields -----------------------------------------------------------------


def _prime_power(n: int) -> tuple[int, int] | None:
    """``(p, k)`` with ``n == p**k`` for a prime ``p``, or ``None``."""
    if n < 2:
        return None
    p = next(d for d in range(2, n + 1) if n % d == 0)
    k, m = 0, n
    while m % p == 0:
        m //= p
        k += 1
    return (p, k) if m == 1 else None


@lru_cache(maxsize=16)
def _field_tables(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Addition and multiplication tables of GF(q).

    Element ``i`` is the polynomial whose base-``p`` digits are ``i``'s, reduced modulo a
    fixed irreducible polynomial.
    """
    pk = _prime_power(q)
    assert pk is not None
    p, k = pk
    digits = np.array([[(i // p**j) % p for j in range(k)] for i in range(q)], dtype=np.int64)
    weights = p ** np.arange(k)
    add = ((digits[:, None, :] + digits[None, :, :]) % p) @ weights
    # Products of all pairs as polynomials (q, q, 2k-1), then reduced from the top degree.
    prod = np.zeros((q, q, 2 * k - 1), dtype=np.int64)
    for i in range(k):
        prod[:, :, i : i + k] += digits[:, None, i, None] * digits[None, :, :]
    modulus = _irreducible(p, k)
    for deg in range(2 * k - 2, k - 1, -1):
        coef = prod[:, :, deg, None]
        prod[:, :, deg - k : deg + 1] = (prod[:, :, deg - k : deg + 1] - coef * modulus) % p
    mul = (prod[:, :, :k] % p) @ weights
    return add, mul


def _irreducible(p: int, k: int) -> np.ndarray:
    """Coefficients (lowest first, monic) of the first irreducible degree-``k`` polynomial over GF(p).

    Found by checking that it has no factor of degree ``<= k // 2``.
    """
    if k == 1:
        return np.array([0, 1], dtype=np.int64)
    for code in range(p**k):
        low = [(code // p**j) % p for j in range(k)]
        poly = np.array([*low, 1], dtype=np.int64)
        if low[0] == 0:
            continue
        if not any(_divides(f, poly, p) for f in _monic_polys(p, k // 2)):
            return poly
    raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")


def _monic_polys(p: int, max_degree: int) -> list[np.ndarray]:
    out = []
    for deg in range(1, max_degree + 1):
        for code in range(p**deg):
            out.append(np.array([*[(code // p**j) % p for j in range(deg)], 1], dtype=np.int64))
    return out


def _divides(f: np.ndarray, g: np.ndarray, p: int) -> bool:
    rem = g.copy() % p
    df = len(f) - 1
    for deg in range(len(rem) - 1, df - 1, -1):
        coef = rem[deg]
        if coef:
            rem[deg - df : deg + 1] = (rem[deg - df : deg + 1] - coef * f) % p
    return not rem[:df].any()


def _affine_set(q: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` of the ``q(q-1)`` maps ``x -> a*x + b`` (a != 0) of GF(q), as permutations.

    Two maps with different ``a`` agree on exactly one point (distance ``q - 1``), two with
    the same ``a`` on none (distance ``q``); so whole cosets ``{a*x + b : b}`` are taken,
    which maximises the mean distance once the minimum is optimal.
    """
    add, mul = _field_tables(q)
    multipliers = rng.permutation(np.arange(1, q))[: -(-count // q)]
    a = np.repeat(multipliers, q)[:count]
    b = np.concatenate([rng.permutation(q) for _ in multipliers])[:count]
    perms: np.ndarray = add[mul[a][:, np.arange(q)], b[:, None]]
    return perms


@lru_cache(maxsize=16)
def _mobius_group(q: int) -> np.ndarray:
    """All ``(q+1)q(q-1)`` Möbius maps of the projective line over GF(q).

    As permutations of ``0..q``, where point ``q`` is infinity.
    """
    add, mul = _field_tables(q)
    inv = np.argmax(mul == 1, axis=1)  # 1/x (0 for x = 0, never used)
    neg = np.argmax(add == 0, axis=1)  # -x
    inf = q
    x = np.arange(q)
    slope, shift = np.divmod(np.arange(q * (q - 1)), q)  # c = 0: x -> a x + b, a != 0
    affine = np.concatenate(
        [add[mul[slope + 1][:, x], shift[:, None]], np.full((len(slope), 1), inf)], axis=1
    )
    a, b, d = (g.ravel() for g in np.meshgrid(x, x, x, indexing="ij"))
    keep = add[mul[a, d], neg[b]] != 0  # c = 1: x -> (a x + b) / (x + d), a d - b != 0
    a, b, d = a[keep], b[keep], d[keep]
    num = add[mul[a[:, None], x[None, :]], b[:, None]]
    den = add[x[None, :], d[:, None]]
    image = np.where(den == 0, inf, mul[num, inv[den]])
    return np.concatenate([affine, np.concatenate([image, a[:, None]], axis=1)])
