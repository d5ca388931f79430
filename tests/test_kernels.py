"""jaxbp.kernels: every route of the convolution against the plain reference, and the choice of route.

Each route (a :class:`ConvRoute`: how the manual layer formulates y, dx and dw for the kernels
XLA will run) is forced through the layers' one call into the package, ``kernels.conv_route``,
and the manual conv2d and conv_transpose2d then checked in float64 against the reference
(``lax.conv_general_dilated``, differentiated by ``jax.vjp``): y, dx, dw and db each to 1e-12,
norm-wise, at small shapes (one group, grouped, depthwise, one input channel; stride 1 and 2). Then the choice:
which route the measured rules give for a shape, the flags and the backend. And ``layers/``
reads no process environment: no XLA flags, no backend.
"""

from __future__ import annotations

import ast
import functools
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import autodiff, manual
from jaxbp.kernels import conv as kernels, norm as norm_kernels
from jaxbp.layers import conv as conv_module, depthwise, norm

ConvRoute = kernels.ConvRoute
TOLERANCE = 1e-12  # float64: the routes add the same products as the reference, in another order

# ---------------------------------------------------------------- every route, exact

# (layer, x shape, w shape, kwargs); conv_transpose2d's routes are those of its adjoint A, a
# convolution from y's shape to x's (depthwise when w has one output channel per group), whose
# forward and dw formulations its backward runs, and A's dx its forward (by phases where the route says).
N = 3  # the batch: im2col in blocks of 2 pads the last block
SHAPES = {
    "conv-s1": ("conv2d", (N, 5, 6, 2), (3, 3, 2, 3), dict(padding="SAME")),
    "conv-s2-dilated": (
        "conv2d",
        (N, 7, 6, 2),
        (3, 2, 2, 3),
        dict(stride=2, padding=((1, 0), (2, 1)), dilation=(1, 2)),
    ),
    "conv-s3x2": ("conv2d", (N, 11, 9, 2), (4, 3, 2, 3), dict(stride=(3, 2), padding=((1, 2), (0, 1)))),
    "conv-1x1-s2": ("conv2d", (N, 6, 5, 2), (1, 1, 2, 3), dict(stride=2)),  # phases no tap reads
    "grouped-s1": ("conv2d", (N, 5, 5, 4), (3, 3, 2, 6), dict(padding="SAME", groups=2)),
    "grouped-s2": ("conv2d", (N, 6, 5, 6), (2, 3, 2, 3), dict(stride=(2, 1), groups=3)),
    "depthwise-s1": ("conv2d", (N, 5, 5, 3), (3, 3, 1, 6), dict(padding="SAME", groups=3)),
    "depthwise-s2": ("conv2d", (N, 6, 7, 3), (3, 3, 1, 3), dict(stride=2, padding=1, dilation=2, groups=3)),
    "one-channel-s1": ("conv2d", (N, 5, 6, 1), (3, 3, 1, 4), dict(padding="SAME")),
    "one-channel-s2-dilated": ("conv2d", (N, 7, 6, 1), (3, 2, 1, 3), dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    "transpose-s1-grouped": ("conv_transpose2d", (N, 4, 5, 4), (3, 3, 4, 2), dict(padding=1, groups=2)),
    "transpose-s2": ("conv_transpose2d", (N, 4, 4, 2), (3, 3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    "transpose-depthwise-s1": ("conv_transpose2d", (N, 5, 4, 3), (3, 3, 3, 1), dict(padding=1, groups=3)),
    "transpose-to-one-channel-s2": ("conv_transpose2d", (N, 3, 4, 2), (4, 4, 2, 1), dict(stride=2, padding=1)),
}

# name: (the route, whether it applies to a shape: (stride of the convolution, its kind, its dilation))
ROUTES = {
    "plain": (ConvRoute(), lambda s, kind, d: True),
    "dw-over-x-dilated": (ConvRoute(dw_lhs_dilation=kernels.DW_LHS_DILATION), lambda s, kind, d: True),
    "dw-im2col": (ConvRoute(im2col_block=N), lambda s, kind, d: True),
    "dw-im2col-blocks-of-2": (ConvRoute(im2col_block=2), lambda s, kind, d: True),
    "dx-one-row-taller": (ConvRoute(dx_extra_row=True), lambda s, kind, d: True),
    "y-one-row-taller": (ConvRoute(y_extra_row=True), lambda s, kind, d: s[0] == 1),  # one more row at stride 1
    "off-ynnpack": (  # the three together, as on YNNPACK at stride 1
        ConvRoute(dw_lhs_dilation=kernels.DW_LHS_DILATION, dx_extra_row=True, y_extra_row=True),
        lambda s, kind, d: s[0] == 1,
    ),
    "taps": (ConvRoute(taps_block=N), lambda s, kind, d: kind == "depthwise"),
    "taps-blocks-of-1": (ConvRoute(taps_block=1), lambda s, kind, d: kind == "depthwise"),
    "one-channel-taps": (ConvRoute(one_channel_taps=True), lambda s, kind, d: kind == "one-channel"),
    "dx-phases": (ConvRoute(dx_phases=True), lambda s, kind, d: s != (1, 1) and d == (1, 1)),
    "dx-phases-dw-over-x-dilated": (  # with dw's formulation for YNNPACK, as under XLA's defaults
        ConvRoute(dx_phases=True, dw_lhs_dilation=kernels.DW_LHS_DILATION),
        lambda s, kind, d: s != (1, 1) and d == (1, 1),
    ),
    "one-channel-taps-off-ynnpack": (  # the forward's taps, the backward's convolutions kept off YNNPACK
        ConvRoute(one_channel_taps=True, dw_lhs_dilation=kernels.DW_LHS_DILATION, dx_extra_row=True),
        lambda s, kind, d: kind == "one-channel",
    ),
}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _adjoint(layer, x_shape, w_shape, kwargs):
    """The stride, the kind and the dilation of the convolution the route is for (conv2d's own, or the
    transpose's A): kind "depthwise" (grouped, one input channel per group), "one-channel" (one input
    channel) or "other"."""
    stride, dilation = _pair(kwargs.get("stride", 1)), _pair(kwargs.get("dilation", 1))
    groups = kwargs.get("groups", 1)
    per_group = w_shape[2] if layer == "conv2d" else w_shape[3]  # A's kernel is w^T [KH, KW, Cout/G, Cin]
    if per_group == 1 and groups > 1:
        return stride, "depthwise", dilation
    return stride, "one-channel" if per_group == 1 else "other", dilation


CASES = [
    pytest.param(route, shape, id=f"{route}-{shape}")
    for shape, (layer, x_shape, w_shape, kwargs) in SHAPES.items()
    for route, (_, applies) in ROUTES.items()
    if applies(*_adjoint(layer, x_shape, w_shape, kwargs))
]


def vjp_terms(fn, args, ct):
    """(y, dx, dw, db) of ``fn`` along the cotangent ``ct``, as NumPy arrays: one compiled program
    (traced afresh each call, so a patched route or formulation is what runs), not op by op."""

    def terms(args, ct):
        y, pullback = jax.vjp(fn, *args)
        return (y, *pullback(ct))

    return [np.asarray(t) for t in jax.jit(terms)(list(args), ct)]


def layer_fn(namespace, shape):
    layer, _, _, kwargs = SHAPES[shape]
    return lambda x, w, b: getattr(namespace, layer)(x, w, b, **kwargs)


@functools.cache
def problem(shape: str, seed: int = 0):
    """Random x, w, b and cotangent for ``shape``, and the reference's (y, dx, dw, db) there (once per shape)."""
    layer, x_shape, w_shape, kwargs = SHAPES[shape]
    rng = np.random.default_rng(seed)
    cout = w_shape[3] if layer == "conv2d" else w_shape[3] * kwargs.get("groups", 1)
    args = [rng.standard_normal(s) for s in (x_shape, w_shape, (cout,))]
    with jax.enable_x64(True):
        reference = layer_fn(autodiff, shape)
        ct = rng.standard_normal(jax.eval_shape(reference, *map(jnp.asarray, args)).shape)
        return args, ct, vjp_terms(reference, [jnp.asarray(a) for a in args], jnp.asarray(ct))


def route_errors(route: ConvRoute, shape: str) -> dict[str, float]:
    """Norm-wise relative error of the manual layer's y, dx, dw, db in ``route`` against the reference's, float64."""
    args, ct, want = problem(shape)
    with pytest.MonkeyPatch.context() as mp, jax.enable_x64(True):
        mp.setattr(kernels, "conv_route", lambda *a: route)  # the layers' one call into jaxbp.kernels
        got = vjp_terms(layer_fn(manual, shape), [jnp.asarray(a) for a in args], jnp.asarray(ct))
    errors = {}
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        assert g.shape == r.shape and g.dtype == np.float64, (name, g.shape, r.shape, g.dtype)
        errors[name] = float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300))
    return errors


@pytest.mark.parametrize(("route", "shape"), CASES)
def test_every_route_computes_the_reference_gradients(route, shape):
    errors = route_errors(ROUTES[route][0], shape)
    assert max(errors.values()) <= TOLERANCE, errors


def test_every_field_of_the_route_is_tested_away_from_its_default():
    plain = ConvRoute()
    tested = {f for route, _ in ROUTES.values() for f in ConvRoute._fields if getattr(route, f) != getattr(plain, f)}
    assert tested == set(ConvRoute._fields), "a new field of ConvRoute needs a route in ROUTES"
    layers, kinds = {SHAPES[s][0] for s in SHAPES}, {_adjoint(*SHAPES[s])[1] for s in SHAPES}
    assert layers == {"conv2d", "conv_transpose2d"} and kinds == {"depthwise", "one-channel", "other"}


def test_a_wrong_formulation_fails_the_route_check(monkeypatch):
    """dw by im2col off by one part in a billion: the route's comparison catches it (1e-12)."""
    right = conv_module.conv2d_dw_im2col
    monkeypatch.setattr(conv_module, "conv2d_dw_im2col", lambda *a: right(*a) * (1 + 1e-9))
    errors = route_errors(ConvRoute(im2col_block=2), "grouped-s1")
    assert errors["dw"] > TOLERANCE and max(errors["y"], errors["dx"], errors["db"]) <= TOLERANCE, errors


def test_a_missing_tap_fails_the_route_check(monkeypatch):
    """The one-channel forward without its last tap (a loop one short): y is wrong, the rest is not."""
    monkeypatch.setattr(depthwise, "one_channel_forward", _one_channel_forward_without_last_tap)
    errors = route_errors(ConvRoute(one_channel_taps=True), "one-channel-s1")
    assert errors["y"] > TOLERANCE and max(errors["dx"], errors["dw"], errors["db"]) <= TOLERANCE, errors


def test_a_phase_whose_kernel_is_not_rotated_fails_the_route_check(monkeypatch):
    """dx's phases each correlating dy with its taps unrotated: dx is wrong, the rest is not."""

    right = conv_module.rot180_transposed

    def unrotated(w, groups):
        return right(w[::-1, ::-1], groups)  # flipped twice: not at all

    monkeypatch.setattr(conv_module, "rot180_transposed", unrotated)
    errors = route_errors(ConvRoute(dx_phases=True), "conv-s3x2")
    assert errors["dx"] > TOLERANCE and max(errors["y"], errors["dw"], errors["db"]) <= TOLERANCE, errors


@pytest.mark.parametrize(
    ("route", "x_shape", "w_shape", "groups"),
    [
        (ConvRoute(taps_block=2), (4, 7, 7, 3), (3, 3, 1, 6), 3),
        (ConvRoute(one_channel_taps=True), (4, 9, 9, 1), (3, 3, 1, 8), 1),
    ],
    ids=["depthwise-taps", "one-channel-taps"],
)
def test_the_taps_round_bfloat16_once_as_float32_sums(monkeypatch, route, x_shape, w_shape, groups):
    """bfloat16 inputs: the taps sum in float32 and round once, within one rounding of the exact sums
    of the rounded inputs (plus float32's own error, a 2^-20 part of the sum of the terms' sizes).
    Summed in bfloat16, once per tap, they fail. (The one-channel route's dx and dw are XLA's.)"""
    monkeypatch.setattr(kernels, "conv_route", lambda *a: route)
    rng = np.random.default_rng(2)
    shapes = (x_shape, w_shape, (w_shape[3],), (*x_shape[:3], w_shape[3]))
    x, w, b, ct = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in shapes)

    def conv(ops, x, w, b):
        return ops.conv2d(x, w, b, padding=1, groups=groups)

    got = vjp_terms(partial(conv, manual), (x, w, b), ct)[:3]
    assert all(t.dtype == jnp.bfloat16 for t in got)
    with jax.enable_x64(True):
        x64, w64, b64, ct64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (x, w, b, ct))
        exact = vjp_terms(partial(conv, autodiff), (x64, w64, b64), ct64)[:3]
        sizes = vjp_terms(partial(conv, autodiff), (abs(x64), abs(w64), abs(b64)), abs(ct64))[:3]
    checked = ("y", "dx", "dw") if route.taps_block else ("y",)
    for name, g, e, m in zip(("y", "dx", "dw"), got, exact, sizes):
        if name in checked:
            bound = 2.0**-8 * np.abs(e) + 2.0**-20 * m  # the unit roundoff of 8 significant bits
            assert np.all(np.abs(np.asarray(g, np.float64) - e) <= bound), name


