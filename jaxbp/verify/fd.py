"""Finite differences that know when they cannot judge.

Along a direction ``v`` of a leaf ``x`` the step is per element, ``w = FD_STEP * s * v`` with
``s_i = |x_i|`` (the mean ``|x|`` of the leaf where ``x_i = 0``, 1 for an all-zero leaf): an
entropy at ``p = 1e-5`` moves ``p`` by 1e-11, ``sin(theta)`` at ``theta = 8000`` by 8e-3. Five
float64 evaluations of the scalar pairing ``S = Re sum(ct * f(x))`` per direction,

    S(x - w), S(x - w/4), S(x), S(x + w/4), S(x + w),

give central differences ``c1`` (step ``w``) and ``c4`` (step ``w/4``) and one-sided ones
``f1, b1`` (step ``w``) and ``f4, b4`` (step ``w/4``), all as derivatives along the unit vector
``u = w/|w|``. The estimate is Richardson's ``(16 c4 - c1) / 15`` (truncation ``O(|w|^4)``). A
direction is *unreliable*, and skipped with a note instead of judged, when a kink or tie (ReLU
at 0, two equal maxima) could move the estimate by more than the tolerance:

* at the point itself both central differences average the two one-sided slopes; their jump
  ``(4/3) |(f4 - b4) - (f1 - b1)/4|`` (curvature, which makes ``f - b`` proportional to the
  step, cancels) bounds that error by half of it;
* a kink between ``w/4`` and ``w`` from the point makes ``c1`` and ``c4`` differ by more than
  the estimate can be off.

For a smooth function both indicators are ``O(|w|^2)``, far below the tolerance. Points are
built in float64 and the steps taken as the actual ``(x + w) - (x - w)``, so rounding of
``x + w`` does not enter the derivative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxbp.verify.tolerances import FD_STEP

__all__ = ["FDLeaf", "FDVerdict", "bucket", "fd_error", "finite_differences", "step_scale"]

# Step multiples per direction: S at x + m w for each m (m = 0 shared).
MULTIPLES = (1.0, -1.0, 0.25, -0.25, 0.0)


@dataclass(frozen=True)
class FDLeaf:
    """Finite differences of one leaf: per direction the estimate of ``<g, u>`` along the unit
    step ``u`` (the step direction, normalised), and whether it can be trusted."""

    units: list  # per direction: the unit step vector u (float64 / complex128, the leaf's shape)
    estimates: np.ndarray  # per direction: Richardson estimate of the derivative along u
    kink: np.ndarray  # per direction: how far a kink within the step could move the estimate
    one_sided: np.ndarray  # per direction: the forward and backward slopes at step w/4, shape (n, 2)


def step_scale(x: np.ndarray) -> np.ndarray:
    """``s_i`` of the step ``FD_STEP * s * v``: ``|x_i|``, or the leaf's mean ``|x|`` where ``x_i = 0``
    (1 for an all-zero leaf)."""
    mag = np.abs(x)
    mean = float(np.mean(mag)) if mag.size else 0.0
    return np.where(mag > 0, mag, mean if mean > 0 else 1.0)


def bucket(n: int) -> int:
    """The number of points evaluated for ``n``: the next power of two (at least 8). Probing
    kinks asks for any number of directions; without buckets each count compiles anew."""
    return max(8, 1 << (n - 1).bit_length())


def finite_differences(
    pairing: Callable, diff: Sequence[np.ndarray], ct: Any, directions: Sequence[Sequence[np.ndarray]]
) -> list[FDLeaf]:
    """The :class:`FDLeaf` of every leaf of ``diff`` along its ``directions``.

    ``pairing(stacked_leaves, ct)`` evaluates the scalar pairing at a stack of points (jitted
    and vmapped by the caller; one compiled function serves every call with as many points).
    Call with x64 on and float64 (complex128) ``diff``.
    """
    base = [np.asarray(d) for d in diff]
    points, steps = [], []
    for k, x in enumerate(base):
        scale = step_scale(x)
        for v in directions[k]:
            w = FD_STEP * scale * v
            moved = [x + m * w for m in MULTIPLES]
            steps.append((k, moved[0] - moved[1]))  # the actual central step, 2 w up to rounding
            for p in moved:
                points.append([p if j == k else base[j] for j in range(len(base))])
    if not points:
        return [FDLeaf([], np.zeros(0), np.zeros(0), np.zeros((0, 2))) for _ in base]
    n = len(points)
    points += [points[-1]] * (bucket(n) - n)  # padded: one compiled program serves every count in a bucket
    stacked = [np.stack([p[k] for p in points]) for k in range(len(base))]
    values = np.asarray(pairing(stacked, ct), np.float64)[:n].reshape(-1, len(MULTIPLES))
    return _per_leaf(base, steps, values)


def _per_leaf(base: list, steps: list, values: np.ndarray) -> list[FDLeaf]:
    units: list[list] = [[] for _ in base]
    est: list[list] = [[] for _ in base]
    kinks: list[list] = [[] for _ in base]
    sides: list[list] = [[] for _ in base]
    for (k, two_w), (s1, s_1, s4, s_4, s0) in zip(steps, values):
        length = float(np.linalg.norm(two_w)) / 2  # |w|
        if length == 0:
            continue
        c1 = (s1 - s_1) / (2 * length)
        c4 = (s4 - s_4) / (2 * length / 4)
        jump1 = ((s1 - s0) - (s0 - s_1)) / length  # f1 - b1
        jump4 = ((s4 - s0) - (s0 - s_4)) / (length / 4)  # f4 - b4
        at_point = abs(jump4 - jump1 / 4) * 4 / 3  # the slope jump at x; curvature cancels
        units[k].append(two_w / (2 * length))
        est[k].append((16 * c4 - c1) / 15)
        kinks[k].append(max(at_point / 2, abs(c1 - c4)))
        sides[k].append(((s4 - s0) / (length / 4), (s0 - s_4) / (length / 4)))
    return [
        FDLeaf(u, np.asarray(e, np.float64), np.asarray(q, np.float64), np.asarray(o, np.float64).reshape(-1, 2))
        for u, e, q, o in zip(units, est, kinks, sides)
    ]


@dataclass(frozen=True)
class FDVerdict:
    """A leaf's gradient against its finite differences: the worst relative error over the reliable
    directions (None if none was), and how many directions were judged."""

    error: float | None
    judged: int
    total: int


def fd_error(g: Any, fd: FDLeaf, scale: float, tol: float) -> FDVerdict:
    """Worst ``|estimate - Re<g, u>| / scale`` over the reliable directions of ``fd``.

    ``scale`` is the gradient's scale along a unit direction (what a random unit vector sees of
    it, floored by the global gradient scale, see :func:`jaxbp.verify.numerics.fd_scale`); the
    largest finite-difference estimate raises it further, so a tiny gradient is judged against
    what was measured. A direction where a kink could move the estimate by more than ``tol`` of
    that scale is not judged.
    """
    g = np.asarray(g)
    g = g.astype(np.complex128 if np.iscomplexobj(g) else np.float64)
    total = len(fd.units)
    if g.size == 0 or not total:
        return FDVerdict(0.0 if g.size == 0 else None, 0, total)
    finite = np.isfinite(fd.estimates)
    scale = max(scale, float(np.max(np.abs(fd.estimates[finite]))) if finite.any() else 0.0)
    worst, judged = 0.0, 0
    for u, est, kink in zip(fd.units, fd.estimates.tolist(), fd.kink.tolist()):
        predicted = float(np.real(np.sum(g * u)))
        if not math.isfinite(predicted):
            return FDVerdict(math.inf, judged + 1, total)
        if not (math.isfinite(est) and math.isfinite(kink)) or kink > tol * scale:
            continue
        judged += 1
        err = abs(est - predicted)
        worst = max(worst, err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
    return FDVerdict(float(worst) if judged else None, judged, total)
