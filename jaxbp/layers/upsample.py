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

The forward computes the two products (the matrices depend only on the static sizes: built
with NumPy at trace time, they enter the graph as constants). The backward forms neither
transpose: along an axis, output ``o = s i + r`` (phase ``r < s``) sits at ``src = i + d_r``,
``d_r = (2 r + 1 - s) / (2 s)`` in (-1/2, 1/2), so with ``xp`` the input edge-padded by one cell
(``xp[j] = x[clip(j - 1, 0, size - 1)]``, which is the clamp) each row of A is two taps:

    y[s i + r] = a_r xp[i + k_r] + b_r xp[i + k_r + 1]
        d_r >= 0: k_r = 1, (a_r, b_r) = (1 - d_r, d_r)     (x[i] and x[min(i + 1, size - 1)])
        d_r <  0: k_r = 0, (a_r, b_r) = (-d_r, 1 + d_r)    (x[max(i - 1, 0)] and x[i])

and A^T dy gathers, per input cell j, what the outputs that read it send back, with
``g_r[i] = dy[s i + r]`` (0 outside [0, size)):

    d_r >= 0:  dx[j] += a_r g_r[j] + b_r g_r[j - 1]   (and dx[size - 1] += b_r g_r[size - 1])
    d_r <  0:  dx[j] += a_r g_r[j + 1] + b_r g_r[j]   (and dx[0] += a_r g_r[0])

the bracketed terms being the clamped reads at the edges: element-wise multiply-adds of
shifted slices, which XLA:CPU runs in one loop. On a 2-core AMD EPYC (AVX2), 64x14x14x32 at
scale 2, this backward took 3.6 ms against the transposed products' 9.0 (and against 9.0 for
the same taps scattered onto the padded input). The taps would serve the forward too (1.9 ms
against 6.9), but the reference shares the forward, and ``jax.grad`` of the taps (pads and
strided slices transposed) ran 4x slower than of the products. :func:`bilinear_matrix` builds
A for the derivation and the tests. Neither backward reads a residual: the forward saves
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


def bilinear_phases(scale: int) -> tuple[tuple[int, float, float], ...]:
    """``(k_r, a_r, b_r)`` per phase r < scale: output ``s i + r`` is ``a_r xp[i + k_r] + b_r xp[i + k_r + 1]``
    of the input edge-padded by one cell (the module docstring derives them)."""
    phases = []
    for r in range(scale):
        d = (2 * r + 1 - scale) / (2 * scale)  # src = i + d: the centres of both grids aligned
        phases.append((1, 1.0 - d, d) if d >= 0 else (0, -d, 1.0 + d))
    return tuple(phases)


def _pad_axis(a, axis, lo, hi):
    """``a`` with ``lo`` zeros before and ``hi`` after along ``axis``."""
    return jnp.pad(a, [(lo, hi) if i == axis else (0, 0) for i in range(a.ndim)])


def _bilinear_maps(x, scale):
    """A_h [s_h H, H] and A_w [s_w W, W] in the dtype of ``x``."""
    (_, h, w, _), (sh, sw) = jnp.shape(x), scale
    return jnp.asarray(bilinear_matrix(h, sh), x.dtype), jnp.asarray(bilinear_matrix(w, sw), x.dtype)


def _apply_maps(a_h, a_w, x):
    """``a_h x a_w^T`` on every example and channel of ``x`` [N, H, W, C]."""
    y = jnp.einsum("oh,nhwc->nowc", a_h, x, precision=lax.Precision.HIGHEST)
    return jnp.einsum("pw,nowc->nopc", a_w, y, precision=lax.Precision.HIGHEST)


def _shift(a, axis, by):
    """``a[j - by]`` along ``axis``, 0 where that is outside ``a``."""
    n = a.shape[axis]
    if by > 0:
        return _pad_axis(lax.slice_in_dim(a, 0, n - by, axis=axis), axis, by, 0)
    return _pad_axis(lax.slice_in_dim(a, -by, n, axis=axis), axis, 0, -by)


def _interpolate_transpose(dy, axis, scale):
    """A^T dy along ``axis``, gathered per input cell j from the outputs that read it: phase r's
    ``g_r[i] = dy[s i + r]`` at i = j, j - 1 (k_r = 1) or j, j + 1 (k_r = 0), and at the edges the
    reads the clamp sent there."""
    n = dy.shape[axis] // scale
    phases = jnp.reshape(dy, (*dy.shape[:axis], n, scale, *dy.shape[axis + 1 :]))
    j = lax.broadcasted_iota(jnp.int32, [n if i == axis else 1 for i in range(dy.ndim)], axis)
    dx = None
    for r, (k, a, b) in enumerate(bilinear_phases(scale)):
        g = lax.index_in_dim(phases, r, axis=axis + 1, keepdims=False)  # g_r[i] = dy[s i + r]
        if k == 1:  # output i read x[i] (a_r) and x[min(i + 1, n - 1)] (b_r)
            term = a * g
            if b:  # dx[j] += b_r g_r[j - 1]; dx[n - 1] += b_r g_r[n - 1] (the clamped read)
                term = term + b * (_shift(g, axis, 1) + jnp.where(j == n - 1, g, 0))
        else:  # output i read x[max(i - 1, 0)] (a_r) and x[i] (b_r)
            # dx[j] += a_r g_r[j + 1] + b_r g_r[j]; dx[0] += a_r g_r[0] (the clamped read)
            term = b * g + a * (_shift(g, axis, -1) + jnp.where(j == 0, g, 0))
        dx = term if dx is None else dx + term
    return dx


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
    dx = _interpolate_transpose(dy, 2, sw)  # dy A_w: the transpose of the last map first
    return (_interpolate_transpose(dx, 1, sh).astype(dy.dtype),)  # A_h^T (dy A_w)


_upsample2d.defvjp(_upsample2d_fwd, _upsample2d_bwd)
