"""Trace-time validation shared by the layers.

Every check raises ``ValueError`` whose message starts with the layer name, so a
user who passes a wrong shape sees which layer rejected it and why. The checks
read only static information (shapes, dtypes, Python hyper-parameters), so they
run once while JAX traces and cost nothing inside a compiled step.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def fail(layer: str, message: str) -> None:
    raise ValueError(f"{layer}: {message}")


def require_rank(layer: str, name: str, x: Any, rank: int | tuple[int, ...]) -> None:
    """Require ``x.ndim`` to be ``rank`` (or one of the ranks in a tuple)."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    ndim = jnp.ndim(x)
    if ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        fail(layer, f"{name} must have rank {want}, got shape {tuple(jnp.shape(x))} (rank {ndim})")


def require_float(layer: str, name: str, x: Any) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        fail(layer, f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}")


def int_pair(layer: str, name: str, value: Any, *, minimum: int = 1) -> tuple[int, int]:
    """Normalise an int or a pair of ints to a pair, each at least ``minimum``."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        pair = (value, value)
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        fail(layer, f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        fail(layer, f"{name} must be >= {minimum}, got {value!r}")
    return pair


def check_axis(layer: str, axis: int, ndim: int) -> int:
    if not isinstance(axis, int) or not -ndim <= axis < ndim:
        fail(layer, f"axis {axis!r} is out of range for an input of rank {ndim}")
    return axis % ndim
