r"""Upsampling by an integer factor, NHWC: nearest neighbour and bilinear.

``upsample2d(x, scale, method)``, ``x`` [N, H, W, C], integer ``scale = (s_h, s_w)``, output
[N, s_h H, s_w W, C]; PyTorch ``F.interpolate(x, scale_factor=scale, mode=method,
align_corners=False)`` on the NCHW view.

Output positions are (o, p), input positions (u, v), as in :mod:`jaxbp.layers.conv`.

nearest: every input pixel is copied into an ``s_h x s_w`` block:

    forward:   y[n, o, p, c] = x[n, o // s_h, p // s_w, c]
    backward:  dx[n, u, v, c] = sum of dy over the block (u, v) was copied into
                              = sum_{a < s_h, b < s_w} dy[n, s_h u + a, s_w v + b, c]
               (s_h s_w times an average pooling of dy with window and stride (s_h, s_w))

bilinear (``align_corners=False``): along each axis, output index o reads the source
coordinate ``src = max((o + 1/2) / s - 1/2, 0)``, ``u0 = floor(src)``, ``u1 = min(u0 + 1, size - 1)``,
``lam = src - u0``, and mixes ``(1 - lam) x[u0] + lam x[u1]``. Each axis is therefore a
linear map, a matrix A [s size, size] with at most two non-zeros per row, and the layer is
separable:

    forward:   y  = A_h x A_w^T        (per example and channel: first along H, then along W)
    backward:  dx = A_h^T dy A_w       (the transpose of each map: each output spreads its dy
                                        back onto its two sources with the same weights)

The matrices depend only on the static sizes: they are built with NumPy at trace time
and enter the graph as constants. Neither backward reads a residual: the forward saves
nothing.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp.layers import _checks

_METHODS = ("nearest", "bilinear")


def _check_upsample(x, scale, method) -> tuple[int, int]:
    _checks.require_rank("upsample2d", "x", x, 4)
    _checks.require_float("upsample2d", "x", x)
    if method not in _METHODS:
        _checks.fail("upsample2d", f"method must be 'nearest' or 'bilinear', got {method!r}")
    return _checks.int_pair("upsample2d", "scale", scale)


def bilinear_matrix(size: int, scale: int) -> np.ndarray:
    """The [scale size, size] float64 matrix of bilinear upsampling along one axis (``align_corners=False``)."""
    dst = np.arange(size * scale)
    src = np.maximum((dst + 0.5) / scale - 0.5, 0.0)  # PyTorch clamps negative source coordinates to 0
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    lam = src - i0
    a = np.zeros((size * scale, size))
    np.add.at(a, (dst, i0), 1 - lam)  # add: i0 == i1 at the last row, where the weights sum to 1
    np.add.at(a, (dst, i1), lam)
    return a


def _bilinear_maps(x, scale):
    """A_h [s_h H, H] and A_w [s_w W, W] in the dtype of ``x``."""
    (_, h, w, _), (sh, sw) = jnp.shape(x), scale
    return jnp.asarray(bilinear_matrix(h, sh), x.dtype), jnp.asarray(bilinear_matrix(w, sw), x.dtype)


def _apply_maps(a_h, a_w, x):
    """``a_h x a_w^T`` on every example and channel of ``x`` [N, H, W, C]."""
    y = jnp.einsum("oh,nhwc->nowc", a_h, x, precision=lax.Precision.HIGHEST)
    return jnp.einsum("pw,nowc->nopc", a_w, y, precision=lax.Precision.HIGHEST)


def _upsample(x, scale, method):
    sh, sw = scale
    if method == "nearest":
        return jnp.repeat(jnp.repeat(x, sh, axis=1), sw, axis=2)  # y[o, p] = x[o // s_h, p // s_w]
    a_h, a_w = _bilinear_maps(x, scale)
    return _apply_maps(a_h, a_w, x)  # y = A_h x A_w^T


def upsample2d_reference(x: jax.Array, scale: int | tuple[int, int], method: str = "nearest") -> jax.Array:
    """Upsample ``x`` [N, H, W, C] by the integer ``scale`` (an int or an (s_h, s_w) pair).

    ``method`` ``"nearest"`` or ``"bilinear"`` (``align_corners=False``); returns [N, s_h H, s_w W, C].
    """
    return _upsample(x, _check_upsample(x, scale, method), method)


def upsample2d(x: jax.Array, scale: int | tuple[int, int], method: str = "nearest") -> jax.Array:
    """Upsampling with a hand-derived VJP. Shapes as :func:`upsample2d_reference`.

    nearest: ``dx`` sums ``dy`` over each ``s_h x s_w`` block; bilinear: ``dx = A_h^T dy A_w``.
    """
    return _upsample2d(x, _check_upsample(x, scale, method), method)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _upsample2d(x, scale, method):
    return _upsample(x, scale, method)


def _upsample2d_fwd(x, scale, method):
    return _upsample(x, scale, method), None  # linear: the backward reads nothing but dy


def _upsample2d_bwd(scale, method, res, dy):
    (sh, sw), (n, ho, wo, c) = scale, dy.shape
    if method == "nearest":
        blocks = jnp.reshape(dy, (n, ho // sh, sh, wo // sw, sw, c))
        return (jnp.sum(blocks, axis=(2, 4)),)  # dx[u, v] = sum of dy over the block of (u, v)
    a_h = jnp.asarray(bilinear_matrix(ho // sh, sh), dy.dtype)
    a_w = jnp.asarray(bilinear_matrix(wo // sw, sw), dy.dtype)
    dx = jnp.einsum("oh,nowc->nhwc", a_h, dy, precision=lax.Precision.HIGHEST)  # A_h^T dy
    return (jnp.einsum("pw,nhpc->nhwc", a_w, dx, precision=lax.Precision.HIGHEST),)  # (A_h^T dy) A_w


_upsample2d.defvjp(_upsample2d_fwd, _upsample2d_bwd)
