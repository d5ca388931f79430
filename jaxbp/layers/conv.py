r"""2-D convolution: NHWC activations, HWIO kernels, strides, padding, dilation and groups.

Shapes: ``x`` [N, H, W, Cin], ``w`` [KH, KW, Cin/G, Cout], ``b`` [Cout], ``y`` [N, Ho, Wo, Cout];
``G`` groups, output channel ``c`` reading the input channels of its group ``g(c)``;
``xp`` is ``x`` zero-padded by (lo, hi) per spatial axis, ``s`` the stride, ``d`` the dilation:

    forward:   y[n,o,p,c] = b[c] + sum_{i,j,k} xp[n, s o + d i, s p + d j, g(c) Cin/G + k] w[i,j,k,c]
                   (the manual layer's, on YNNPACK's CPU kernels, for inputs of at least 16 channels
                   per group at stride 1 whose output is at least as tall as x (Ho >= H, as with
                   SAME padding), one row taller and cropped: see FORWARD_OFF_YNNPACK_CHANNELS)

    backward:  dx = conv(pad(dilate_s(dy)), rot180(w)^T)
                   the output gradient with s - 1 zeros between its rows/cols, padded by
                   d (K - 1) - lo before and by whatever brings it back to H after: rows/cols
                   the forward never read get 0 (the last r = (H + lo + hi - d (K - 1) - 1) mod s
                   of the padded input, less those that are padding; and, where the taps leave
                   gaps, every padded row not of the form s o + d i: for K, Ho > 1 there are gaps
                   at d = 1 exactly when s > K, at s = 1 exactly when d > Ho), convolved
                   at stride 1 and dilation d with the kernel rotated 180 degrees and its
                   in/out feature axes swapped inside each group (on YNNPACK's CPU kernels,
                   padded by one row more and cropped back: see the notes above IM2COL_MAX_CHANNELS)
               dw[i,j,k,c] = sum_{n,o,p} xp[n, s o + d i, s p + d j, g(c) Cin/G + k] dy[n,o,p,c]
                   the correlation of the input with dy as one convolution (channels as the
                   batch, N as the contracted feature axis; on YNNPACK's CPU kernels over x
                   dilated by 2, the taps scaled to match); grouped inputs of 2 to 32 channels
                   per group on the CPU: im2col patches^T dy, one matmul per group and block
               db[c] = sum_{n,o,p} dy[n,o,p,c]

Depthwise inputs (groups == Cin >= DEPTHWISE_TAPS_CHANNELS) on the CPU: the same forward, dx and dw
as sums over the kernel's taps (jaxbp.layers.depthwise), no convolution op.

The forward saves ``x`` and ``w``; whether a ``db`` is owed is static.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp import xla_flags
from jaxbp.layers import _checks, depthwise

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def padding_pairs(layer: str, padding, in_hw, window, stride, context: str = "") -> Pads:
    """Normalise a padding spec to ``((top, bottom), (left, right))``.

    ``padding`` is "VALID", "SAME" (as ``lax``: output ``ceil(in / stride)``), an int (every
    side) or a pair of (before, after) pairs; ``window`` is the (dilated) window extent.
    """
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        pads = lax.padtype_to_pads(tuple(in_hw), tuple(window), tuple(stride), padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(padding):
        pads = ((padding, padding), (padding, padding))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(is_int(v) for v in p) for p in padding)
    ):
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    else:
        _checks.fail(
            layer,
            f"padding must be 'VALID', 'SAME', an int or ((top, bottom), (left, right)), got {padding!r}{context}",
        )
    if min(min(p) for p in pads) < 0:
        _checks.fail(layer, f"padding must be >= 0, got {padding!r}{context}")
    return pads


# The formulations suit the kernels XLA will run them with. XLA:CPU sends most convolutions
# to YNNPACK by default (jaxlib 0.10), to its own kernels when XLA_FLAGS leaves them out of the
# YNNPACK fusions (as jaxbp's flags for AVX-512 do) and on other backends
# (convolutions_on_ynnpack). YNNPACK refuses a convolution (xla/backends/cpu/ynn_support.cc)
# with a dilated input (lhs dilation), or an output larger than its input, and XLA then runs it
# on its own kernel. Measured on a 2-core Intel Xeon (Sapphire Rapids, AVX-512), bare kernels
# in one process, interleaved (experiments/layer_timing.py --kernels, under each flag set; the
# cnn's conv2 is 128x14x14x32 -> 64, 3x3 SAME):
# - dw: YNNPACK runs the dw convolution (conv2d_dw_conv) slowly, 27.0 ms for conv2, where XLA's
#   kernel takes 6.8. On YNNPACK the convolution reads x dilated by DW_LHS_DILATION (zeros between
#   its rows and cols; the strides and the dy taps scaled to match, so every tap still lands on
#   x), which YNNPACK refuses: 7.4 ms, and faster than the blocked im2col (13.0 ms for conv2) at
#   every ungrouped shape of experiments/conv_kernel_sweep.py (1 to 64 channels, 7x7 to 28x28,
#   stride 1 and 2, batch 32 to 512). Grouped convolutions (groups > 1, more than one channel
#   per group) run as batch-grouped convolutions 8-21x slower than im2col on XLA:CPU (either
#   kernel), so they go through im2col and one matmul per group on the CPU for up to
#   IM2COL_MAX_CHANNELS per group; depthwise ones (one channel per group) are faster as the
#   convolution than by im2col, and faster still as sums over the taps (below).
# - dx: YNNPACK's dx kernel is the slower one, so where YNNPACK would take dx (stride 1, dy as
#   large as x) the convolution computes one row more than x has, which is cropped: 1/H more
#   multiplications, on XLA's kernel.
# - forward: the same refusal keeps the forward off YNNPACK when it is computed one row taller
#   and cropped. XLA's kernel is the faster one for inputs of at least
#   FORWARD_OFF_YNNPACK_CHANNELS channels per group: 7.1 -> 4.7 ms for conv2, 1.2-1.9x for 16 to
#   64 channels (level at batch 32; grouped 2-3x), but 2x slower for conv1's single channel,
#   1.4x for a depthwise one and mixed for 3 to 8 (experiments/conv_kernel_sweep.py). Only the
#   manual layer's forward does this: the reference's transpose would correlate x with a dy
#   taller than x, a convolution whose kernel is larger than its input, which XLA:CPU runs as a
#   naive loop (autodiff's cnn step: 0.9 s).
# The whole manual cnn train step, each route against the one before it, in one process
# (experiments/conv_routes.py): see the README's Speed section.
# im2col works through the batch in blocks of images whose patches take about
# IM2COL_BLOCK_BYTES, so each block's patches stay in cache between being written and being
# multiplied. Every route and shape is exact; the tests run all of them.
IM2COL_MAX_CHANNELS = 32
IM2COL_BLOCK_BYTES = 2**20
DW_LHS_DILATION = 2
FORWARD_OFF_YNNPACK_CHANNELS = 16
# - depthwise (one input channel per group, groups > 1) on the CPU, from DEPTHWISE_TAPS_CHANNELS
#   input channels: the forward, dx and dw as sums over the kernel's taps (jaxbp.layers.depthwise),
#   no convolution op. 7x7 SAME, batch 64, 14x14x128 on a 2-core AMD EPYC (AVX2), forward plus
#   backward: see experiments/results/depthwise_timing.json. Fewer channels: not measured, the
#   convolutions (the taps vectorise along the channels).
DEPTHWISE_TAPS_CHANNELS = 16


def convolutions_on_ynnpack() -> bool:
    """Whether the convolutions being traced will run on YNNPACK's kernels: the CPU backend
    with ``XLA_FLAGS`` that send them there (:func:`jaxbp.xla_flags.ynnpack_convolutions`)."""
    return jax.default_backend() == "cpu" and xla_flags.ynnpack_convolutions()


def output_hw(in_hw, kernel_hw, pads: Pads, stride, dilation) -> list[int]:
    """The output's rows and cols: ``(n + lo + hi - (d (k - 1) + 1)) // s + 1`` per spatial axis."""
    return [
        (n + lo + hi - (d * (k - 1) + 1)) // s + 1
        for n, k, (lo, hi), s, d in zip(in_hw, kernel_hw, pads, stride, dilation)
    ]


