r"""2-D convolution: NHWC activations, HWIO kernels, strides, padding, dilation and groups.

Shapes: ``x`` [N, H, W, Cin], ``w`` [KH, KW, Cin/G, Cout], ``b`` [Cout], ``y`` [N, Ho, Wo, Cout];
``G`` groups, output channel ``c`` reading the input channels of its group ``g(c)``;
``xp`` is ``x`` zero-padded by (lo, hi) per spatial axis, ``s`` the stride, ``d`` the dilation:

    forward:   y[n,o,p,c] = b[c] + sum_{i,j,k} xp[n, s o + d i, s p + d j, g(c) Cin/G + k] w[i,j,k,c]

    backward:  dx = conv(pad(dilate_s(dy)), rot180(w)^T)
                   the output gradient with s - 1 zeros between its rows/cols, padded by
                   d (K - 1) - lo before and by whatever brings it back to H after: rows/cols
                   the forward never read get 0 (the last r = (H + lo + hi - d (K - 1) - 1) mod s
                   of the padded input, less those that are padding; and, where the taps leave
                   gaps, every padded row not of the form s o + d i: for K, Ho > 1 there are gaps
                   at d = 1 exactly when s > K, at s = 1 exactly when d > Ho), convolved
                   at stride 1 and dilation d with the kernel rotated 180 degrees and its
                   in/out feature axes swapped inside each group
               dw[i,j,k,c] = sum_{n,o,p} xp[n, s o + d i, s p + d j, g(c) Cin/G + k] dy[n,o,p,c]
                   the correlation of the input with dy
               db[c] = sum_{n,o,p} dy[n,o,p,c]

Each term has exact formulations that add the same products in another order or shape; the
route (``cfg.route``, chosen by :func:`jaxbp.kernels.conv.conv_route` for the kernels XLA will
run it on) says which one the manual layer runs:

    y:   one convolution; one row taller and cropped (stride 1); or, depthwise or of one input
         channel, sums over the kernel's taps (jaxbp.layers.depthwise)
    dx:  the convolution above; one row taller than x and cropped; strided: one stride-1
         convolution per phase of the stride, interleaved (no zeros between dy's rows); or sums
         over the taps
    dw:  one convolution (channels as the batch, N as the contracted feature axis), over x as
         it is or dilated by zeros with the taps scaled to match; im2col patches^T dy, one
         matmul per group and block of images; or sums over the taps

The forward saves ``x`` and ``w``; whether a ``db`` is owed is static. The static
configuration (the arguments checked and normalised, and the route) comes last in this module.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.kernels import conv as kernels
from jaxbp.layers import _checks, depthwise

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


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

    Forward: the reference's sums. Backward: ``dx`` = the stride-dilated ``dy`` convolved with
    the rotated, in/out-swapped kernel; ``dw`` = ``x`` correlated with ``dy``; ``db = sum(dy)``
    over N, H, W. Each in the formulation :func:`jaxbp.kernels.conv.conv_route` chooses for the
    kernels XLA will run it on (the module docstring lists them; all exact).
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
    """The manual layer's forward: the convolution (one row taller where cfg says), or the taps
    (depthwise, or one input channel)."""
    if not cfg.route.forward_as_taps:
        return convolution(x, w, b, cfg, cfg.route.y_extra_row)
    out_hw = output_hw(x.shape[1:3], w.shape[:2], cfg.padding, cfg.stride, cfg.dilation)
    if cfg.route.one_channel_taps:
        return depthwise.one_channel_forward(x, w, b, cfg.padding, cfg.stride, cfg.dilation, out_hw)
    return depthwise.depthwise_forward(x, w, b, cfg.padding, cfg.stride, cfg.dilation, out_hw, cfg.route.taps_block)


def manual_dx(dy, w, x_shape, cfg):
    """The manual layer's dx: the taps (depthwise), one convolution per phase of the stride, or the
    convolution of the stride-dilated dy."""
    if cfg.route.taps_block:
        pads = dx_padding(x_shape, dy.shape, w.shape, cfg)
        return depthwise.depthwise_dx(dy, w, x_shape, pads, cfg.stride, cfg.dilation, cfg.route.taps_block)
    if cfg.route.dx_phases:
        return conv2d_dx_phases(dy, w, x_shape, cfg)
    return conv2d_dx(dy, w, x_shape, cfg)


def manual_dw(x, dy, w_shape, cfg):
    """The manual layer's dw: the taps (depthwise), im2col and a matmul per group, or one convolution."""
    if cfg.route.taps_block:
        return depthwise.depthwise_dw(x, dy, w_shape, cfg.padding, cfg.stride, cfg.dilation, cfg.route.taps_block)
    return (conv2d_dw_im2col if cfg.route.im2col_block else conv2d_dw_conv)(x, dy, w_shape, cfg)


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


