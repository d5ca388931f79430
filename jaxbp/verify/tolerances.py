"""How close is close enough: the tolerance of each dtype and matmul precision.

Errors against autodiff are norm-wise, ``max|manual - autodiff| / scale`` (the scale is
``max|autodiff|`` floored by the gradient's global scale, see :mod:`jaxbp.verify.numerics`),
so a tolerance reads as "digits that agree relative to the largest entry". Finite
differences run in float64 with the per-element step ``FD_STEP * |x_i|`` and Richardson's
estimate (:mod:`jaxbp.verify.fd`): truncation ~ h^4 and rounding ~ 1e-16 / h, both far
below ``FD_TOLERANCE``.

JAX is imported by the functions that read the backend or a dtype: the tables here are
read (by ``jaxbp check --help``) without importing it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "FD_DIRECTIONS",
    "FD_STEP",
    "FD_TOLERANCE",
    "FULL_PRECISION",
    "TOLERANCE",
    "default_tolerance",
    "layer_tolerances",
    "tolerance_for",
    "validate_rtol",
]

# Norm-wise relative tolerances at "highest" matmul precision.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}
# TF32 (GPU) and one-bf16-pass (TPU) matmuls keep about 10 mantissa bits.
REDUCED_PRECISION_TOLERANCE = 2e-2
# The settings of jax.default_matmul_precision that are full float32 (the level and its alias).
FULL_PRECISION = ("highest", "float32")
FD_TOLERANCE = 1e-6
FD_STEP = 1e-6
FD_DIRECTIONS = 2


def default_tolerance(dtype: str, matmul_precision: str | None = "highest") -> tuple[float, str]:
    """The norm-wise relative tolerance for ``dtype`` and a sentence saying where it comes from.

    Reduced matmul precision ("default", "high", "bfloat16", "tensorfloat32", ...)
    loosens float32 to ``2e-2`` on accelerators, where it means TF32 or bf16 passes;
    CPU matmuls are full float32 at any precision setting.
    """
    import jax
    import jax.numpy as jnp

    if dtype not in TOLERANCE:
        try:
            dtype = str(jnp.dtype(dtype))
        except TypeError:
            pass
    if dtype not in TOLERANCE:
        raise ValueError(f"no default tolerance for dtype {dtype!r}; known: {', '.join(TOLERANCE)}")
    precision = matmul_precision or "default"
    if dtype == "float32" and precision not in FULL_PRECISION:
        backend = jax.default_backend()
        if backend != "cpu":
            return REDUCED_PRECISION_TOLERANCE, (
                f"float32 at matmul precision {precision!r} on {backend} (TF32/bf16 matmul passes)"
            )
        return TOLERANCE[dtype], f"default for float32 (matmul precision {precision!r} is full float32 on cpu)"
    return TOLERANCE[dtype], f"default for {dtype} at matmul precision {precision!r}"


def validate_rtol(rtol: Any, where: str = "rtol") -> None:
    """Raise ``ValueError`` unless every tolerance in ``rtol`` is a finite number >= 0.

    ``rtol`` is None, a number, or a ``{dtype: tol}`` dict whose values may be
    ``(tol, where_it_comes_from)`` pairs.
    """
    if rtol is None:
        return
    values = rtol.items() if isinstance(rtol, dict) else [(None, rtol)]
    for dtype, given in values:
        value = given[0] if isinstance(given, tuple) else given
        label = where if dtype is None else f"{where}[{dtype!r}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{label} must be a number, got {value!r}")
        if math.isnan(value) or value < 0 or math.isinf(value):
            raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")


def tolerance_for(dtype: str, rtol: Any, precision: str) -> tuple[float, str]:
    """The tolerance of ``dtype``: from ``rtol`` (a number or a per-dtype dict) if it names one, else the default."""
    if isinstance(rtol, dict) and dtype in rtol:
        given = rtol[dtype]
        return (float(given[0]), str(given[1])) if isinstance(given, tuple) else (float(given), "rtol argument")
    if isinstance(rtol, (int, float)) and not isinstance(rtol, bool):
        return float(rtol), "rtol argument"
    return default_tolerance(dtype, precision)


def layer_tolerances(spec, matmul_precision: str | None = "highest") -> dict[str, tuple[float, str]]:
    """The float32 tolerance of a registered layer: its ``rtol_float32``, loosened at reduced precision."""
    import jax

    precision = matmul_precision or jax.config.jax_default_matmul_precision or "default"
    tol32 = (spec.rtol_float32, f"registry rtol_float32 of {spec.name}")
    default32 = default_tolerance("float32", precision)
    if precision not in FULL_PRECISION and default32[0] > tol32[0]:
        tol32 = default32
    return {"float32": tol32}
