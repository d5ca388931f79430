"""Numerical helpers shared by the checks, ``jaxbp.devices`` and ``jaxbp.plots``.

Errors are norm-wise (``max|a - b| / max|b|``) and NaN counts as an infinite error.
Finite differences are central, in float64, along given directions, vectorised so
one compiled function serves every direction and every explored input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.verify.tolerances import FD_STEP

__all__ = [
    "cast",
    "directional_error",
    "finite_differences",
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
    """A floating array as ``dtype`` (a complex one as the matching complex dtype); anything else unchanged."""
    if not is_inexact(x):
        return x
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.asarray(x, dtype=_complex_for(dtype))
    return jnp.asarray(x, dtype=dtype)


def substitute(args: Sequence[Any], argnums: Sequence[int], diff: Sequence[Any]) -> list:
    """``args`` with the entries at ``argnums`` replaced by ``diff``."""
    full = list(args)
    for i, v in zip(argnums, diff):
        full[i] = v
    return full


def _as_numpy(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def rel_err(manual: Any, reference: Any) -> tuple[float, float, tuple[int, ...]]:
    """Max abs error, norm-wise relative error and the index of the worst element (NaN counts as inf).

    Zero-size arrays agree trivially: ``(0.0, 0.0, ())``.
    """
    manual, reference = _as_numpy(manual), _as_numpy(reference)
    if manual.shape != reference.shape:
        raise ValueError(f"shapes differ: manual {manual.shape}, reference {reference.shape}")
    if manual.size == 0:
        return 0.0, 0.0, ()
    diff = np.abs(manual - reference)
    diff = np.where(np.isnan(diff), np.inf, diff)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = float(np.max(np.abs(reference)))
    abs_err = float(diff[idx])
    if abs_err == 0:
        rel = 0.0
    elif scale > 0 and math.isfinite(scale):
        rel = abs_err / scale
    else:
        rel = math.inf
    return abs_err, rel, tuple(int(i) for i in idx)


def tree_err(a: Any, b: Any) -> float:
    """The worst :func:`rel_err` over matching leaves; inf where the structures or shapes differ."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or any(np.shape(x) != np.shape(y) for x, y in zip(la, lb)):
        return math.inf
    return max((rel_err(x, y)[1] for x, y in zip(la, lb)), default=0.0)


def finite_differences(
    pairing: Callable, diff: Sequence[np.ndarray], ct: Any, directions: Sequence[Sequence[np.ndarray]]
) -> list[np.ndarray]:
    """Central differences of the scalar ``pairing(diff, ct)`` along each direction of each leaf.

    ``pairing`` must be ``jax.vmap``-able over ``diff`` (the caller jits the vmapped
    function once: every call with the same shapes reuses it). The step of leaf ``k``
    is ``FD_STEP * max(1, max|diff[k]|)``. Call with x64 on and float64 ``diff``.
    """
    base = [np.asarray(d) for d in diff]
    points = []
    for k, x in enumerate(base):
        h = FD_STEP * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
        for v in directions[k]:
            for sign in (1.0, -1.0):
                moved = list(base)
                moved[k] = x + sign * h * v
                points.append(moved)
    if not points:
        return [np.zeros(0) for _ in base]
    stacked = [np.stack([p[k] for p in points]) for k in range(len(base))]
    values = np.asarray(pairing(stacked, ct), np.float64)
    out, i = [], 0
    for k, x in enumerate(base):
        h = FD_STEP * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
        m = len(directions[k])
        pairs = values[i : i + 2 * m].reshape(m, 2)
        out.append((pairs[:, 0] - pairs[:, 1]) / (2 * h))
        i += 2 * m
    return out


def directional_error(g_man: Any, g_ref: Any | None, directions: Sequence[np.ndarray], fd_values: np.ndarray) -> float:
    """Worst ``|fd(v) - Re<g_man, v>| / scale`` over the directions: a relative error of the gradient.

    ``scale`` is the larger of ``max(|g_man|, |g_ref|) |v| / sqrt(n)`` (what a random
    unit ``v`` sees of a gradient) and the largest ``|fd(v)|``, so basis directions
    give the element-wise error relative to the largest entry. ``Re<g, v>`` is
    ``Re(sum(g * v))``: JAX's cotangent convention for complex inputs.
    """
    g_man = _as_numpy(g_man)
    if g_man.size == 0 or not len(directions):
        return 0.0
    norms = [np.linalg.norm(g_man)] + ([] if g_ref is None else [np.linalg.norm(_as_numpy(g_ref))])
    typical = max(norms) / math.sqrt(g_man.size)
    fd_scale = float(np.max(np.abs(fd_values))) if len(fd_values) else 0.0
    worst = 0.0
    for v, fd in zip(directions, fd_values):
        err = abs(float(fd) - float(np.real(np.sum(g_man * v))))
        if not math.isfinite(err):
            return math.inf
        scale = max(typical * float(np.linalg.norm(v)), fd_scale)
        worst = max(worst, err / scale if scale > 0 else err)
    return worst if math.isfinite(worst) else math.inf
