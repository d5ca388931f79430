r"""2-D max and average pooling over NHWC activations.

Shapes: ``x`` [N, H, W, C], ``y`` [N, Ho, Wo, C]; window (kh, kw), stride (sh, sw) (default the
window), ``xp`` the input padded by (lo, hi) per spatial axis; ``W(o, p)`` the window of output
``(o, p)``: the cells ``xp[sh o + i, sw p + j]``, 0 <= i < kh, 0 <= j < kw, in row-major order.

    max_pool2d:  y[o,p] = max_{(i,j)} xp[sh o + i, sw p + j]        (padded cells are -inf: they never win)
                 dx[r,q] = sum_{(o,p): (r,q) is the FIRST maximum of W(o,p)} dy[o,p]
                     each window sends its whole gradient to one cell, the first maximum in
                     row-major window order (what jax.grad of lax.reduce_window max gives, ties
                     included); a cell that wins several overlapping windows sums their dy
    avg_pool2d:  y[o,p] = (1 / (kh kw)) sum_{(i,j)} xp[sh o + i, sw p + j]   (padded cells count as 0)
                 dx[r,q] = sum_{(o,p): (r,q) in W(o,p)} dy[o,p] / (kh kw)
                     dy / (kh kw) spread evenly over each window; overlaps add up, the share of
                     padded cells is dropped

Both backwards take one of two routes. Where the stride equals the window (the windows tile
the padded input), the input is cut into tiles [N, Ho, kh, Wo, kw, C] by a pad/crop and a
reshape, the tile's gradient is a broadcast (avg) or ``dy`` times a first-maximum one-hot
mask (max), and a reshape and a crop put it back; rows/cols no window covers get 0. Otherwise
(overlapping or gapped windows) the gradient is a sum over the kh kw window offsets ``(i, j)``
of the per-offset contribution, dilated by the stride and shifted by the offset (a strided pad).

max_pool2d with tiling windows saves only the row-major position of each window's first
maximum (int8, found in the forward, while ``x`` is fresh in cache, by one reduction over the
window's cells that keeps the earliest one equal to ``y``), so its backward is a select per
cell; with overlapping or gapped
windows it saves ``x`` and ``y`` (the mask compares the two). avg_pool2d saves nothing (the
shapes are static).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers import _checks
from jaxbp.layers.conv import Pads, add_at_window_taps, padding_pairs, window_tap


class _Pool(NamedTuple):
    """The static hyper-parameters, normalised (hashable: it goes through ``nondiff_argnums``)."""

    window: tuple[int, int]
    stride: tuple[int, int]
    padding: Pads
    hw: tuple[int, int]  # the input's height and width


def _check_pool(layer, x, window, stride, padding) -> _Pool:
    _checks.require_rank(layer, "x", x, 4)
    _checks.require_float(layer, "x", x)
    window = _checks.int_pair(layer, "window", window)
    stride = window if stride is None else _checks.int_pair(layer, "stride", stride)
    shape = f" (x has shape {tuple(jnp.shape(x))}, window {window}, stride {stride})"
    pads = padding_pairs(layer, padding, jnp.shape(x)[1:3], window, stride, shape)
    for axis, n, (lo, hi), k in zip(("height", "width"), jnp.shape(x)[1:3], pads, window):
        if lo >= k or hi >= k:
            _checks.fail(layer, f"padding {(lo, hi)} along the {axis} must be smaller than the window ({k}){shape}")
        if k > n + lo + hi:
            _checks.fail(layer, f"the window's {axis} ({k}) is larger than the padded input's ({n + lo + hi}){shape}")
    return _Pool(window, stride, pads, tuple(jnp.shape(x)[1:3]))


def _reduce_window(x, init, op, cfg):
    return lax.reduce_window(x, init, op, (1, *cfg.window, 1), (1, *cfg.stride, 1), ((0, 0), *cfg.padding, (0, 0)))


# ------------------------------------------------------------------ max_pool2d


def max_pool2d_reference(
    x: jax.Array,
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: str | int | Pads = "VALID",
) -> jax.Array:
    """Max pooling, ``lax.reduce_window`` with ``max`` from -inf (padded cells never win).

    Shapes: x [N, H, W, C]; returns [N, Ho, Wo, C], ``Ho = (H + top + bottom - kh) // sh + 1``.
    """
    cfg = _check_pool("max_pool2d", x, window, stride, padding)
    return _reduce_window(x, -jnp.inf, lax.max, cfg)


def max_pool2d(
    x: jax.Array,
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: str | int | Pads = "VALID",
) -> jax.Array:
    """Max pooling with a hand-derived VJP. Shapes as :func:`max_pool2d_reference`.

    Backward: each window's ``dy`` goes to its first maximum (row-major); overlaps add up.
    """
    return _max_pool2d(x, _check_pool("max_pool2d", x, window, stride, padding))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool2d(x, cfg):
    return max_pool2d_reference(x, cfg.window, cfg.stride, cfg.padding)


def _max_pool2d_fwd(x, cfg):
    y = max_pool2d_reference(x, cfg.window, cfg.stride, cfg.padding)
    if cfg.stride == cfg.window:  # tiles: each window's first maximum, found while x is fresh
        return y, (_first_max_in_tiles(x, y, cfg),)
    return y, (x, y)  # the backward finds each window's maximum by comparing x with y


def _max_pool2d_bwd(cfg, res, dy):
    if cfg.stride == cfg.window:
        (first,) = res
        return (_max_pool2d_dx_tiles(first, dy, cfg),)
    x, y = res
    return (_max_pool2d_dx_offsets(x, y, dy, cfg),)


_max_pool2d.defvjp(_max_pool2d_fwd, _max_pool2d_bwd)

# ------------------------------------------------------------------ avg_pool2d


def avg_pool2d_reference(
    x: jax.Array,
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: str | int | Pads = "VALID",
) -> jax.Array:
    """Average pooling: the window sum (``lax.reduce_window`` add, padded cells 0) over kh kw.

    Shapes: x [N, H, W, C]; returns [N, Ho, Wo, C]. Padded cells count in the divisor.
    """
    cfg = _check_pool("avg_pool2d", x, window, stride, padding)
    return _reduce_window(x, 0.0, lax.add, cfg) / (cfg.window[0] * cfg.window[1])


def avg_pool2d(
    x: jax.Array,
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: str | int | Pads = "VALID",
) -> jax.Array:
    """Average pooling with a hand-derived VJP. Shapes as :func:`avg_pool2d_reference`.

    Backward: ``dy / (kh kw)`` spread over each window; overlaps add up, padded cells dropped.
    """
    return _avg_pool2d(x, _check_pool("avg_pool2d", x, window, stride, padding))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool2d(x, cfg):
    return avg_pool2d_reference(x, cfg.window, cfg.stride, cfg.padding)


def _avg_pool2d_fwd(x, cfg):
    return avg_pool2d_reference(x, cfg.window, cfg.stride, cfg.padding), None  # nothing to save: the shape is static


def _avg_pool2d_bwd(cfg, res, dy):
    share = dy / (cfg.window[0] * cfg.window[1])  # each of the kh kw cells of a window gets dy / (kh kw)
    if cfg.stride == cfg.window:
        tiles = jnp.broadcast_to(share[:, :, None, :, None, :], _tiles_shape(share, cfg))
        return (_untile(tiles, cfg),)
    return (add_at_window_taps(lambda i, j: share, cfg.hw, cfg.window, cfg.stride, (1, 1), cfg.padding),)


_avg_pool2d.defvjp(_avg_pool2d_fwd, _avg_pool2d_bwd)

# ------------------------------------------------------------- backward terms


def _tiles_shape(y, cfg):
    (kh, kw), (n, ho, wo, c) = cfg.window, y.shape
    return (n, ho, kh, wo, kw, c)


def _tile(x, fill, y_shape, cfg):
    """[N, H, W, C] -> [N, Ho, kh, Wo, kw, C] when stride == window: pad by ``lo`` (with ``fill``),
    pad or crop the far side to exactly Ho kh rows (Wo kw cols), reshape."""
    (kh, kw), ((top, _), (left, _)) = cfg.window, cfg.padding
    n, ho, wo, c = y_shape
    rows, cols = ho * kh - top - x.shape[1], wo * kw - left - x.shape[2]  # negative: crop
    xp = lax.pad(x, jnp.asarray(fill, x.dtype), ((0, 0, 0), (top, rows, 0), (left, cols, 0), (0, 0, 0)))
    return xp.reshape(n, ho, kh, wo, kw, c)


def _untile(t, cfg):
    """The inverse of :func:`_tile` for gradients: reshape, drop the padding, zero-fill uncovered rows/cols."""
    n, ho, kh, wo, kw, c = t.shape
    ((top, _), (left, _)), hw = cfg.padding, cfg.hw
    rows, cols = hw[0] - (ho * kh - top), hw[1] - (wo * kw - left)
    return lax.pad(
        t.reshape(n, ho * kh, wo * kw, c),
        jnp.zeros((), t.dtype),
        ((0, 0, 0), (-top, rows, 0), (-left, cols, 0), (0, 0, 0)),
    )


def _first_max_in_tiles(x, y, cfg):
    """Non-overlapping windows: the row-major position t = i kw + j of each window's first
    maximum, [N, Ho, Wo, C], int8 (int32 for windows of over 127 cells); kh kw where no cell
    equals the maximum (a NaN window), so that no cell gets its gradient.

    A min over the window's cells (t where the cell equals the maximum, kh kw elsewhere):
    as a reduction, XLA computes it once, in the forward, instead of fusing it into the
    backward, where each of a window's cells would redo the whole window's comparisons. Its
    combiner is spelled as a select, not ``lax.min``, which YNNPACK's reduce fusion would
    take after materialising every cell's candidates.
    """
    kh, kw = cfg.window
    xt = _tile(x, -jnp.inf, y.shape, cfg)  # [N, Ho, kh, Wo, kw, C]
    dtype = jnp.int8 if kh * kw < 128 else jnp.int32
    none = jnp.asarray(kh * kw, dtype)
    cells = [jnp.where(xt[:, :, t // kw, :, t % kw, :] == y, jnp.asarray(t, dtype), none) for t in range(kh * kw)]
    earlier = lambda a, b: lax.select(a < b, a, b)  # noqa: E731
    return lax.reduce(jnp.stack(cells, axis=-1), none, earlier, (y.ndim,))


def _max_pool2d_dx_tiles(first, dy, cfg):
    """Non-overlapping windows: dx = dy * one-hot(first maximum of each tile), cell by cell."""
    kh, kw = cfg.window
    zero = jnp.zeros((), dy.dtype)
    cells = [jnp.where(first == i * kw + j, dy, zero) for i in range(kh) for j in range(kw)]  # dx = dy [t is first]
    dxt = jnp.stack(cells, axis=3).reshape(*dy.shape[:3], kh, kw, dy.shape[3])  # [N, Ho, Wo, kh, kw, C]
    return _untile(dxt.transpose(0, 1, 3, 2, 4, 5), cfg)  # [N, Ho, kh, Wo, kw, C] -> [N, H, W, C]


def _max_pool2d_dx_offsets(x, y, dy, cfg):
    """Overlapping or gapped windows: walk the window offsets in row-major order; the first offset
    whose cell equals the window's maximum takes the window's dy, later equal cells get nothing."""
    xp = lax.pad(x, jnp.asarray(-jnp.inf, x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in cfg.padding), (0, 0, 0)))
    taken = jnp.zeros(y.shape, bool)  # windows whose maximum an earlier offset already claimed
    wins = {}
    for i in range(cfg.window[0]):
        for j in range(cfg.window[1]):
            wins[i, j] = (window_tap(xp, i, j, y.shape[1:3], cfg.stride, (1, 1)) == y) & ~taken
            taken = taken | wins[i, j]
    return add_at_window_taps(  # dx = sum over offsets of dy * [offset is the first maximum], put back in place
        lambda i, j: jnp.where(wins[i, j], dy, jnp.zeros((), dy.dtype)),
        cfg.hw,
        cfg.window,
        cfg.stride,
        (1, 1),
        cfg.padding,
    )
