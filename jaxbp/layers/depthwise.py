r"""Depthwise convolution as a sum over the kernel's taps: shifted slices times per-channel weights.

A depthwise convolution (``conv2d`` with ``groups == Cin``, one input channel per group) with
channel multiplier ``m`` (``w`` [KH, KW, 1, Cin m]; output channel ``c m + l`` reads input
channel ``c``). With ``tap_ij(a)[n,o,p] = a[n, s o + d i, s p + d j]`` the cells tap (i, j)
meets in every window of the padded input ``xp`` (``s`` the stride, ``d`` the dilation):

    forward:  y[..., c m + l] = sum_{i,j} tap_ij(xp)[..., c] w[i, j, 0, c m + l]
    backward: dx[..., c]      = sum_{i,j} sum_l tap_ij(dyp)[..., c m + l] w[KH-1-i, KW-1-j, 0, c m + l]
                  (``dyp``: dy with s - 1 zeros between its rows/cols, padded as conv2d's dx:
                  the same correlation at stride 1 with the kernel rotated 180 degrees)
              dw[i, j, 0, c m + l] = sum_{n,o,p} tap_ij(xp)[n,o,p,c] dy[n,o,p,c m + l]

No convolution op: KH KW fused multiply-adds per output element, vectorised along the
channels, and KH KW reductions for ``dw``. The batch goes through ``lax.map`` / ``lax.scan``
in blocks of ``block`` images, so each block's taps are read from cache; the padded input is
materialised (XLA fusing the pad into every tap's slice costs a bounds check per tap and
element): once for the forward and dx, block by block for dw. The sums are those of the
convolution in another order, in float32 at least (a bfloat16 result rounds once, as the
convolution's): equal up to rounding.
When conv2d takes this route, and the block size, is :func:`jaxbp.kernels.conv.conv_route`'s
choice (with the measurements behind it).

A convolution of one input channel (``groups == Cin == 1``, the first layer of an image model)
is the case ``Cin = 1``, ``m = Cout``. Its forward runs channel-major (:func:`one_channel_forward`):

    y^T[c, n, o, p] = b[c] + sum_{i,j} w[i, j, 0, c] tap_ij(xp)[n, o, p, 0],   y = y^T moved to NHWC

each tap a scalar weight times an image plane, rather than the one-channel tap repeated along
the channels; its backward is the convolution's (dx rarely owed, dw one convolution).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def sum_dtype(dtype):
    """The dtype the taps sum in: float32 at least, as XLA's convolutions accumulate (a bfloat16
    result is then rounded once, not once per tap)."""
    return jnp.promote_types(dtype, jnp.float32)


def out_dtype(x, w, b):
    """The forward's dtype: x's, w's and the bias's (None: none) promoted together."""
    return jnp.result_type(x, w) if b is None else jnp.result_type(x, w, b)


def tap(a, i, j, out_hw, stride, dilation):
    """a[:, d_h i + s_h o, d_w j + s_w p, :] for every output (o, p): [N, Ho, Wo, C]."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    start = (0, dh * i, dw * j, 0)
    limit = (a.shape[0], start[1] + sh * (ho - 1) + 1, start[2] + sw * (wo - 1) + 1, a.shape[3])
    return lax.slice(a, start, limit, (1, sh, sw, 1))