def _one_channel_forward_without_last_tap(x, w, b, padding, stride, dilation, out_hw):
    kh, kw = w.shape[:2]
    w = w.at[kh - 1, kw - 1].set(0)  # as if the sum stopped one tap short
    return RIGHT_ONE_CHANNEL_FORWARD(x, w, b, padding, stride, dilation, out_hw)


RIGHT_ONE_CHANNEL_FORWARD = depthwise.one_channel_forward


# ---------------------------------------------------------------- the choice

# How XLA_FLAGS route convolutions: to YNNPACK's kernels (XLA's default), or to XLA's own.
ON_YNNPACK = ""
OFF_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,eltwise,reduce"


def chosen(x_shape, w_shape, groups, stride=1, padding="SAME") -> ConvRoute:
    """The route conv2d takes for these shapes (the backend and XLA_FLAGS as they are)."""
    return conv_module.conv_config(jnp.zeros(x_shape), jnp.zeros(w_shape), None, stride, padding, 1, groups).route


@pytest.mark.parametrize(
    ("flags", "groups", "cin_g", "im2col", "dw_lhs_dilation"),
    [
        (ON_YNNPACK, 1, 32, False, 2),  # YNNPACK's dw convolution is the slow one: x dilated keeps it off
        (OFF_YNNPACK, 1, 32, False, 1),
        (ON_YNNPACK, 2, 16, True, 1),  # batch-grouped convolutions are slow on either kernel
        (OFF_YNNPACK, 2, 16, True, 1),
        (ON_YNNPACK, 8, 1, False, 2),  # depthwise below DEPTHWISE_TAPS_CHANNELS: the convolution is faster
        (OFF_YNNPACK, 8, 1, False, 1),  # (from 16 channels: the taps, below)
        (ON_YNNPACK, 2, 64, False, 2),  # wider groups: not measured, the convolution
    ],
)
def test_the_weight_gradient_takes_the_measured_route(monkeypatch, flags, groups, cin_g, im2col, dw_lhs_dilation):
    monkeypatch.setenv("XLA_FLAGS", flags)  # read while tracing
    route = chosen((4, 14, 14, groups * cin_g), (3, 3, cin_g, 64), groups)
    assert (route.im2col_block > 0, route.dw_lhs_dilation) == (im2col, dw_lhs_dilation)