def im2col_images_per_block(n, out_hw, patch_size, itemsize) -> int:
    """Images per im2col block: as many as fit IM2COL_BLOCK_BYTES, spread evenly over the blocks."""
    per_image = max(1, out_hw[0] * out_hw[1] * patch_size * itemsize)
    blocks = -(-n // max(1, IM2COL_BLOCK_BYTES // per_image))
    return max(1, -(-n // max(1, blocks)))


class ConvConfig(NamedTuple):
    """The static hyper-parameters, normalised (hashable: it goes through ``nondiff_argnums``)."""

    stride: tuple[int, int]
    padding: Pads
    dilation: tuple[int, int]
    groups: int
    has_bias: bool
    im2col_block: int  # dw by im2col in blocks of this many images (grouped, on the CPU); 0: by a convolution
    dw_lhs_dilation: int  # dw's convolution reads x dilated by this: DW_LHS_DILATION keeps it off YNNPACK
    dx_extra_row: bool  # dx computed one row taller than x, then cropped: keeps it off YNNPACK
    y_extra_row: bool  # the forward computed one row taller than y, then cropped: the same
    taps_block: (
        int  # depthwise as sums over the taps (jaxbp.layers.depthwise), this many images a block; 0: convolutions
    )


def conv_config(x, w, b, stride, padding, dilation, groups) -> ConvConfig:
    """The layer's static configuration: the arguments checked (a one-line error that names what
    is wrong) and normalised, and the formulations chosen for the kernels XLA will run them on
    (the notes above IM2COL_MAX_CHANNELS). Read while tracing: ``XLA_FLAGS`` and the backend."""
    shapes = f" (x has shape {tuple(jnp.shape(x))}, w has shape {tuple(jnp.shape(w))})"
    for name, a in (("x", x), ("w", w)):
        if jnp.ndim(a) != 4:
            layout = "[N, H, W, Cin]" if name == "x" else "[KH, KW, Cin/groups, Cout]"
            _checks.fail("conv2d", f"{name} must have rank 4 {layout}, got rank {jnp.ndim(a)}{shapes}")
    stride = _checks.int_pair("conv2d", "stride", stride)
    dilation = _checks.int_pair("conv2d", "dilation", dilation)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        _checks.fail("conv2d", f"groups must be an int >= 1, got {groups!r}{shapes}")
    _, h, wd, cin = jnp.shape(x)
    kh, kw, cin_g, cout = jnp.shape(w)
    if cin != cin_g * groups:
        _checks.fail(
            "conv2d",
            f"x has {cin} input channels but w expects {cin_g} per group x {groups} groups = {cin_g * groups}{shapes}",
        )
    if cout % groups:
        _checks.fail("conv2d", f"Cout ({cout}) must be divisible by groups ({groups}){shapes}")
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, (kh, kw)))
    pads = padding_pairs("conv2d", padding, (h, wd), extent, stride, shapes)
    for axis, n, (lo, hi), e in zip(("height", "width"), (h, wd), pads, extent):
        if e > n + lo + hi:
            _checks.fail(
                "conv2d",
                f"the kernel's {axis} ({e} after dilation) is larger than the padded input's ({n + lo + hi}){shapes}",
            )
    if b is not None and tuple(jnp.shape(b)) != (cout,):
        _checks.fail("conv2d", f"b must have shape ({cout},), got {tuple(jnp.shape(b))}{shapes}")
    out_hw = output_hw((h, wd), (kh, kw), pads, stride, dilation)
    on_ynnpack = convolutions_on_ynnpack()
    block = 0
    if jax.default_backend() == "cpu" and groups > 1 and 1 < cin_g <= IM2COL_MAX_CHANNELS:
        block = im2col_images_per_block(jnp.shape(x)[0], out_hw, kh * kw * cin, jnp.dtype(jnp.result_type(x)).itemsize)
    taps = 0
    if jax.default_backend() == "cpu" and groups > 1 and cin_g == 1 and cin >= DEPTHWISE_TAPS_CHANNELS:
        itemsize = jnp.dtype(jnp.result_type(x)).itemsize
        taps = depthwise.images_per_block(jnp.shape(x)[0], (h + sum(pads[0])) * (wd + sum(pads[1])) * cin * itemsize)
    on_ynnpack = on_ynnpack and not taps  # the taps run no convolution
    dw_lhs_dilation = DW_LHS_DILATION if on_ynnpack and not block else 1
    # YNNPACK would take dx's convolution: no lhs dilation (stride 1), an output (x) no larger than its input (dy)
    extra_row = on_ynnpack and stride == (1, 1) and h <= out_hw[0] and wd <= out_hw[1]
    # and the forward's, for wide enough inputs: at stride 1, one more output row than x has rows
    y_extra_row = on_ynnpack and stride == (1, 1) and out_hw[0] >= h and cin_g >= FORWARD_OFF_YNNPACK_CHANNELS
    return ConvConfig(
        stride, pads, dilation, groups, b is not None, block, dw_lhs_dilation, extra_row, y_extra_row, taps
    )


def conv2d_reference(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: str | int | Pads = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> jax.Array:
    """``lax.conv_general_dilated`` in NHWC/HWIO, plus the bias.

    Shapes: x [N, H, W, Cin], w [KH, KW, Cin/groups, Cout], b [Cout] or None; returns
    [N, Ho, Wo, Cout] with ``Ho = (H + top + bottom - dilation (KH - 1) - 1) // stride + 1``.
    """
    return convolution(x, w, b, conv_config(x, w, b, stride, padding, dilation, groups), extra_row=False)


def convolution(x, w, b, cfg, extra_row):
    """The forward convolution plus the bias; with ``extra_row`` (stride 1) computed one row taller and cropped."""
    (top, bottom), cols = cfg.padding
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=cfg.stride,
        padding=((top, bottom + 1), cols) if extra_row else cfg.padding,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=cfg.groups,
    )
    y = y[:, :-1] if extra_row else y
    return y if b is None else y + b


def conv2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: str | int | Pads = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> jax.Array:
    """2-D convolution with a hand-derived VJP. Shapes as :func:`conv2d_reference`.

    Forward: the reference's convolution; where XLA:CPU would run it on YNNPACK's slower kernel
    (inputs of at least FORWARD_OFF_YNNPACK_CHANNELS channels per group, stride 1, an output at
    least as tall as the input), computed one row taller and cropped, which keeps it on XLA's own
    kernel (YNNPACK refuses an output taller than its input).
    Backward: ``dx`` = the stride-dilated ``dy`` convolved with the rotated, in/out-swapped
    kernel; ``dw`` = ``x`` correlated with ``dy`` as a convolution, or im2col patches of ``x``
    times ``dy`` (grouped inputs on the CPU); ``db = sum(dy)`` over N, H, W.
    """
    return _conv2d(x, w, b, conv_config(x, w, b, stride, padding, dilation, groups))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv2d(x, w, b, cfg):
    return manual_forward(x, w, b, cfg)


def _conv2d_fwd(x, w, b, cfg):
    y = manual_forward(x, w, b, cfg)
    return y, (x, w)  # b is not read: db needs only dy, and cfg.has_bias says whether it is owed


def _conv2d_bwd(cfg, res, dy):
    x, w = res
    dx = manual_dx(dy, w, x.shape, cfg)  # dx = conv(dilate_s(dy), rot180(w)^T)
    dw = manual_dw(x, dy, w.shape, cfg)  # dw = x correlated with dy
    db = jnp.sum(dy, axis=(0, 1, 2)) if cfg.has_bias else None  # db = sum_{n,o,p} dy
    return dx, dw, db


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def manual_forward(x, w, b, cfg):
    """The manual layer's forward: the convolution (one row taller where cfg says), or the taps (depthwise)."""
    if not cfg.taps_block:
        return convolution(x, w, b, cfg, cfg.y_extra_row)
    out_hw = output_hw(x.shape[1:3], w.shape[:2], cfg.padding, cfg.stride, cfg.dilation)
    y = depthwise.depthwise_forward(x, w, cfg.padding, cfg.stride, cfg.dilation, out_hw, cfg.taps_block)
    return y if b is None else y + b


def manual_dx(dy, w, x_shape, cfg):
    """The manual layer's dx: the taps (depthwise) or the convolution of the stride-dilated dy."""
    if cfg.taps_block:
        pads = dx_padding(x_shape, dy.shape, w.shape, cfg)
        return depthwise.depthwise_dx(dy, w, x_shape, pads, cfg.stride, cfg.dilation, cfg.taps_block)
    return conv2d_dx(dy, w, x_shape, cfg)


def manual_dw(x, dy, w_shape, cfg):
    """The manual layer's dw: the taps (depthwise), im2col (grouped, on the CPU) or one convolution."""
    if cfg.taps_block:
        return depthwise.depthwise_dw(x, dy, w_shape, cfg.padding, cfg.stride, cfg.dilation, cfg.taps_block)
    return (conv2d_dw_im2col if cfg.im2col_block else conv2d_dw_conv)(x, dy, w_shape, cfg)


# ---------------------------------------------------------------- backward terms


def window_tap(xp, i, j, out_hw, stride, dilation):
    """The cells that tap (i, j) meets in every window: xp[:, d_h i + s_h o, d_w j + s_w p, :], [N, Ho, Wo, C]."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    n, _, _, c = xp.shape
    start = (0, dh * i, dw * j, 0)
    return lax.slice(xp, start, (n, start[1] + sh * (ho - 1) + 1, start[2] + sw * (wo - 1) + 1, c), (1, sh, sw, 1))


def add_at_window_taps(contribution, hw, window, stride, dilation, padding):
    """The transpose of :func:`window_tap`, summed over the taps, with the padding cropped off.

    ``contribution(i, j)`` is an [N, Ho, Wo, C] array; it is placed at xp[d i + s o, d j + s p]
    (a pad with s - 1 zeros between rows/cols and d i rows before); the sum over all taps is cropped
    to the input's [H, W]. Rows/cols no tap reaches get 0.
    """
    ((top, bottom), (left, right)), (sh, sw), (dh, dw) = padding, stride, dilation
    hp, wp = hw[0] + top + bottom, hw[1] + left + right
    total = None
    for i in range(window[0]):
        for j in range(window[1]):
            g = contribution(i, j)
            _, ho, wo, _ = g.shape
            rows = (dh * i, hp - dh * i - sh * (ho - 1) - 1, sh - 1)  # (before, after, between)
            cols = (dw * j, wp - dw * j - sw * (wo - 1) - 1, sw - 1)
            placed = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), rows, cols, (0, 0, 0)))
            total = placed if total is None else total + placed
    return total[:, top : top + hw[0], left : left + hw[1], :]


def dx_padding(x_shape, dy_shape, w_shape, cfg) -> list[tuple[int, int]]:
    """The (before, after) padding of the stride-dilated dy in dx's correlation, per spatial axis."""
    pads = []
    for n_in, n_out, k, s, d, (lo, _) in zip(
        x_shape[1:3], dy_shape[1:3], w_shape[:2], cfg.stride, cfg.dilation, cfg.padding
    ):
        before = d * (k - 1) - lo  # dx row u reads dy rows (u + lo - d i) / s; negative crops
        after = n_in + d * (k - 1) - (s * (n_out - 1) + 1) - before  # brings the output back to n_in rows:
        pads.append((before, after))  # rows the forward never read see only padding, so get 0
    return pads


def conv2d_dx(dy, w, x_shape, cfg):
    """dx = conv(pad(dilate_s(dy)), rot180(w)^T), at stride 1 and the forward's dilation."""
    kh, kw, cin_g, cout = w.shape
    g = cfg.groups
    # rot180(w)^T: flip both spatial axes; per group, [KH, KW, Cin/G, Cout/G] -> [KH, KW, Cout/G, Cin/G],
    # the groups laid out along the new output axis (so the input-channel order comes back as in x).
    w_t = (
        w[::-1, ::-1]
        .reshape(kh, kw, cin_g, g, cout // g)
        .transpose(0, 1, 4, 3, 2)
        .reshape(kh, kw, cout // g, g * cin_g)
    )
    pads = dx_padding(x_shape, dy.shape, w.shape, cfg)
    if cfg.dx_extra_row:  # one row more than x, cropped below: XLA then keeps the convolution off YNNPACK
        pads[0] = (pads[0][0], pads[0][1] + 1)
    dx = lax.conv_general_dilated(
        dy,
        w_t,
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=cfg.stride,  # s - 1 zeros between the rows/cols of dy
        rhs_dilation=cfg.dilation,
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=g,
    )
    return dx[:, : x_shape[1]] if cfg.dx_extra_row else dx


def conv2d_dw_im2col(x, dy, w_shape, cfg):
    """dw[i,j,k,c] = sum_{n,o,p} xp[n, s o + d i, s p + d j, g(c) Cin/G + k] dy[n,o,p,c]: im2col, then a
    matmul per group (group g's patches, input channels g Cin/G to (g + 1) Cin/G, times group g's
    columns of dy), summed over blocks of images (zero images pad the last block: they add nothing)."""
    kh, kw, cin_g, cout = w_shape
    g, block = cfg.groups, cfg.im2col_block
    n, ho, wo, _ = dy.shape
    blocks = -(-n // block)
    extra = blocks * block - n
    x_block = (block, *x.shape[1:])
    # The blocks go to the loop as 2-D arrays: XLA lays out size-1 axes (Cin = 1, G = 1) of a
    # 4-D block array in an order the loop then copies the whole array to undo.
    x_b = jnp.pad(x, ((0, extra), (0, 0), (0, 0), (0, 0))).reshape(blocks, -1)
    dy_b = jnp.pad(dy, ((0, extra), (0, 0), (0, 0), (0, 0))).reshape(blocks, -1)

    def add_block(dw, block_args):
        xb_flat, dyb_flat = block_args
        dyb = dyb_flat.reshape(block * ho * wo, g, cout // g)
        xb = jnp.pad(xb_flat.reshape(x_block), ((0, 0), *cfg.padding, (0, 0)))  # padded per block: XLA fuses
        # the padding into each tap's slice below, where padding all of x first costs a pass over it
        # The (i, j) column block of im2col: the input cells that tap (i, j) met, one per output position.
        cols = [window_tap(xb, i, j, (ho, wo), cfg.stride, cfg.dilation) for i in range(kh) for j in range(kw)]
        patches = jnp.stack(cols, axis=3).reshape(block * ho * wo, kh, kw, g, cin_g)  # [M, KH, KW, G, Cin/G]
        return dw + jnp.einsum("mijgk,mgc->ijkgc", patches, dyb), None  # patches^T dy per group, over M

    zero = jnp.zeros((kh, kw, cin_g, g, cout // g), jnp.result_type(x, dy))
    if blocks == 1:  # the whole batch at once: no loop
        dw, _ = add_block(zero, (x_b[0], dy_b[0]))
    else:
        dw, _ = lax.scan(add_block, zero, (x_b, dy_b))
    return dw.reshape(kh, kw, cin_g, cout)


def conv2d_dw_conv(x, dy, w_shape, cfg):
    """The same dw as one convolution: x (channels as the batch, N as the features) correlated with dy
    (N as the input features), at stride d and kernel dilation s; groups split x's channels and dy's.

    With x dilated by f = ``cfg.dw_lhs_dilation`` (f - 1 zeros between its rows and cols), the padding,
    the stride and dy's dilation scale by f: tap i of output row r reads the dilated, padded x at
    f d r + f s i = f (d r + s i), which is x's padded row d r + s i, as without it.
    """
    kh, kw, _, _ = w_shape
    f = cfg.dw_lhs_dilation
    pads = []
    for n_in, n_out, k, s, d, (lo, hi) in zip(
        x.shape[1:3], dy.shape[1:3], (kh, kw), cfg.stride, cfg.dilation, cfg.padding
    ):
        unread = n_in + lo + hi - (d * (k - 1) + 1) - s * (n_out - 1)  # padded rows past the last window
        pads.append((f * lo, f * (hi - unread)))  # negative: crop them, so the output has exactly k rows
    return lax.conv_general_dilated(
        x,
        dy,
        window_strides=tuple(f * d for d in cfg.dilation),
        padding=pads,
        lhs_dilation=(f, f),
        rhs_dilation=tuple(f * s for s in cfg.stride),
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
        batch_group_count=cfg.groups,
    )
