r"""2-D transposed convolution (PyTorch ``ConvTranspose2d``): the adjoint of a convolution.

Shapes: ``x`` [N, H, W, Cin], ``w`` [KH, KW, Cin, Cout/G] (PyTorch's weight ``[Cin, Cout/G, KH, KW]``
as ``w.transpose(2, 3, 0, 1)``, no flip), ``b`` [Cout], ``y`` [N, Ho, Wo, Cout] with
``Ho = (H - 1) s - 2 lo + d (KH - 1) + op + 1`` (``s`` stride, ``lo`` the padding, the same on both
sides, ``d`` dilation, ``op`` output padding, ``G`` groups).

Let ``A`` be the convolution ``conv2d(z, w^T)`` that maps z [N, Ho, Wo, Cout] to [N, H, W, Cin] at
stride s, padding lo, dilation d, groups G, with the kernel ``w^T`` = w with its last two axes swapped
(HWIO [KH, KW, Cout/G, Cin]). The index letters are A's, as in :mod:`jaxbp.layers.conv`: x lives where
A writes (positions (o, p), channel c), y where A reads (positions (u, v), channel g(c) Cout/G + k,
g(c) the group of c). The transposed convolution is A's adjoint, ``y = A^T x``: every input cell
stamps ``x[n,o,p,c] w[i,j,c,:]`` onto the padded output yp at (s o + d i, s p + d j), overlapping
stamps adding, and y is yp less lo rows/cols before and lo - op after,

    forward:   y = A^T x + b = conv(pad(dilate_s(x)), rot180(w^T)^T) + b
                   (conv2d's input gradient with x as its dy: x with s - 1 zeros between its rows/cols,
                   padded by d (K - 1) - lo before and d (K - 1) - lo + op after, correlated at stride 1
                   and dilation d with the kernel rotated 180 degrees)
    backward:  with dyp = dy zero-padded by lo on every side,
               sum dy (y - b) = sum_{n,o,p,i,j,c,k} x[n,o,p,c] w[i,j,c,k] dyp[n, s o + d i, s p + d j, g(c) Cout/G + k]
               is linear in x and in w (<dy, A^T x> = <A dy, x>):
               dx = A dy = conv2d(dy, w^T)              (the forward convolution; rows past H cropped)
               dw[i,j,c,k] = sum_{n,o,p} dyp[n, s o + d i, s p + d j, g(c) Cout/G + k] x[n,o,p,c]
                   (conv2d's weight gradient of A at input dy and output gradient x, axes swapped back)
               db = sum_{n,u,v} dy[n,u,v,:]

``op`` (< max(s, d), as PyTorch asks) picks which of the s heights that A maps to H rows y has: it
gives back op of the rows the padding crops at the bottom/right (rows no stamp reaches, b alone, where
op > lo). With op >= s (allowed when d > s) A maps y to more than H rows and dx keeps the first H.
The manual forward, dx and dw run on conv2d's manual formulations of A's dx, forward and dw, in the
route :func:`jaxbp.kernels.conv.conv_route` chooses for A. The forward saves ``x`` and ``w``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers import _checks, conv


class TransposeConfig(NamedTuple):
    """The static hyper-parameters, normalised; ``adjoint`` is the ConvConfig of the convolution A."""

    out_shape: tuple[int, int, int, int]  # y's shape [N, Ho, Wo, Cout]
    adjoint: conv.ConvConfig
    has_bias: bool


def _pair_of_ints(name, value, low, shapes):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        _checks.fail("conv_transpose2d", f"{name} must be an int or a pair of ints, got {value!r}{shapes}")
    if min(value) < low:
        _checks.fail("conv_transpose2d", f"{name} must be >= {low}, got {value!r}{shapes}")
    return tuple(value)


def transpose_config(x, w, b, stride, padding, output_padding, dilation, groups) -> TransposeConfig:
    """Check the arguments (one-line errors that name both shapes) and build the adjoint convolution's config."""
    shapes = f" (x has shape {tuple(jnp.shape(x))}, w has shape {tuple(jnp.shape(w))})"
    for name, a in (("x", x), ("w", w)):
        if jnp.ndim(a) != 4:
            layout = "[N, H, W, Cin]" if name == "x" else "[KH, KW, Cin, Cout/groups]"
            _checks.fail("conv_transpose2d", f"{name} must have rank 4 {layout}, got rank {jnp.ndim(a)}{shapes}")
    stride, dilation = (_pair_of_ints(n, v, 1, shapes) for n, v in (("stride", stride), ("dilation", dilation)))
    padding = _pair_of_ints("padding", padding, 0, shapes)
    output_padding = _pair_of_ints("output_padding", output_padding, 0, shapes)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        _checks.fail("conv_transpose2d", f"groups must be an int >= 1, got {groups!r}{shapes}")
    n, h, wd, cin = jnp.shape(x)
    kh, kw, w_cin, cout_g = jnp.shape(w)
    if cin != w_cin:
        _checks.fail("conv_transpose2d", f"x has {cin} input channels but w expects {w_cin}{shapes}")
    if cin % groups:
        _checks.fail("conv_transpose2d", f"Cin ({cin}) must be divisible by groups ({groups}){shapes}")
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= max(s, d):
            _checks.fail(
                "conv_transpose2d",
                f"output_padding {output_padding} must be smaller than the stride or the dilation{shapes}",
            )
    out_hw = [
        (m - 1) * s - 2 * p + d * (k - 1) + op + 1
        for m, s, p, d, k, op in zip((h, wd), stride, padding, dilation, (kh, kw), output_padding)
    ]
    if min(out_hw) < 1:
        _checks.fail("conv_transpose2d", f"the output would have {out_hw[0]}x{out_hw[1]} cells{shapes}")
    cout = cout_g * groups
    if b is not None and tuple(jnp.shape(b)) != (cout,):
        _checks.fail("conv_transpose2d", f"b must have shape ({cout},), got {tuple(jnp.shape(b))}{shapes}")
    z = jax.ShapeDtypeStruct((n, *out_hw, cout), jnp.result_type(x))
    w_t = jax.ShapeDtypeStruct((kh, kw, cout_g, cin), jnp.result_type(w))
    pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    adjoint = conv.conv_config(z, w_t, None, stride, pads, dilation, groups)
    return TransposeConfig((n, *out_hw, cout), adjoint, b is not None)


