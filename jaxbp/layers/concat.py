r"""Concatenation along one axis, the skip connection of a U-Net.

``concatenate(xs, axis)`` with ``xs`` a list or tuple of m arrays of one rank and dtype whose
shapes agree except along ``axis``, where ``x_q`` has size ``n_q``::

    forward:   y = [x_1 | x_2 | ... | x_m]             (size n_1 + ... + n_m along axis)
    backward:  dx_q = dy[..., a_q : a_q + n_q, ...]     (a_q = n_1 + ... + n_{q-1})

Each input owns a slice of the output, so its cotangent is that slice of ``dy``: the
backward splits ``dy`` at the offsets. The forward saves nothing; the sizes are static.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.layers import _checks


def _check_concatenate(xs, axis) -> int:
    if not isinstance(xs, (list, tuple)) or not xs:
        _checks.fail("concatenate", f"xs must be a non-empty list or tuple of arrays, got {type(xs).__name__}")
    shapes = [tuple(jnp.shape(x)) for x in xs]
    for i, x in enumerate(xs):
        _checks.require_float("concatenate", f"xs[{i}]", x)
    if len({len(s) for s in shapes}) != 1 or not shapes[0]:
        _checks.fail("concatenate", f"xs must be arrays of one rank >= 1, got shapes {shapes}")
    axis = _checks.check_axis("concatenate", axis, len(shapes[0]))
    rest = {s[:axis] + s[axis + 1 :] for s in shapes}
    if len(rest) != 1:
        _checks.fail("concatenate", f"shapes must agree except along axis {axis}, got {shapes}")
    dtypes = {jnp.result_type(x) for x in xs}
    if len(dtypes) != 1:
        _checks.fail("concatenate", f"xs must have one dtype, got {sorted(map(str, dtypes))} for shapes {shapes}")
    return axis


def concatenate_reference(xs: Sequence[jax.Array], axis: int = -1) -> jax.Array:
    """``jnp.concatenate(xs, axis)``: arrays of one rank and dtype, shapes equal except along ``axis``."""
    return jnp.concatenate(list(xs), axis=_check_concatenate(xs, axis))


def concatenate(xs: Sequence[jax.Array], axis: int = -1) -> jax.Array:
    """Concatenation with a hand-derived VJP: ``dx_k`` is the slice of ``dy`` that ``x_k`` filled.

    Shapes as :func:`concatenate_reference`; the gradient of ``xs`` has its container type.
    """
    axis = _check_concatenate(xs, axis)
    sizes = tuple(int(jnp.shape(x)[axis]) for x in xs)  # static, so the backward knows where to split
    return _concatenate(tuple(xs), axis, sizes)  # a list's gradient comes back a list (outside the VJP)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _concatenate(xs, axis, sizes):
    return concatenate_reference(xs, axis)


def _concatenate_fwd(xs, axis, sizes):
    return concatenate_reference(xs, axis), None  # the sizes are static: nothing to save


def _concatenate_bwd(axis, sizes, res, dy):
    offsets = np.cumsum(sizes)[:-1].tolist()  # a_2, ..., a_m
    dxs = jnp.split(dy, offsets, axis=axis)  # dx_q = dy[a_q : a_q + n_q] along axis
    return (tuple(dxs),)


_concatenate.defvjp(_concatenate_fwd, _concatenate_bwd)
