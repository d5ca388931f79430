"""Numerical helpers shared by the checks, ``jaxbp.devices`` and ``jaxbp.plots``.

Errors are norm-wise, ``max|a - b| / scale`` with NaN an infinite error. The scale of a
leaf is ``max|b|`` floored by the gradient's scale over every leaf: a leaf whose true
gradient is zero (a bias in front of batch norm, labels at zero logits) holds rounding
noise of the size of the other leaves' rounding, and ``noise / noise`` says nothing.
The floor is ``r * G``, ``G`` the largest ``|b|`` over all leaves and
``r = min(1, ROUNDING_SLACK * eps / tol)`` (:func:`floor_ratio`): an error that small
relative to ``G`` is within ``ROUNDING_SLACK`` ulps of the largest entry, which rounding
alone produces; anything larger still fails. In float64 at 1e-10, ``r`` is 3.6e-5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ROUNDING_SLACK",
    "cast",
    "floor_ratio",
    "global_scale",
    "is_array",
    "is_float",
    "is_inexact",
    "rel_err",
    "substitute",
    "tree_err",
]


def is_array(x: Any) -> bool:
    """A NumPy or JAX array (or NumPy scalar), as opposed to a Python number or None."""
    return isinstance(x, (np.ndarray, np.generic, jax.Array))


def is_float(x: Any) -> bool:
    """An array of a real floating dtype."""
    return x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def is_inexact(x: Any) -> bool:
    """An array of a floating or complex dtype: what can be differentiated."""
    return is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def _complex_for(dtype: str) -> str:
    return "complex128" if dtype == "float64" else "complex64"


def cast(x: Any, dtype: str) -> Any:
    """A floating array as ``dtype`` (a complex one as the matching complex dtype); anything else unchanged.

    Converted on the host and placed on the default device: a device-side conversion would
    compile a program per shape and dtype, which in a run of checks costs more than the checks.
    """
    if not is_inexact(x):
        return x
    target = _complex_for(dtype) if jnp.issubdtype(x.dtype, jnp.complexfloating) else dtype
    return jax.device_put(np.asarray(x).astype(jnp.dtype(target)))


def substitute(args: Sequence[Any], argnums: Sequence[int], diff: Sequence[Any]) -> list:
    """``args`` with the entries at ``argnums`` replaced by ``diff``."""
    full = list(args)
    for i, v in zip(argnums, diff):
        full[i] = v
    return full


def _as_numpy(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


# Rounding of a sum of n terms grows like sqrt(n) ulps of its largest term; 16 ulps of the
# largest gradient entry cover what float32 and float64 layers produce here (module docstring).
ROUNDING_SLACK = 16


def floor_ratio(dtype: str, tol: float) -> float:
    """``r`` of the scale floor ``r * G`` for errors in ``dtype`` judged at ``tol`` (module docstring)."""
    try:
        eps = float(jnp.finfo(jnp.dtype(dtype)).eps)
    except (TypeError, ValueError):
        eps = float(np.finfo(np.float64).eps)
    return 1.0 if tol <= 0 else min(1.0, ROUNDING_SLACK * eps / tol)


def global_scale(*trees: Any) -> float:
    """``G``: the largest finite ``|entry|`` over every leaf of the trees (0 if none)."""
    best = 0.0
    for leaf in (x for t in trees for x in jax.tree.leaves(t)):
        a = np.abs(_as_numpy(leaf))
        a = a[np.isfinite(a)]
        if a.size:
            best = max(best, float(np.max(a)))
    return best


def rel_err(manual: Any, reference: Any, floor: float = 0.0) -> tuple[float, float, tuple[int, ...]]:
    """Max abs error, norm-wise relative error and the index of the worst element (NaN counts as inf).

    The scale is ``max(max|reference|, floor)``. Zero-size arrays agree trivially: ``(0.0, 0.0, ())``.
    """
    manual, reference = _as_numpy(manual), _as_numpy(reference)
    if manual.shape != reference.shape:
        raise ValueError(f"shapes differ: manual {manual.shape}, reference {reference.shape}")
    if manual.size == 0:
        return 0.0, 0.0, ()
    diff = np.abs(manual - reference)
    diff = np.where(np.isnan(diff), np.inf, diff)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = max(float(np.max(np.abs(reference))), floor)
    abs_err = float(diff[idx])
    if abs_err == 0:
        rel = 0.0
    elif scale > 0 and math.isfinite(scale):
        rel = abs_err / scale
    else:
        rel = math.inf
    return abs_err, rel, tuple(int(i) for i in idx)


def tree_err(a: Any, b: Any, ratio: float = 0.0) -> float:
    """The worst :func:`rel_err` over matching leaves, floored at ``ratio`` times ``b``'s global
    scale; inf where the structures or shapes differ."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or any(np.shape(x) != np.shape(y) for x, y in zip(la, lb)):
        return math.inf
    floor = ratio * global_scale(b)
    return max((rel_err(x, y, floor)[1] for x, y in zip(la, lb)), default=0.0)