def rot180_transposed(w, groups: int):
    """rot180(w)^T: both spatial axes flipped and, per group, [KH, KW, Cin/G, Cout/G] -> [KH, KW, Cout/G, Cin/G],
    the groups laid out along the new output axis (so the input-channel order comes back as in x)."""
    kh, kw, cin_g, cout = w.shape
    return (
        w[::-1, ::-1]
        .reshape(kh, kw, cin_g, groups, cout // groups)
        .transpose(0, 1, 4, 3, 2)
        .reshape(kh, kw, cout // groups, groups * cin_g)
    )


def conv2d_dx(dy, w, x_shape, cfg):
    """dx = conv(pad(dilate_s(dy)), rot180(w)^T), at stride 1 and the forward's dilation."""
    pads = dx_padding(x_shape, dy.shape, w.shape, cfg)
    if cfg.route.dx_extra_row:  # one row more than x, cropped below: the same rows 0 to H - 1
        pads[0] = (pads[0][0], pads[0][1] + 1)
    dx = lax.conv_general_dilated(
        dy,
        rot180_transposed(w, cfg.groups),
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=cfg.stride,  # s - 1 zeros between the rows/cols of dy
        rhs_dilation=cfg.dilation,
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=cfg.groups,
    )
    return dx[:, : x_shape[1]] if cfg.route.dx_extra_row else dx


def conv2d_dx_phases(dy, w, x_shape, cfg):
    """The same dx (dilation 1) without the zeros between dy's rows/cols: one stride-1 convolution per
    phase (a, b) of the stride, interleaved.

    Padded row ``r = s u + a`` is read by the taps ``i = a + s m`` only, at output row ``u - m``:

        dxp[n, s u + a, s v + b] = sum_{m, q} dy[n, u - m, v - q] w[a + s m, b + s q]^T

    the correlation of dy (padded by ``Ka - 1`` before) with the phase's kernel ``w[a::s, b::s]``
    rotated 180 degrees, ``Ka = ceil((KH - a) / s)`` taps (none: the phase is 0). Each phase is
    computed on ``ceil(Hp / s)`` rows (rows no output reads get 0), the phases are interleaved into
    the padded input's grid and its padding cropped. The sums are those of :func:`conv2d_dx` less
    its products with the inserted zeros: s_h s_w times fewer multiplications.
    """
    n, ho, wo, _ = dy.shape
    (sh, sw), ((top, bottom), (left, right)) = cfg.stride, cfg.padding
    h, wd, cin = x_shape[1], x_shape[2], x_shape[3]
    rows, cols = -(-(h + top + bottom) // sh), -(-(wd + left + right) // sw)  # per phase
    phases = []
    for a in range(sh):
        for b in range(sw):
            sub = w[a::sh, b::sw]  # the taps that read rows = a, cols = b (mod s)
            ka, kb = sub.shape[:2]
            if ka == 0 or kb == 0:  # a phase no tap lands on (s > K): its rows get 0
                phases.append(jnp.zeros((n, rows, cols, cin), jnp.result_type(dy, w)))
                continue
            phases.append(
                lax.conv_general_dilated(
                    dy,
                    rot180_transposed(sub, cfg.groups),
                    window_strides=(1, 1),
                    padding=((ka - 1, rows - ho), (kb - 1, cols - wo)),  # exactly rows x cols outputs
                    dimension_numbers=_DIMENSION_NUMBERS,
                    feature_group_count=cfg.groups,
                )
            )
    # [N, rows, cols, C] per (a, b) -> dxp[n, s u + a, s v + b, c], then the padding cropped
    grid = jnp.stack(phases, axis=3).reshape(n, rows, cols, sh, sw, cin).transpose(0, 1, 3, 2, 4, 5)
    dxp = grid.reshape(n, rows * sh, cols * sw, cin)
    return dxp[:, top : top + h, left : left + wd]


def conv2d_dw_im2col(x, dy, w_shape, cfg):
    """dw[i,j,k,c] = sum_{n,o,p} xp[n, s o + d i, s p + d j, g(c) Cin/G + k] dy[n,o,p,c]: im2col, then a
    matmul per group (group g's patches, input channels g Cin/G to (g + 1) Cin/G, times group g's
    columns of dy), summed over blocks of images (zero images pad the last block: they add nothing)."""
    kh, kw, cin_g, cout = w_shape
    g, block = cfg.groups, cfg.route.im2col_block
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

    With x dilated by f = ``cfg.route.dw_lhs_dilation`` (f - 1 zeros between its rows and cols), the padding,
    the stride and dy's dilation scale by f: tap i of output row r reads the dilated, padded x at
    f d r + f s i = f (d r + s i), which is x's padded row d r + s i, as without it.
    """
    kh, kw, _, _ = w_shape
    f = cfg.route.dw_lhs_dilation
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


# ---------------------------------------------------------------- the static configuration

Pads = tuple[tuple[int, int], tuple[int, int]]


class ConvConfig(NamedTuple):
    """The static hyper-parameters, normalised, and the route (hashable: it goes through ``nondiff_argnums``)."""

    stride: tuple[int, int]
    padding: Pads
    dilation: tuple[int, int]
    groups: int
    has_bias: bool
    route: kernels.ConvRoute  # which formulation of y, dx and dw the manual layer runs


def conv_config(x, w, b, stride, padding, dilation, groups) -> ConvConfig:
    """The layer's static configuration: the arguments checked (a one-line error that names what
    is wrong) and normalised, and the route :func:`jaxbp.kernels.conv.conv_route` chooses for them."""
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
    route = kernels.conv_route(
        tuple(jnp.shape(x)), tuple(jnp.shape(w)), jnp.result_type(x), stride, pads, dilation, groups, out_hw
    )
    return ConvConfig(stride, pads, dilation, groups, b is not None, route)


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


def output_hw(in_hw, kernel_hw, pads: Pads, stride, dilation) -> list[int]:
    """The output's rows and cols: ``(n + lo + hi - (d (k - 1) + 1)) // s + 1`` per spatial axis."""
    return [
        (n + lo + hi - (d * (k - 1) + 1)) // s + 1
        for n, k, (lo, hi), s, d in zip(in_hw, kernel_hw, pads, stride, dilation)
    ]