@pytest.mark.parametrize(
    ("flags", "cin", "stride", "dx_extra_row", "y_extra_row"),
    [
        (ON_YNNPACK, 32, 1, True, True),  # the cnn's conv2: dx and the forward one row taller
        (ON_YNNPACK, 8, 1, True, False),  # narrow inputs: the forward is faster on YNNPACK
        (ON_YNNPACK, 32, 2, False, False),  # dx's dy is dilated by the stride: YNNPACK refuses it anyway
        (OFF_YNNPACK, 32, 1, False, False),  # XLA's kernels already
    ],
)
def test_dx_and_the_forward_take_the_measured_route(monkeypatch, flags, cin, stride, dx_extra_row, y_extra_row):
    monkeypatch.setenv("XLA_FLAGS", flags)
    route = chosen((4, 14, 14, cin), (3, 3, cin, 64), 1, stride)
    assert (route.dx_extra_row, route.y_extra_row) == (dx_extra_row, y_extra_row)


@pytest.mark.parametrize(
    ("cin", "groups", "cout", "taps"),
    [
        (128, 128, 128, True),  # depthwise, the shape
        (16, 16, 48, True),  # depthwise with a channel multiplier of 3
        (8, 8, 8, False),  # too few channels: not measured, the convolutions
        (32, 16, 32, False),  # grouped, two channels per group: im2col
        (1, 1, 32, False),  # one input channel but not grouped (the cnn's conv1): its own taps, below
    ],
)
def test_depthwise_convolutions_take_the_taps_route_on_the_cpu(cin, groups, cout, taps):
    route = chosen((4, 14, 14, cin), (7, 7, cin // groups, cout), groups)
    assert (route.taps_block > 0) == taps
    if taps:  # the taps run no convolution: no formulation for YNNPACK's kernels
        assert (route.dw_lhs_dilation, route.dx_extra_row, route.y_extra_row) == (1, False, False)


@pytest.mark.parametrize(
    ("flags", "kernel", "stride", "dilation", "groups", "phases"),
    [
        (OFF_YNNPACK, 3, 2, 1, 1, True),  # resnet's stride-2 convolutions, on XLA's kernels
        (OFF_YNNPACK, 1, 2, 1, 1, True),  # its 1x1 projections
        (OFF_YNNPACK, 3, 1, 1, 1, False),  # stride 1: no zeros to skip
        (OFF_YNNPACK, 3, 2, 2, 1, False),  # dilated: not this formulation
        (OFF_YNNPACK, 3, 2, 1, 2, False),  # grouped: not measured
        (ON_YNNPACK, 3, 2, 1, 1, True),  # on YNNPACK: kernels larger than the stride
        (ON_YNNPACK, 2, 2, 1, 1, False),  # one tap a phase: YNNPACK runs those slower
        (ON_YNNPACK, 1, 2, 1, 1, False),
    ],
)
def test_strided_dx_takes_its_phases_where_measured_faster(
    monkeypatch, flags, kernel, stride, dilation, groups, phases
):
    monkeypatch.setenv("XLA_FLAGS", flags)
    x, w = jnp.zeros((4, 14, 14, 32)), jnp.zeros((kernel, kernel, 32 // groups, 64))
    assert conv_module.conv_config(x, w, None, stride, "SAME", dilation, groups).route.dx_phases is phases
    one_channel = conv_module.conv_config(x[..., :1], w[:, :, :1], None, stride, "SAME", dilation, 1).route
    assert not one_channel.dx_phases  # a dx of one channel (a transposed convolution's forward to one): slower
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not conv_module.conv_config(x, w, None, stride, "SAME", dilation, groups).route.dx_phases


@pytest.mark.parametrize(
    ("flags", "cin", "cout", "stride", "taps"),
    [
        (ON_YNNPACK, 1, 32, 1, True),  # on XLA's loop fusions: the taps (the cnn's conv1)
        (ON_YNNPACK, 1, 8, 2, True),
        ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce", 1, 8, 1, True),  # no eltwise: the same
        (OFF_YNNPACK, 1, 8, 1, True),  # on YNNPACK's element-wise fusions: the taps for few outputs (resnet's conv1)
        (OFF_YNNPACK, 1, kernels.ONE_CHANNEL_TAPS_MAX_OUT_ON_YNNPACK + 1, 1, False),  # more: the convolution
        (OFF_YNNPACK, 1, 32, 1, False),
        (ON_YNNPACK, 2, 32, 1, False),  # two input channels: the convolution
    ],
)
def test_one_input_channel_takes_the_measured_forward(monkeypatch, flags, cin, cout, stride, taps):
    monkeypatch.setenv("XLA_FLAGS", flags)
    route = chosen((4, 14, 14, cin), (3, 3, cin, cout), 1, stride)
    assert route.one_channel_taps is taps
    assert route.taps_block == 0 and not route.y_extra_row  # the backward keeps its convolutions' routes


@pytest.mark.parametrize("flags", [ON_YNNPACK, OFF_YNNPACK])
@pytest.mark.parametrize(("cin", "groups"), [(32, 1), (32, 2), (128, 128), (1, 1)])
def test_other_backends_take_the_plain_route(monkeypatch, flags, cin, groups):
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chosen((4, 14, 14, cin), (3, 3, cin // groups, 128), groups) == ConvRoute()


@pytest.mark.parametrize(
    ("n", "per_image", "budget", "block"),
    [
        (128, 226 * 1024, 2**20, 4),
        (128, 28 * 1024, 2**20, 32),
        (5, 100, 200, 2),
        (3, 10**9, 2**20, 1),
        (2, 1, 2**20, 2),
    ],
)
def test_im2col_blocks_fit_the_budget_and_spread_evenly(monkeypatch, n, per_image, budget, block):
    monkeypatch.setattr(kernels, "IM2COL_BLOCK_BYTES", budget)
    assert kernels.im2col_images_per_block(n, (1, 1), per_image, 1) == block


@pytest.mark.parametrize(
    ("n", "per_image", "block"), [(64, 204800, 2), (64, 10**9, 1), (7, 1000, 7), (6, 2**18, 2), (5, 2**17, 1)]
)
def test_taps_blocks_divide_the_batch_within_the_budget(n, per_image, block):
    assert kernels.taps_images_per_block(n, per_image) == block


# ---------------------------------------------------------------- batch norm's view of few channels

BN_SHAPES = [(3, 4, 4, 8), (32, 4), (2, 8, 4, 2)]  # C = 8, 4, 2; N ... C a multiple of the 64 lanes


def batch_norm_errors(monkeypatch, shape, lanes=norm_kernels.BATCH_NORM_LANES) -> dict[str, float]:
    """Norm-wise relative error of the manual batch norm's y, dx, dgamma, dbeta and of batch_norm_stats
    read through the view of ``lanes``, against the reference's, float64."""
    monkeypatch.setattr(norm_kernels, "batch_norm_lanes", lambda x_shape: lanes)
    rng = np.random.default_rng(1)
    x, ct = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])

    def terms(ops, x, g, b, ct):  # y, dx, dgamma, dbeta (and the statistics): one program
        y, pullback = jax.vjp(lambda x, g, b: ops.batch_norm(x, g, b), x, g, b)
        return (y, *pullback(ct), *(norm.batch_norm_stats(x) if ops is manual else ()))

    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (x, gamma, beta, ct)]
        got = [np.asarray(t) for t in jax.jit(partial(terms, manual))(*args)]
        want = [np.asarray(t) for t in jax.jit(partial(terms, autodiff))(*args)]
    axes = tuple(range(len(shape) - 1))
    want += [x.mean(axis=axes), x.var(axis=axes)]
    names = ("y", "dx", "dgamma", "dbeta", "mean", "var")
    return {n: float(np.linalg.norm(g - w) / np.linalg.norm(w)) for n, g, w in zip(names, got, want)}


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_through_the_view_computes_the_reference(monkeypatch, shape):
    errors = batch_norm_errors(monkeypatch, shape)
    assert max(errors.values()) <= TOLERANCE, errors


def test_a_view_summing_the_wrong_copies_fails_the_batch_norm_check(monkeypatch):
    """Each row holds lanes / C positions of C channels: summing it as C groups of lanes / C mixes channels."""

    def wrong(v, c, lanes):
        return jnp.sum(jnp.sum(v, axis=0).reshape(c, lanes // c), axis=1) if lanes else right(v, c, lanes)

    right = norm.channel_sum
    monkeypatch.setattr(norm, "channel_sum", wrong)
    errors = batch_norm_errors(monkeypatch, (3, 4, 4, 8))
    assert errors["dgamma"] > 1e-3 and errors["dbeta"] > 1e-3 and errors["y"] <= TOLERANCE, errors


@pytest.mark.parametrize(
    ("flags", "shape", "lanes"),
    [
        (OFF_YNNPACK, (128, 28, 28, 8), 64),  # YNNPACK's element-wise fusions, 8 channels (resnet's bn1)
        (OFF_YNNPACK, (32, 4), 64),
        (OFF_YNNPACK, (128, 28, 28, 16), 0),  # 16 channels: the view is no faster
        (OFF_YNNPACK, (128, 28, 28, 3), 0),  # 3 does not divide the row
        (OFF_YNNPACK, (3, 5, 8), 0),  # 120 values: not whole rows
        (ON_YNNPACK, (128, 28, 28, 8), 0),  # XLA's loop fusions: the channels as they are
    ],
)
def test_batch_norm_takes_the_measured_view(monkeypatch, flags, shape, lanes):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert norm_kernels.batch_norm_lanes(shape) == lanes
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert norm_kernels.batch_norm_lanes(shape) == 0  # other backends: not measured, the channels as they are


# ---------------------------------------------------------------- layers/ reads no environment

LAYERS = Path(conv_module.__file__).parent
MODULES = ("os", "jaxbp.xla_flags")  # the process environment, and jaxbp's reading of XLA_FLAGS
NAMES = ("default_backend", "environ", "getenv")  # jax.default_backend(), os.environ, os.getenv


def environment_reads(source: str) -> list[str]:
    """What a module's source reads of the process environment: imports of MODULES, uses of NAMES."""

    def of_environment(module: str) -> bool:
        return any(module == m or module.startswith(f"{m}.") for m in MODULES)

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if of_environment(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [m for m in (module, *(f"{module}.{a.name}" for a in node.names)) if of_environment(m)]
            found += [a.name for a in node.names if a.name in NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in NAMES:
            found.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in NAMES:
            found.append(node.id)
    return found


def test_no_layer_module_reads_the_xla_flags_or_the_backend():
    modules = sorted(LAYERS.glob("*.py"))
    assert len(modules) > 10 and (LAYERS / "conv.py") in modules
    reads = {p.name: environment_reads(p.read_text(encoding="utf-8")) for p in modules}
    assert {name: r for name, r in reads.items() if r} == {}, "routing by the environment belongs in jaxbp/kernels"


def test_the_environment_check_sees_each_way_of_reading_it():
    for source in (
        "from jaxbp import xla_flags",
        "import jaxbp.xla_flags",
        "from jaxbp.xla_flags import ynnpack_convolutions",
        "import jax\njax.default_backend()",
        "from jax import default_backend",
        "import os",
        "from os import environ",
    ):
        assert environment_reads(source), source
    assert environment_reads((Path(kernels.__file__)).read_text(encoding="utf-8"))  # where they belong
    assert not environment_reads("from jaxbp.kernels import conv as kernels\nimport jax.numpy as jnp")


def test_a_route_forwards_as_taps_exactly_when_depthwise_taps_or_one_channel_taps():
    assert not kernels.ConvRoute().forward_as_taps
    assert not kernels.ConvRoute(im2col_block=4, y_extra_row=True, dx_extra_row=True).forward_as_taps
    assert kernels.ConvRoute(taps_block=2).forward_as_taps
    assert kernels.ConvRoute(one_channel_taps=True).forward_as_taps
