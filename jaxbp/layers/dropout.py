r"""Inverted dropout (training mode).

``x`` any shape, ``key`` a PRNG key (typed ``jax.random.key`` or raw uint32
``jax.random.PRNGKey``), ``rate`` r a Python float in [0, 1):

    forward:   keep ~ Bernoulli(1 - r), drawn by jax.random.bernoulli(key, 1 - r, x.shape)
               y = x keep / (1 - r)                 (0 where dropped; E[y] = x)
    backward:  dx = dy keep / (1 - r)
               dkey: none (keys are not differentiable)

``rate == 0`` is the identity: ``x`` is returned unchanged and no key is read. The
forward saves only the boolean mask, not ``x``. The same key gives the same mask,
so the reference and the hand-derived version drop the same elements; the mask is drawn
in float32 for every dtype of ``x``, so it depends only on the key, the rate and the shape.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.layers import _checks


def _check_rate(rate) -> float:
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        _checks.fail("dropout", f"rate must be a Python float in [0, 1), got {rate!r}")
    if not 0 <= rate < 1:  # also rejects nan
        _checks.fail("dropout", f"rate must be in [0, 1), got {rate!r}")
    return float(rate)


def _check_dropout(x, key, rate) -> float:
    _checks.require_float("dropout", "x", x)
    dtype = jnp.result_type(key)
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.ndim(key) != 0:
            _checks.fail("dropout", f"key must be a single PRNG key (shape ()), got shape {tuple(jnp.shape(key))}")
    elif dtype != jnp.uint32 or jnp.ndim(key) != 1:
        _checks.fail(
            "dropout",
            f"key must be a jax.random.key or a raw uint32 key of rank 1, got dtype {dtype} and shape "
            f"{tuple(jnp.shape(key))}",
        )
    return _check_rate(rate)


def _dropout_parts(x, key, rate):
    """The output and the keep mask it was computed with (the residual of the backward)."""
    # p in float32 whatever x's dtype and jax_enable_x64: the mask depends only on (key, rate, shape).
    keep = jax.random.bernoulli(key, np.float32(1.0 - rate), jnp.shape(x))
    return jnp.where(keep, x * (1.0 / (1.0 - rate)), jnp.zeros_like(x)), keep


def dropout_reference(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: keep each element with probability ``1 - rate`` and scale it by ``1 / (1 - rate)``.

    ``x`` any float shape; ``key`` a PRNG key; ``rate`` a Python float in [0, 1). Returns
    the shape of ``x``; ``rate == 0`` returns ``x`` itself.
    """
    rate = _check_dropout(x, key, rate)
    if rate == 0.0:
        return x
    return _dropout_parts(x, key, rate)[0]


def dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout with a hand-derived VJP. Arguments as :func:`dropout_reference`.

    Forward ``y = x keep / (1 - rate)`` with ``keep ~ Bernoulli(1 - rate)`` from ``key``;
    backward ``dx = dy keep / (1 - rate)``, no gradient for ``key``. ``rate == 0`` returns ``x``.
    """
    rate = _check_dropout(x, key, rate)
    if rate == 0.0:
        return x  # the identity: nothing to drop, nothing to derive
    return _dropout(x, key, rate)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, key, rate):
    return dropout_reference(x, key, rate)


def _dropout_fwd(x, key, rate):
    y, keep = _dropout_parts(x, key, rate)  # the reference's own computation
    return y, (keep,)


def _dropout_bwd(rate, res, dy):
    (keep,) = res
    dx = jnp.where(keep, dy * (1.0 / (1.0 - rate)), jnp.zeros_like(dy))  # dx = dy keep / (1 - r)
    return dx, None  # the key gets no gradient


_dropout.defvjp(_dropout_fwd, _dropout_bwd)
