r"""Global average pooling: the mean of every channel over the spatial axes.

Shapes: ``x`` [N, H, W, C], ``y`` [N, C]::

    forward:   y[n,c]      = (1 / (H W)) sum_{h,w} x[n,h,w,c]
    backward:  dx[n,h,w,c] = dy[n,c] / (H W)     (every cell had weight 1/(HW) in its channel's mean)

The backward is a broadcast of ``dy`` over the spatial axes; nothing is saved but the
(static) height and width. It replaces flatten + dense as the head of a residual network:
the classifier then sees C numbers per example, whatever the input's size.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxbp.layers import _checks


def _check(x) -> None:
    _checks.require_rank("global_avg_pool", "x", x, 4)
    _checks.require_float("global_avg_pool", "x", x)


def global_avg_pool_reference(x: jax.Array) -> jax.Array:
    """Mean over H and W. Shapes: x [N, H, W, C] -> [N, C]."""
    _check(x)
    return jnp.mean(x, axis=(1, 2))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over H and W with a hand-derived VJP: ``dx = broadcast(dy) / (H W)``. x [N, H, W, C] -> [N, C]."""
    _check(x)
    return _global_avg_pool(x, (x.shape[1], x.shape[2]))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _global_avg_pool(x, hw):
    return global_avg_pool_reference(x)


def _global_avg_pool_fwd(x, hw):
    return global_avg_pool_reference(x), None  # nothing to save: H and W are static


def _global_avg_pool_bwd(hw, res, dy):
    h, w = hw
    scale = jnp.asarray(1.0 / (h * w), dy.dtype)
    dx = jnp.broadcast_to((dy * scale)[:, None, None, :], (dy.shape[0], h, w, dy.shape[1]))  # dx = dy / (H W)
    return (dx,)


_global_avg_pool.defvjp(_global_avg_pool_fwd, _global_avg_pool_bwd)