def map_blocks(fn, block, *arrays):
    """``fn`` over the batch in blocks of ``block`` images (one call when the block is the batch)."""
    n = arrays[0].shape[0]
    if block >= n:
        return fn(*arrays)
    blocked = [a.reshape(n // block, block, *a.shape[1:]) for a in arrays]
    out = lax.map(lambda args: fn(*args), blocked)
    return out.reshape(n, *out.shape[2:])


def repeat_channels(a, m):
    """a[..., c] at channel c m + l for l < m: the input channel each output channel reads.

    (Flat channels throughout: a trailing axis of the multiplier, size 1 when m = 1, makes XLA:CPU's
    reductions over the other axes 20x slower.)"""
    return a if m == 1 else jnp.repeat(a, m, axis=-1)


def correlate(xp, w, out_hw, stride, dilation):
    """y[..., c m + l] = sum_{i,j} tap_ij(xp)[..., c] w[i, j, 0, c m + l]: [N, Ho, Wo, C m]."""
    kh, kw, _, cm = w.shape
    m = cm // xp.shape[3]
    y = None
    for i in range(kh):
        for j in range(kw):
            term = repeat_channels(tap(xp, i, j, out_hw, stride, dilation), m) * w[i, j, 0]
            y = term if y is None else y + term
    return y


def depthwise_forward(x, w, b, padding, stride, dilation, out_hw, block):
    """The forward, x padded once and correlated with w block by block, plus the bias (None: none)."""
    dtype = out_dtype(x, w, b)
    acc = sum_dtype(dtype)
    xp, w = jnp.pad(x.astype(acc), ((0, 0), *padding, (0, 0))), w.astype(acc)
    y = map_blocks(lambda xb: correlate(xb, w, out_hw, stride, dilation), block, xp)
    return (y if b is None else y + b.astype(acc)).astype(dtype)


def one_channel_forward(x, w, b, padding, stride, dilation, out_hw):
    """The forward of a convolution of one input channel (x [N, H, W, 1], w [KH, KW, 1, Cout]), plus
    the bias: ``y^T[c] = b[c] + sum_{i,j} w[i, j, 0, c] tap_ij(xp)[..., 0]``, then NHWC.

    y passes an optimization barrier: without it cnn-bn's manual step under XLA's defaults ran
    77.4 ms against 62.0 with the convolution, with it 54.5 (one process, ``experiments/conv_routes.py``,
    AMD EPYC AVX2). The barrier does not materialise y: the compiled step still recomputes the taps
    inside the consumers XLA fuses them into (seven fusions of cnn-bn's step read w, under XLA's
    defaults and jaxbp's AVX2 flags), which measured faster than materialising them in a loop over
    blocks of images (69.6 ms against 73.3-74.4, 40 rounds, the AVX2 flags)."""
    dtype = out_dtype(x, w, b)
    acc = sum_dtype(dtype)
    kh, kw, _, cout = w.shape
    xp = jnp.pad(x[..., 0].astype(acc), ((0, 0), *padding))[..., None]
    w = w.astype(acc)
    y = None if b is None else b.astype(acc)[:, None, None, None]
    for i in range(kh):
        for j in range(kw):
            term = w[i, j, 0][:, None, None, None] * tap(xp, i, j, out_hw, stride, dilation)[None, ..., 0]
            y = term if y is None else y + term
    y = jnp.transpose(y, (1, 2, 3, 0)).astype(dtype)  # [Cout, N, Ho, Wo] -> [N, Ho, Wo, Cout]
    return lax.optimization_barrier(y)


def depthwise_dx(dy, w, x_shape, dx_pads, stride, dilation, block):
    """dx = sum_{i,j} sum_l tap_ij(dyp) rot180(w): dy dilated by the stride and padded by ``dx_pads``
    (conv2d's dx padding, negative entries crop), correlated at stride 1."""
    kh, kw, _, cm = w.shape
    c = x_shape[3]
    dtype = jnp.result_type(dy, w)
    acc = sum_dtype(dtype)
    zero = jnp.zeros((), acc)
    dyp = lax.pad(
        dy.astype(acc), zero, ((0, 0, 0), (*dx_pads[0], stride[0] - 1), (*dx_pads[1], stride[1] - 1), (0, 0, 0))
    )
    w_rot = w.astype(acc)[::-1, ::-1]

    def block_dx(dyb):
        total = None
        for i in range(kh):
            for j in range(kw):
                term = tap(dyb, i, j, x_shape[1:3], (1, 1), dilation) * w_rot[i, j, 0]
                total = term if total is None else total + term
        if cm == c:
            return total
        return jnp.sum(total.reshape(*total.shape[:3], c, cm // c), axis=-1)  # over the multiplier l

    return map_blocks(block_dx, block, dyp).astype(dtype)


def depthwise_dw(x, dy, w_shape, padding, stride, dilation, block):
    """dw[i, j, 0, c m + l] = sum_{n,o,p} tap_ij(xp)[n,o,p,c] dy[n,o,p,c m + l], summed block by block.

    Each block of x is padded in the loop (materialised: an optimization barrier), not the whole
    batch before it: a padded copy of x would live beside the backward's other buffers (ConvNeXt's
    manual step: 119.3 MiB of temp buffers against autodiff's 116.2, 112.4 padded per block, and
    145.7 -> 137.2 ms a step; one process, 30 rounds, AMD EPYC AVX2)."""
    kh, kw, _, cm = w_shape
    n, ho, wo, _ = dy.shape
    c = x.shape[3]
    dtype = jnp.result_type(x, dy)
    acc = sum_dtype(dtype)
    dy = dy.astype(acc)

    def block_dw(dw, args):
        xb, dyb = args
        xb = lax.optimization_barrier(jnp.pad(xb.astype(acc), ((0, 0), *padding, (0, 0))))
        taps = [
            jnp.sum(repeat_channels(tap(xb, i, j, (ho, wo), stride, dilation), cm // c) * dyb, axis=(0, 1, 2))
            for i in range(kh)
            for j in range(kw)
        ]
        return dw + jnp.stack(taps).reshape(kh, kw, 1, cm), None

    zero = jnp.zeros((kh, kw, 1, cm), acc)
    if block >= n:
        return block_dw(zero, (x, dy))[0].astype(dtype)
    blocked = (x.reshape(n // block, block, *x.shape[1:]), dy.reshape(n // block, block, ho, wo, cm))
    return lax.scan(block_dw, zero, blocked)[0].astype(dtype)