def swap_io(w):
    """w [KH, KW, Cin, Cout/G] -> w^T [KH, KW, Cout/G, Cin], the kernel of the convolution A (and back)."""
    return jnp.swapaxes(w, 2, 3)


def transposed(x, w, b, cfg: TransposeConfig):
    """y = A^T x (+ b): conv2d's input gradient with x in the place of dy, on XLA's plain convolution."""
    plain = cfg.adjoint._replace(route=cfg.adjoint.route._replace(dx_extra_row=False))
    y = conv.conv2d_dx(x, swap_io(w), cfg.out_shape, plain)
    return y if b is None else y + b


def conv_transpose2d_reference(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> jax.Array:
    """``lax.conv_general_dilated`` with ``lhs_dilation`` (x dilated by the stride), plus the bias.

    Shapes: x [N, H, W, Cin], w [KH, KW, Cin, Cout/groups], b [Cout] or None; returns
    [N, Ho, Wo, Cout] with ``Ho = (H - 1) stride - 2 padding + dilation (KH - 1) + output_padding + 1``.
    """
    return transposed(x, w, b, transpose_config(x, w, b, stride, padding, output_padding, dilation, groups))


def conv_transpose2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> jax.Array:
    """Transposed convolution with a hand-derived VJP. Shapes as :func:`conv_transpose2d_reference`.

    Forward: the reference's sums (one stride-1 convolution per phase of a stride where A's route
    says: :func:`manual_transposed`). Backward: ``dx`` = conv2d(dy, w^T) (the convolution it is the adjoint
    of), ``dw`` = conv2d's weight gradient with dy as the input and x as the output gradient, swapped
    back; ``db = sum(dy)``; both on conv2d's manual formulations.
    """
    return _conv_transpose2d(x, w, b, transpose_config(x, w, b, stride, padding, output_padding, dilation, groups))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_transpose2d(x, w, b, cfg):
    return manual_transposed(x, w, b, cfg)


def _conv_transpose2d_fwd(x, w, b, cfg):
    return manual_transposed(x, w, b, cfg), (x, w)  # b is not read by the backward


def manual_transposed(x, w, b, cfg: TransposeConfig):
    """The manual layer's forward, y = A^T x (+ b): A's input gradient in A's route, so one stride-1
    convolution per phase of the stride where the route says (``conv.conv2d_dx_phases``: the sums of
    :func:`transposed` less its products with the zeros between x's rows), else :func:`transposed`."""
    if not cfg.adjoint.route.dx_phases:
        return transposed(x, w, b, cfg)
    y = conv.conv2d_dx_phases(x, swap_io(w), cfg.out_shape, cfg.adjoint)
    return y if b is None else y + b


def _conv_transpose2d_bwd(cfg, res, dy):
    x, w = res
    a = cfg.adjoint
    h, wd = x.shape[1:3]
    dx = conv.manual_forward(dy, swap_io(w), None, a)  # dx = A dy: the convolution
    rows, cols = dx.shape[1] - h, dx.shape[2] - wd  # output padding past a stride: A has rows x never had
    dx = dx[:, :h, :wd]
    x_full = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (0, rows, 0), (0, cols, 0), (0, 0, 0)))
    dw = swap_io(conv.manual_dw(dy, x_full, swap_io(w).shape, a))  # dw: A's weight gradient, input dy, output grad x
    db = jnp.sum(dy, axis=(0, 1, 2)) if cfg.has_bias else None  # db = sum_{n,o,p} dy
    return dx, dw, db


_conv_transpose2d.defvjp(_conv_transpose2d_fwd, _conv_transpose2d_bwd)
