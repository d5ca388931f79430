"""Property tests for conv2d, max_pool2d and avg_pool2d, and the tie convention of max pooling.

Hypothesis draws shapes and hyper-parameters (stride, padding, dilation, groups, window),
only valid ones (the kernel or window fits the padded input), and checks in float64 that
the hand-derived VJP equals the VJP ``jax.grad`` derives from the reference, and that the
forwards are identical. Max pooling also gets inputs full of ties (zeros, small integers),
and explicit tests pin the convention: a window's whole gradient goes to its FIRST maximum
in row-major window order, as jax.grad of ``lax.reduce_window`` max does, and a cell that
wins several overlapping windows collects all their gradients.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from jax import lax

from jaxbp import autodiff, manual
from jaxbp.kernels import conv as kernels
from jaxbp.layers import conv as conv_module, depthwise

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- the comparison


def _vjps(fn, args, ct):
    """Output and VJP of ``fn`` along ``ct`` with respect to every argument that is not None."""
    diff = [i for i, a in enumerate(args) if a is not None]

    def f(*d):
        full = list(args)
        for i, v in zip(diff, d):
            full[i] = v
        return fn(*full)

    y, pullback = jax.vjp(f, *(args[i] for i in diff))
    return y, pullback(ct)


def assert_vjp_matches(manual_fn, reference_fn, args, seed=0, rtol=1e-10, forward_fn=None):
    """Manual VJP == autodiff VJP (norm-wise, float64) for a random cotangent; the manual forward
    bitwise equal to ``forward_fn`` (the plain JAX of its formulation; default: the reference)."""
    with jax.enable_x64(True):
        args = [None if a is None else jnp.asarray(a, jnp.float64) for a in args]
        y_ref = reference_fn(*args)
        ct = jnp.asarray(np.random.default_rng(seed).standard_normal(y_ref.shape))
        y_man, g_man = _vjps(manual_fn, args, ct)
        _, g_ref = _vjps(reference_fn, args, ct)
        y_formula = y_ref if forward_fn is None else forward_fn(*args)
        np.testing.assert_array_equal(np.asarray(y_man), np.asarray(y_formula), err_msg="forwards differ")
        for k, (gm, gr) in enumerate(zip(g_man, g_ref)):
            gm, gr = np.asarray(gm), np.asarray(gr)
            assert gm.shape == gr.shape, (k, gm.shape, gr.shape)
            scale = np.max(np.abs(gr), initial=0.0)
            err = np.max(np.abs(gm - gr), initial=0.0) / (scale if scale > 0 else 1.0)
            assert err <= rtol, f"gradient {k}: norm-wise relative error {err:.2e} > {rtol:.0e}"


# ---------------------------------------------------------------- strategies


def draw_pair(draw, lo, hi):
    a = draw(st.integers(lo, hi))
    return a if draw(st.booleans()) else (a, draw(st.integers(lo, hi)))


def as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def draw_padding(draw, max_pad):
    """A padding spec and, for the explicit kinds, its pairs (None for 'SAME', resolved later)."""
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "pairs"]))
    if kind == "VALID":
        return "VALID", ((0, 0), (0, 0))
    if kind == "SAME":
        return "SAME", None
    if kind == "int":
        p = draw(st.integers(0, min(max_pad)))
        return p, ((p, p), (p, p))
    pads = tuple((draw(st.integers(0, m)), draw(st.integers(0, m))) for m in max_pad)
    return pads, pads


def draw_size(draw, extent, pads, axis):
    """An input size the (dilated) window fits once padded: n + lo + hi >= extent."""
    low = 1 if pads is None else max(1, extent - sum(pads[axis]))
    return draw(st.integers(low, low + 5))


@st.composite
def conv_configs(draw, grouped=False):
    groups = draw(st.sampled_from([2, 3] if grouped else [1, 1, 2, 3]))
    cin_g = 2 if grouped or not draw(st.booleans()) else 1  # cin_g == 1 with groups > 1: depthwise
    cout = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, dilation = draw_pair(draw, 1, 3), draw_pair(draw, 1, 2)
    padding, pads = draw_padding(draw, (3, 3))
    extent = [d * (k - 1) + 1 for d, k in zip(as_pair(dilation), kernel)]
    h, w = draw_size(draw, extent[0], pads, 0), draw_size(draw, extent[1], pads, 1)
    x_shape = (draw(st.integers(1, 3)), h, w, groups * cin_g)
    w_shape = (*kernel, cin_g, cout)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return x_shape, w_shape, draw(st.booleans()), kwargs, draw(st.integers(0, 2**16))


@st.composite
def pool_configs(draw, values=("normal",)):
    window = draw_pair(draw, 1, 3)
    stride = None if draw(st.booleans()) else draw_pair(draw, 1, 3)
    k = as_pair(window)
    padding, pads = draw_padding(draw, (k[0] - 1, k[1] - 1))  # every pad smaller than the window
    h, w = draw_size(draw, k[0], pads, 0), draw_size(draw, k[1], pads, 1)
    x_shape = (draw(st.integers(1, 2)), h, w, draw(st.integers(1, 3)))
    kwargs = {"window": window, "stride": stride, "padding": padding}
    return x_shape, kwargs, draw(st.sampled_from(values)), draw(st.integers(0, 2**16))


def _values(kind, shape, seed):
    rng = np.random.default_rng(seed)
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "relu":  # about half exactly 0
        return np.maximum(rng.standard_normal(shape), 0.0)
    if kind == "small-ints":  # ties almost everywhere
        return rng.integers(0, 3, size=shape).astype(np.float64)
    return rng.standard_normal(shape)


# ---------------------------------------------------------------- properties


# How XLA_FLAGS route convolutions: to YNNPACK's kernels (XLA's default), or to XLA's own.
ON_YNNPACK = ""
OFF_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,eltwise,reduce"


@pytest.mark.long
@pytest.mark.parametrize("route", ["inflated", "im2col", "im2col-blocks-of-2", "xla-kernels"])
@settings(SETTINGS, max_examples=8)
@given(data=st.data())
def test_conv2d_vjp_matches_autodiff(route, data):
    im2col = route.startswith("im2col")  # grouped inputs, the only ones im2col takes
    x_shape, w_shape, bias, kwargs, seed = config = data.draw(conv_configs(grouped=im2col), label="config")
    rng = np.random.default_rng(seed)
    args = [
        rng.standard_normal(x_shape),
        rng.standard_normal(w_shape),
        rng.standard_normal(w_shape[3]) if bias else None,
    ]
    y_shape = jax.eval_shape(lambda *a: autodiff.conv2d(*a, **kwargs), *args).shape
    with pytest.MonkeyPatch.context() as mp:  # every dw route whatever the channel count, and both dx shapes
        # jaxbp.kernels reads XLA_FLAGS while tracing to choose the route (the compiler here keeps its own)
        mp.setenv("XLA_FLAGS", OFF_YNNPACK if route == "xla-kernels" else ON_YNNPACK)
        mp.setattr(kernels, "IM2COL_MAX_CHANNELS", 10**6 if im2col else 0)
        mp.setattr(kernels, "FORWARD_OFF_YNNPACK_CHANNELS", 0)  # the taller forward whatever the channel count
        if route == "im2col-blocks-of-2":  # the budget of two images' patches: several blocks, the last one padded
            ho, wo = y_shape[1:3]
            mp.setattr(kernels, "IM2COL_BLOCK_BYTES", 2 * ho * wo * w_shape[0] * w_shape[1] * x_shape[3] * 8)
        else:
            mp.setattr(kernels, "IM2COL_BLOCK_BYTES", 2**40)
        n = x_shape[0]  # dw's route: (im2col block, x's dilation in the convolution)
        expected_dw = {"inflated": (0, 2), "im2col": (n, 1), "im2col-blocks-of-2": (min(2, n), 1)}.get(route, (0, 1))
        stride = kwargs.get("stride", 1)
        at_stride_1 = route != "xla-kernels" and stride in (1, (1, 1))
        extra_row = at_stride_1 and x_shape[1] <= y_shape[1] and x_shape[2] <= y_shape[2]
        y_extra_row = at_stride_1 and y_shape[1] >= x_shape[1]
        one_channel = x_shape[3] == 1 and kwargs["groups"] == 1  # at most 3 outputs: the taps under either flags
        with jax.enable_x64(True):
            cfg = conv_module.conv_config(*map(jnp.asarray, args[:2]), None, **kwargs)
            r = cfg.route
            routes = (r.im2col_block, r.dw_lhs_dilation, r.dx_extra_row, r.y_extra_row, r.one_channel_taps)
            assert routes == (*expected_dw, extra_row, y_extra_row, one_channel), config

            def taps(x, w, b):  # the manual forward's formulation for one input channel
                return depthwise.one_channel_forward(x, w, b, cfg.padding, cfg.stride, cfg.dilation, y_shape[1:3])

            def one_row_taller(x, w, b):  # the manual forward's formulation where it keeps off YNNPACK
                (top, bottom), cols = cfg.padding
                y = lax.conv_general_dilated(
                    x,
                    w,
                    window_strides=(1, 1),
                    padding=((top, bottom + 1), cols),
                    rhs_dilation=cfg.dilation,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    feature_group_count=cfg.groups,
                )[:, :-1]
                return y if b is None else y + b

            forward = taps if one_channel else one_row_taller if y_extra_row else None
            if forward is not None:  # the reference's sums in another order: within their rounding bound
                x, w, b = (None if a is None else jnp.asarray(a) for a in args)
                terms = np.prod(w_shape[:3]) + 1  # and the bias
                scale = autodiff.conv2d(jnp.abs(x), jnp.abs(w), None if b is None else jnp.abs(b), **kwargs)
                bound = 2 * terms * np.finfo(np.float64).eps * scale
                assert np.all(np.abs(forward(x, w, b) - autodiff.conv2d(x, w, b, **kwargs)) <= bound)
        assert_vjp_matches(
            lambda x, w, b: manual.conv2d(x, w, b, **kwargs),
            lambda x, w, b: autodiff.conv2d(x, w, b, **kwargs),
            args,
            seed,
            forward_fn=forward,
        )


@SETTINGS
@given(config=pool_configs(values=("normal", "relu", "small-ints", "zeros")))
def test_max_pool2d_vjp_matches_autodiff(config):
    x_shape, kwargs, kind, seed = config
    assert_vjp_matches(
        lambda x: manual.max_pool2d(x, **kwargs),
        lambda x: autodiff.max_pool2d(x, **kwargs),
        [_values(kind, x_shape, seed)],
        seed,
    )


@SETTINGS
@given(config=pool_configs())
def test_avg_pool2d_vjp_matches_autodiff(config):
    x_shape, kwargs, kind, seed = config
    assert_vjp_matches(
        lambda x: manual.avg_pool2d(x, **kwargs),
        lambda x: autodiff.avg_pool2d(x, **kwargs),
        [_values(kind, x_shape, seed)],
        seed,
    )


# ---------------------------------------------------------------- ties


def first_max_routing(x, dy, window, stride, pads, *, last=False):
    """The tie convention written out with loops: each window's dy goes to its first maximum among
    the real (unpadded) cells in row-major window order (``last=True``: the last one, a wrong rule)."""
    dx = np.zeros_like(x)
    (kh, kw), (sh, sw), ((top, _), (left, _)) = window, stride, pads
    for n, o, p, c in np.ndindex(dy.shape):
        best = None
        for i in range(kh):
            for j in range(kw):
                r, q = o * sh + i - top, p * sw + j - left
                if 0 <= r < x.shape[1] and 0 <= q < x.shape[2]:
                    v = x[n, r, q, c]
                    if best is None or v > x[best] or (last and v == x[best]):
                        best = (n, r, q, c)
        dx[best] += dy[n, o, p, c]
    return dx


def _pool_grads(x, dy, **kwargs):
    """The max-pool VJP along dy, manual and autodiff, in float64."""
    with jax.enable_x64(True):
        x, dy = jnp.asarray(x, jnp.float64), jnp.asarray(dy, jnp.float64)
        return [
            np.asarray(jax.vjp(partial(fn, **kwargs), x)[1](dy)[0]) for fn in (manual.max_pool2d, autodiff.max_pool2d)
        ]


def _resolved(x_shape, window, stride, padding):
    window, stride = as_pair(window), as_pair(stride if stride is not None else window)
    return window, stride, conv_module.padding_pairs("test", padding, x_shape[1:3], window, stride)


@pytest.mark.parametrize(
    ("hw", "window", "stride"),
    [((4, 4), 2, 2), ((5, 5), 3, 1), ((7, 7), 3, 2), ((5, 7), (2, 3), (1, 2))],
    ids=["2x2/2", "3x3/1", "3x3/2", "2x3/(1,2)"],
)
def test_all_zero_input_sends_each_window_gradient_to_its_first_cell(hw, window, stride):
    x = np.zeros((1, *hw, 2))
    (kh, kw), (sh, sw), _ = _resolved(x.shape, window, stride, "VALID")
    ho, wo = (hw[0] - kh) // sh + 1, (hw[1] - kw) // sw + 1
    dy = np.arange(1.0, 1 + ho * wo * 2).reshape(1, ho, wo, 2)
    expected = np.zeros_like(x)
    for o, p in np.ndindex(ho, wo):
        expected[:, o * sh, p * sw] += dy[:, o, p]  # the top-left cell of window (o, p)
    g_man, g_ref = _pool_grads(x, dy, window=window, stride=stride)
    np.testing.assert_array_equal(g_ref, expected, err_msg="jax.grad no longer routes ties to the first maximum")
    np.testing.assert_array_equal(g_man, expected)


def test_a_cell_that_wins_overlapping_windows_collects_all_their_gradients():
    x = np.zeros((1, 5, 5, 1))
    x[0, 2, 2, 0] = 1.0  # the centre is the maximum of all nine 3x3 windows
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = 1.0  # ...and ties with two cells of window (0, 0), which come first
    dy = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    g_man, g_ref = _pool_grads(x, dy, window=3, stride=1)
    expected = np.zeros_like(x)
    expected[0, 0, 1, 0] = dy[0, 0, 0, 0] + dy[0, 0, 1, 0]  # first maximum of windows (0, 0) and (0, 1)
    expected[0, 1, 0, 0] = dy[0, 1, 0, 0]  # window (1, 0): (1, 0) comes before (2, 2)
    expected[0, 2, 2, 0] = dy.sum() - expected.sum()  # every other window
    np.testing.assert_array_equal(g_ref, expected)
    np.testing.assert_array_equal(g_man, expected)


@pytest.mark.parametrize(
    ("x_shape", "kwargs"),
    [
        ((2, 6, 6, 3), {"window": 2}),
        ((2, 7, 7, 2), {"window": 3, "stride": 2}),
        ((1, 6, 6, 2), {"window": 3, "stride": 1, "padding": "SAME"}),
        ((1, 7, 8, 2), {"window": (3, 2), "stride": (2, 1), "padding": ((1, 0), (0, 1))}),
        ((1, 7, 5, 2), {"window": 2, "padding": 1}),
    ],
    ids=["2x2/2", "3x3/2", "3x3/1-same", "3x2/(2,1)-explicit", "2x2/2-pad1"],
)
@pytest.mark.parametrize("kind", ["small-ints", "relu"])
def test_ties_follow_the_first_maximum_loop(x_shape, kwargs, kind):
    x = _values(kind, x_shape, seed=3)
    window, stride, pads = _resolved(x_shape, kwargs["window"], kwargs.get("stride"), kwargs.get("padding", "VALID"))
    with jax.enable_x64(True):
        y_shape = autodiff.max_pool2d(jnp.asarray(x), **kwargs).shape
    dy = np.random.default_rng(4).standard_normal(y_shape)
    expected = first_max_routing(x, dy, window, stride, pads)
    g_man, g_ref = _pool_grads(x, dy, **kwargs)
    np.testing.assert_allclose(g_ref, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_man, expected, rtol=1e-12, atol=1e-12)
    if kind == "small-ints":  # these inputs do tie: routing to the last maximum would give another gradient
        assert not np.allclose(first_max_routing(x, dy, window, stride, pads, last=True), expected)


# ---------------------------------------------------------------- the checks can fail


def test_the_comparison_catches_a_slightly_wrong_backward():
    """A conv whose dw is off by one part in a million fails the float64 comparison."""

    @jax.custom_vjp
    def off(x, w, b):
        return manual.conv2d(x, w, b)

    def off_fwd(x, w, b):
        return off(x, w, b), (x, w, b)

    def off_bwd(res, dy):
        dx, dw, db = jax.vjp(manual.conv2d, *res)[1](dy)
        return dx, dw * (1 + 1e-6), db

    off.defvjp(off_fwd, off_bwd)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((1, 5, 5, 2)), rng.standard_normal((3, 3, 2, 2)), rng.standard_normal(2)]
    assert_vjp_matches(manual.conv2d, autodiff.conv2d, args)
    with pytest.raises(AssertionError, match="gradient 1"):
        assert_vjp_matches(off, autodiff.conv2d, args)


def test_the_tie_loop_catches_last_maximum_routing():
    """Routing ties to the last maximum disagrees with jax.grad on an all-zero input."""
    x, dy = np.zeros((1, 4, 4, 1)), np.ones((1, 2, 2, 1))
    window, stride, pads = _resolved(x.shape, 2, None, "VALID")
    _, g_ref = _pool_grads(x, dy, window=2)
    np.testing.assert_array_equal(g_ref, first_max_routing(x, dy, window, stride, pads))
    assert not np.array_equal(g_ref, first_max_routing(x, dy, window, stride, pads, last=True))
