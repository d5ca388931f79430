r"""Fully connected layer and flatten.

dense, with ``x`` of shape [..., I], ``w`` [I, O], ``b`` [O] and ``y`` [..., O]:

    forward:   y = x w + b
    backward:  dx = dy w^T          (each input feature collects its weights' share of dy)
               dw = x^T dy          (summed over every leading axis: one outer product per row)
               db = sum(dy)         (over every leading axis)

flatten, [N, d1, d2, ...] -> [N, d1 * d2 * ...]: a reshape, so ``dx`` is ``dy``
reshaped back; nothing is saved but the (static) input shape.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxbp.layers import _checks


def _check_dense(x, w, b):
    if jnp.ndim(x) < 1:
        _checks.fail("dense", f"x must have rank >= 1, got shape {tuple(jnp.shape(x))}")
    _checks.require_rank("dense", "w", w, 2)
    if jnp.shape(x)[-1] != jnp.shape(w)[0]:
        _checks.fail(
            "dense",
            f"x's last axis ({jnp.shape(x)[-1]}) must equal w's first axis ({jnp.shape(w)[0]}); "
            f"x has shape {tuple(jnp.shape(x))}, w has shape {tuple(jnp.shape(w))}",
        )
    if b is not None and tuple(jnp.shape(b)) != (jnp.shape(w)[1],):
        _checks.fail(
            "dense",
            f"b must have shape ({jnp.shape(w)[1]},) to match w of shape {tuple(jnp.shape(w))}, "
            f"got {tuple(jnp.shape(b))}",
        )


def dense_reference(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``x @ w + b``. Shapes: x [..., I], w [I, O], b [O] or None; returns [..., O]."""
    _check_dense(x, w, b)
    y = jnp.matmul(x, w)
    return y if b is None else y + b


def dense(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """Dense layer with a hand-derived VJP. Shapes: x [..., I], w [I, O], b [O] or None.

    Forward ``y = x w + b``; backward ``dx = dy w^T``, ``dw = x^T dy``, ``db = sum(dy)``.
    """
    _check_dense(x, w, b)
    return _dense(x, w, b)


@jax.custom_vjp
def _dense(x, w, b):
    return dense_reference(x, w, b)


def _dense_fwd(x, w, b):
    # b is kept only for its structure (array or None): it tells the backward whether a db is owed.
    return dense_reference(x, w, b), (x, w, b)


def _dense_bwd(res, dy):
    x, w, b = res
    dx = jnp.matmul(dy, w.T)  # dx = dy w^T
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dw = jnp.matmul(x2.T, dy2)  # dw = x^T dy, summed over every leading axis
    db = None if b is None else jnp.sum(dy2, axis=0)  # db = sum(dy)
    return dx, dw, db


_dense.defvjp(_dense_fwd, _dense_bwd)

# ------------------------------------------------------------------------ flatten


def flatten_reference(x: jax.Array) -> jax.Array:
    """Reshape [N, d1, d2, ...] to [N, d1 * d2 * ...]."""
    _checks.require_rank("flatten", "x", x, tuple(range(1, 9)))
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(x.shape[0], 1)


def flatten(x: jax.Array) -> jax.Array:
    """Flatten every axis but the first, with a hand-derived VJP: ``dx = reshape(dy, x.shape)``."""
    _checks.require_rank("flatten", "x", x, tuple(range(1, 9)))
    return _flatten(x, tuple(x.shape))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _flatten(x, shape):
    return flatten_reference(x)


def _flatten_fwd(x, shape):
    return flatten_reference(x), None  # nothing to save: the shape is static


def _flatten_bwd(shape, res, dy):
    return (dy.reshape(shape),)  # dx = dy reshaped back to the input


_flatten.defvjp(_flatten_fwd, _flatten_bwd)
