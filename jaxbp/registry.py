"""Every layer, with the example inputs that every check runs over.

One :class:`LayerSpec` per public layer names its hand-derived function
(``jaxbp.manual``), its plain-JAX reference (``jaxbp.autodiff``), a spread of
:class:`Case` configurations (shapes, strides, paddings, ties and kinks) and the
float32 tolerance the layer is held to. The tests, ``jaxbp check``, the golden
files of ``jaxbp devices`` and the docs all iterate over :data:`REGISTRY`, so a
layer added here is checked everywhere. Newer families keep their cases in a module
of :mod:`jaxbp.cases` each (``jaxbp.cases.norm`` for layer and group norm, ...),
gathered here; :mod:`jaxbp.cases.kit` defines :class:`~jaxbp.cases.kit.Case`,
:class:`~jaxbp.cases.kit.LayerSpec` and the input makers.

Example inputs are made in float64 with NumPy from a seeded generator; the
checks cast floating arrays to the dtype under test and leave integer arrays
(labels) and PRNG keys alone.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxbp import autodiff, manual, models
from jaxbp.cases import (
    activation as activation_cases,
    combine as combine_cases,
    norm as norm_cases,
    upsample as upsample_cases,
)
from jaxbp.cases.kit import (
    ArgMaker,
    BadInput,
    Case,
    LayerSpec,
    args_of,
    away_from_zero,
    key,
    labels,
    normal,
    with_zeros,
)

# ------------------------------------------------------------------ activations

_ELEMENTWISE_SHAPES = {"vector": (7,), "nhwc": (2, 3, 3, 4)}


def _elementwise_cases(kink: bool = False, **kwargs) -> tuple[Case, ...]:
    cases = [Case(f"{n}", args_of(away_from_zero(*s)), kwargs) for n, s in _ELEMENTWISE_SHAPES.items()]
    if kink:
        cases.append(Case("zeros-kink", args_of(with_zeros(4, 5)), kwargs, smooth=False))
    return tuple(cases)


_ACTIVATIONS = (
    LayerSpec("relu", manual.relu, autodiff.relu, _elementwise_cases(kink=True)),
    LayerSpec(
        "leaky_relu",
        manual.leaky_relu,
        autodiff.leaky_relu,
        _elementwise_cases(kink=True) + (Case("slope-0.2", args_of(normal(3, 5)), {"negative_slope": 0.2}),),
        bad_inputs=(BadInput("array-slope", args_of(normal(3)), {"negative_slope": np.ones(3)}, "negative_slope"),),
    ),
    LayerSpec("sigmoid", manual.sigmoid, autodiff.sigmoid, _elementwise_cases()),
    LayerSpec("tanh", manual.tanh, autodiff.tanh, _elementwise_cases()),
)

_SOFTMAX_CASES = (
    Case("rows", args_of(normal(4, 6))),
    Case("axis0", args_of(normal(5, 3)), {"axis": 0}),
    Case("nhwc-channels", args_of(normal(2, 3, 3, 4))),
    Case("large-logits", lambda rng: (100.0 + rng.standard_normal((3, 5)),)),  # naive exp overflows float32
)
_SOFTMAX_BAD = (
    BadInput("axis-out-of-range", args_of(normal(3, 4)), {"axis": 2}, "axis 2 is out of range"),
    BadInput("scalar", lambda rng: (np.float64(1.0),), {}, "rank >= 1"),
)
_SOFTMAX = (
    LayerSpec("softmax", manual.softmax, autodiff.softmax, _SOFTMAX_CASES, _SOFTMAX_BAD),
    LayerSpec("log_softmax", manual.log_softmax, autodiff.log_softmax, _SOFTMAX_CASES, _SOFTMAX_BAD),
)

# ------------------------------------------------------------ dense and flatten

_DENSE = (
    LayerSpec(
        "dense",
        manual.dense,
        autodiff.dense,
        (
            Case("with-bias", args_of(normal(5, 7), normal(7, 3), normal(3)), argnums=(0, 1, 2)),
            Case("no-bias", args_of(normal(4, 6), normal(6, 2), None), argnums=(0, 1)),
            Case("leading-axes", args_of(normal(2, 3, 4), normal(4, 5), normal(5)), argnums=(0, 1, 2)),
            Case("single-row", args_of(normal(1, 9), normal(9, 1), normal(1)), argnums=(0, 1, 2)),
        ),
        bad_inputs=(
            BadInput("feature-mismatch", args_of(normal(4, 6), normal(5, 2), normal(2)), {}, r"\(6\).*\(5\)"),
            BadInput("w-rank", args_of(normal(4, 6), normal(6), None), {}, "w must have rank 2"),
            BadInput("bias-shape", args_of(normal(4, 6), normal(6, 2), normal(3)), {}, r"b must have shape \(2,\)"),
        ),
    ),
    LayerSpec(
        "flatten",
        manual.flatten,
        autodiff.flatten,
        (Case("nhwc", args_of(normal(2, 3, 4, 5))), Case("already-flat", args_of(normal(3, 4)))),
        bad_inputs=(BadInput("scalar", lambda rng: (np.float64(1.0),), {}, "flatten: x must have rank"),),
    ),
)

# ------------------------------------------------------ convolution and pooling
# (filled in by jaxbp.layers.conv / jaxbp.layers.pool)


def _conv_case(name, x, w, bias=True, **kwargs) -> Case:
    """x, w: shapes; the bias (w's last axis) is an argument and differentiated unless ``bias=False``."""
    if bias:
        return Case(name, args_of(normal(*x), normal(*w), normal(w[3])), kwargs, argnums=(0, 1, 2))
    return Case(name, args_of(normal(*x), normal(*w), None), kwargs, argnums=(0, 1))


def _conv_bad(name, x, w, match, b=None, **kwargs) -> BadInput:
    return BadInput(name, args_of(normal(*x), normal(*w), None if b is None else normal(*b)), kwargs, match)


_CONV = (
    LayerSpec(
        "conv2d",
        manual.conv2d,
        autodiff.conv2d,
        (
            _conv_case("3x3-valid", (2, 6, 6, 3), (3, 3, 3, 4)),
            _conv_case("3x3-same-stride2-odd", (2, 7, 7, 2), (3, 3, 2, 4), stride=2, padding="SAME"),
            # a 2x2 kernel at stride 2 over 7 rows: the last row/col is never read and gets 0; no bias;
            # patch rows (2 2 1) no wider than Cout (4), so dw multiplies the patches transposed
            _conv_case("stride2-unread-row-no-bias", (1, 7, 7, 1), (2, 2, 1, 4), bias=False, stride=2),
            _conv_case(
                "rect-kernel-stride-dilation-asym-padding",
                (1, 8, 7, 2),
                (3, 2, 2, 3),
                stride=(2, 1),
                dilation=(1, 2),
                padding=((1, 0), (2, 1)),
            ),
            _conv_case("dilation2-same", (1, 9, 9, 2), (3, 3, 2, 2), dilation=2, padding="SAME"),
            _conv_case("groups2-int-padding", (2, 5, 5, 4), (3, 3, 2, 4), groups=2, padding=1),
            _conv_case("depthwise-multiplier2-stride2", (2, 7, 7, 2), (3, 3, 1, 4), groups=2, stride=2, padding=1),
            _conv_case("1x1-stride2-pad1", (1, 5, 5, 2), (1, 1, 2, 2), stride=2, padding=1),  # padding wider than K-1
        ),
        bad_inputs=(
            _conv_bad("x-rank", (5, 5, 3), (3, 3, 3, 2), r"conv2d: x must have rank 4.*\(5, 5, 3\).*\(3, 3, 3, 2\)"),
            _conv_bad("w-rank", (1, 5, 5, 3), (3, 3, 3), r"w must have rank 4.*\(1, 5, 5, 3\).*\(3, 3, 3\)"),
            _conv_bad(
                "channel-mismatch", (1, 5, 5, 3), (3, 3, 2, 4), r"3 input channels.*\(1, 5, 5, 3\).*\(3, 3, 2, 4\)"
            ),
            _conv_bad("groups-channel-mismatch", (1, 5, 5, 4), (3, 3, 4, 4), r"4 per group x 2 groups", groups=2),
            _conv_bad(
                "cout-not-divisible", (1, 5, 5, 4), (3, 3, 2, 3), r"Cout \(3\).*divisible by groups \(2\)", groups=2
            ),
            _conv_bad("groups-zero", (1, 5, 5, 4), (3, 3, 4, 4), "groups must be an int >= 1", groups=0),
            _conv_bad("kernel-too-large", (1, 4, 4, 2), (5, 3, 2, 2), r"kernel's height \(5.*padded input's \(4\)"),
            _conv_bad(
                "dilated-kernel-too-large", (1, 6, 6, 2), (3, 3, 2, 2), r"width \(7 after dilation\)", dilation=(1, 3)
            ),
            _conv_bad("stride-zero", (1, 5, 5, 2), (3, 3, 2, 2), "stride must be >= 1", stride=0),
            _conv_bad("dilation-zero", (1, 5, 5, 2), (3, 3, 2, 2), "dilation must be >= 1", dilation=(1, 0)),
            _conv_bad("padding-name", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be 'VALID', 'SAME'", padding="FULL"),
            _conv_bad(
                "padding-negative", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be >= 0", padding=((1, -1), (0, 0))
            ),
            _conv_bad("padding-shape", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be", padding=(1, 2, 3)),
            _conv_bad("bias-shape", (1, 5, 5, 2), (3, 3, 2, 4), r"b must have shape \(4,\), got \(2,\)", b=(2,)),
        ),
        rtol_float32=1e-5,
    ),
)


def _transpose_case(name, x, w, groups=1, bias=True, **kwargs) -> Case:
    """x, w ([KH, KW, Cin, Cout/groups]): shapes; the bias has Cout = w[3] * groups entries."""
    b = normal(w[3] * groups) if bias else None
    return Case(
        name, args_of(normal(*x), normal(*w), b), {"groups": groups, **kwargs}, argnums=(0, 1, 2) if bias else (0, 1)
    )


_CONV_TRANSPOSE = (
    LayerSpec(
        "conv_transpose2d",
        manual.conv_transpose2d,
        autodiff.conv_transpose2d,
        (
            _transpose_case("3x3-stride1", (2, 5, 5, 3), (3, 3, 3, 4)),
            _transpose_case("k4-s2-p1-odd", (2, 5, 7, 3), (4, 4, 3, 2), stride=2, padding=1),
            _transpose_case(
                "3x3-s2-p1-output-padding1", (1, 4, 5, 2), (3, 3, 2, 3), stride=2, padding=1, output_padding=1
            ),
            _transpose_case(
                "s3-output-padding2-no-bias", (1, 3, 4, 2), (2, 3, 2, 2), bias=False, stride=3, output_padding=2
            ),
            # output padding past the stride, allowed by the dilation: A (the convolution) has a row more than x
            _transpose_case("dilation2-output-padding1-s1", (1, 4, 4, 2), (3, 3, 2, 2), dilation=2, output_padding=1),
            _transpose_case(
                "rect-stride-dilation-padding",
                (1, 4, 3, 2),
                (3, 2, 2, 3),
                stride=(2, 3),
                padding=(2, 0),
                dilation=(1, 2),
            ),
            _transpose_case("groups2", (2, 4, 4, 4), (3, 3, 4, 3), groups=2, stride=2, padding=1),
            _transpose_case("depthwise-groups3", (1, 5, 5, 3), (3, 3, 3, 1), groups=3, stride=2),
        ),
        bad_inputs=(
            _conv_bad("x-rank", (5, 5, 3), (3, 3, 3, 2), r"conv_transpose2d: x must have rank 4.*\(5, 5, 3\)"),
            _conv_bad("w-rank", (1, 5, 5, 3), (3, 3, 3), r"w must have rank 4.*\(3, 3, 3\)"),
            _conv_bad("channel-mismatch", (1, 5, 5, 3), (3, 3, 2, 4), r"3 input channels but w expects 2"),
            _conv_bad(
                "groups-not-dividing",
                (1, 5, 5, 3),
                (3, 3, 3, 2),
                r"Cin \(3\) must be divisible by groups \(2\)",
                groups=2,
            ),
            _conv_bad("stride-zero", (1, 5, 5, 2), (3, 3, 2, 2), "stride must be >= 1", stride=0),
            _conv_bad("padding-negative", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be >= 0", padding=-1),
            _conv_bad("padding-string", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be an int or a pair", padding="SAME"),
            _conv_bad(
                "output-padding-too-large", (1, 5, 5, 2), (3, 3, 2, 2), "output_padding", stride=2, output_padding=2
            ),
            _conv_bad("output-empty", (1, 1, 1, 2), (1, 1, 2, 2), r"output would have -1x-1 cells", padding=1),
            _conv_bad(
                "bias-shape", (1, 5, 5, 2), (3, 3, 2, 2), r"b must have shape \(4,\), got \(2,\)", b=(2,), groups=2
            ),
        ),
        rtol_float32=1e-5,
    ),
)


def _relu_like(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """max(normal, 0): about half the entries exactly 0, so many windows tie at 0."""
    return lambda rng: np.maximum(rng.standard_normal(shape), 0.0)


def _pool_cases(max_pool: bool) -> tuple[Case, ...]:
    cases = (
        Case("2x2/2", args_of(normal(2, 6, 6, 3)), {"window": 2}),
        # windows that tile with a remainder: the last row (and two cols) are in no window
        Case("rect-2x3/2x3-odd-crop", args_of(normal(1, 7, 8, 2)), {"window": (2, 3)}),
        Case("2x2/2-int-padding-odd", args_of(normal(1, 7, 5, 2)), {"window": 2, "padding": 1}),
        Case("3x3/2-overlap", args_of(normal(2, 7, 7, 2)), {"window": 3, "stride": 2}),
        Case("3x3/1-same", args_of(normal(1, 5, 5, 2)), {"window": 3, "stride": 1, "padding": "SAME"}),
        Case(
            "3x3/2-explicit-padding",
            args_of(normal(1, 6, 7, 2)),
            {"window": 3, "stride": 2, "padding": ((1, 0), (0, 2))},
        ),
        # overlapping along H, gaps between windows along W
        Case("rect-3x2/1x3-overlap-gaps", args_of(normal(1, 6, 8, 2)), {"window": (3, 2), "stride": (1, 3)}),
    )
    if max_pool:  # ties: the whole gradient of a window goes to its first maximum (row-major)
        cases += (
            Case("ties-zeros-2x2/2", lambda rng: (np.zeros((2, 4, 4, 2)),), {"window": 2}, smooth=False),
            # every window ties at 0; cell (o, p) is the first cell of window (o, p) only
            Case("ties-zeros-3x3/1", lambda rng: (np.zeros((1, 5, 5, 2)),), {"window": 3, "stride": 1}, smooth=False),
            Case("ties-relu-2x2/2", args_of(_relu_like(2, 6, 6, 3)), {"window": 2}, smooth=False),
            Case("ties-relu-3x3/2-overlap", args_of(_relu_like(2, 7, 7, 2)), {"window": 3, "stride": 2}, smooth=False),
        )
    return cases


def _pool_bad(layer: str) -> tuple[BadInput, ...]:
    return (
        BadInput("x-rank", args_of(normal(6, 6, 2)), {}, f"{layer}: x must have rank 4"),
        BadInput("window-zero", args_of(normal(1, 6, 6, 2)), {"window": 0}, "window must be >= 1"),
        BadInput("stride-zero", args_of(normal(1, 6, 6, 2)), {"window": 2, "stride": (1, 0)}, "stride must be >= 1"),
        BadInput(
            "window-too-large",
            args_of(normal(1, 3, 6, 2)),
            {"window": 4},
            r"window's height \(4\).*padded input's \(3\)",
        ),
        BadInput("padding-name", args_of(normal(1, 6, 6, 2)), {"padding": "FULL"}, "padding must be 'VALID', 'SAME'"),
        BadInput("padding-negative", args_of(normal(1, 6, 6, 2)), {"padding": -1}, "padding must be >= 0"),
        BadInput(
            "padding-not-smaller-than-window",
            args_of(normal(1, 6, 6, 2)),
            {"padding": ((0, 0), (2, 0))},
            "smaller than the window",
        ),
    )


_POOL = (
    LayerSpec("max_pool2d", manual.max_pool2d, autodiff.max_pool2d, _pool_cases(True), _pool_bad("max_pool2d"), 1e-5),
    LayerSpec("avg_pool2d", manual.avg_pool2d, autodiff.avg_pool2d, _pool_cases(False), _pool_bad("avg_pool2d"), 1e-5),
)

# ------------------------------------------------- losses, batch norm, dropout


def _probabilities(n: int, classes: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Rows of a softmax of normal samples: valid soft labels, no entry exactly 0 or 1."""

    def make(rng):
        e = np.exp(rng.standard_normal((n, classes)))
        return e / e.sum(axis=1, keepdims=True)

    return make


def _large(*shape: int, offset: float) -> Callable[[np.random.Generator], np.ndarray]:
    """Normal samples shifted by +-offset at random, gaps of about 2 offset between entries.

    There softmax and sigmoid probabilities round to 0 or 1 in float32 (e^-120 underflows,
    sigmoid(30) == 1), so a naive log(softmax) or log(1 - sigmoid) would be log(0).
    """
    return lambda rng: rng.standard_normal(shape) + offset * rng.choice([-1.0, 1.0], size=shape)


def _uniform(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.random(shape)


def _norm_args(*shape: int) -> ArgMaker:
    """``(x, gamma, beta)`` for batch norm, gamma and beta drawn first.

    verify seeds its cotangents with the case's seed, so a first-drawn x would equal
    the first cotangent dy. dy = x lies in the span of (1, xhat) per channel, where the
    batch-norm dx vanishes (the layer is invariant to shifting and scaling x): dx ~ 0
    and every relative error of it would be noise.
    """

    def make(rng):
        gamma, beta = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
        return rng.standard_normal(shape), gamma, beta

    return make


_LOSS: tuple[LayerSpec, ...] = (
    LayerSpec(
        "softmax_cross_entropy",
        manual.softmax_cross_entropy,
        autodiff.softmax_cross_entropy,
        (
            Case("int-labels", args_of(normal(6, 5), labels(6, 5))),
            # Soft labels are differentiable; the vmap check scales them by 1.25 and 1.5, which the
            # general dlogits = (p sum_c y_c - y)/N handles (rows no longer sum to 1).
            Case("prob-labels", args_of(normal(5, 4), _probabilities(5, 4)), argnums=(0, 1)),
            Case("large-logits", args_of(_large(3, 5, offset=60.0), _probabilities(3, 5)), argnums=(0, 1)),
            Case("single-row", args_of(normal(1, 7), labels(1, 7))),
        ),
        bad_inputs=(
            BadInput("logits-rank", args_of(normal(6), labels(6, 3)), {}, "logits must have rank 2"),
            BadInput("batch-mismatch", args_of(normal(4, 3), labels(5, 3)), {}, r"\(4,\).*\(4, 3\).*\(5,\)"),
            BadInput(
                "int-labels-rank",
                args_of(normal(4, 3), lambda rng: np.zeros((4, 3), np.int32)),
                {},
                r"integer labels must have shape \(4,\)",
            ),
            BadInput(
                "prob-labels-shape",
                args_of(normal(4, 3), _probabilities(4, 2)),
                {},
                r"probability labels must have the logits' shape \(4, 3\).*\(4, 2\)",
            ),
            BadInput("prob-labels-rank", args_of(normal(4, 3), _uniform(4)), {}, r"probability labels.*\(4,\)"),
            BadInput("bool-labels", args_of(normal(4, 3), lambda rng: np.ones(4, bool)), {}, "dtype bool"),
            BadInput(
                "int-logits",
                args_of(lambda rng: np.ones((4, 3), np.int32), labels(4, 3)),
                {},
                "logits must be a floating-point",
            ),
            BadInput("no-classes", args_of(normal(4, 0), labels(4, 1)), {}, "at least one row and one class"),
        ),
        rtol_float32=1e-5,  # observed <= 2e-7: a few ulps of exp/log and of the mean's 1/N
    ),
    LayerSpec(
        "sigmoid_binary_cross_entropy",
        manual.sigmoid_binary_cross_entropy,
        autodiff.sigmoid_binary_cross_entropy,
        (
            Case("matrix", args_of(normal(4, 5), _uniform(4, 5)), argnums=(0, 1)),
            Case("large-logits", args_of(_large(3, 4, offset=30.0), _uniform(3, 4)), argnums=(0, 1)),
            Case(
                "nhwc-hard-targets",
                args_of(normal(2, 3, 3, 2), lambda rng: rng.integers(0, 2, (2, 3, 3, 2)).astype(float)),
                argnums=(0, 1),
            ),
        ),
        bad_inputs=(
            BadInput("shape-mismatch", args_of(normal(4, 5), _uniform(4, 4)), {}, r"\(4, 5\).*\(4, 4\)"),
            BadInput(
                "int-targets",
                args_of(normal(4), lambda rng: np.ones(4, np.int32)),
                {},
                "targets must be a floating-point",
            ),
            BadInput("empty", args_of(normal(0, 3), _uniform(0, 3)), {}, "non-empty"),
        ),
        rtol_float32=1e-5,  # observed <= 3e-7: sigmoid vs autodiff's log1p(exp(-|z|)) derivative, a few ulps
    ),
)

_NORM: tuple[LayerSpec, ...] = (
    LayerSpec(
        "batch_norm",
        manual.batch_norm,
        autodiff.batch_norm,
        (
            Case("nc", _norm_args(6, 3), argnums=(0, 1, 2)),
            Case("nhwc-eps-1e-3", _norm_args(2, 3, 3, 4), {"eps": 1e-3}, argnums=(0, 1, 2)),
            # One example still normalises over H and W (M = 6); eps far below var.
            Case("single-example-small-eps", _norm_args(1, 2, 3, 2), {"eps": 1e-9}, argnums=(0, 1, 2)),
            # Not a case: a channel constant over the batch (var = 0, xhat = 0, inv_std = eps^-1/2) is degenerate.
        ),
        # Observed float32 errors <= 3e-7 (dx's sums over M elements are rounded in another order than
        # autodiff's chain of mean/var backwards); the default holds once dy is not aligned with x (_norm_args).
        rtol_float32=1e-5,
        bad_inputs=(
            BadInput("rank-1", args_of(normal(5), normal(5), normal(5)), {}, r"rank >= 2.*\(5,\)"),
            BadInput(
                "gamma-shape",
                args_of(normal(4, 3), normal(2), normal(3)),
                {},
                r"gamma must have shape \(3,\).*\(4, 3\).*\(2,\)",
            ),
            BadInput(
                "beta-shape", args_of(normal(2, 2, 2, 3), normal(3), normal(3, 1)), {}, r"beta must have shape \(3,\)"
            ),
            BadInput(
                "eps-zero",
                args_of(normal(4, 3), normal(3), normal(3)),
                {"eps": 0.0},
                "eps must be a finite number > 0, got 0.0",
            ),
            BadInput(
                "eps-array",
                args_of(normal(4, 3), normal(3), normal(3)),
                {"eps": np.ones(3)},
                "eps must be a Python float",
            ),
            BadInput(
                "dtype-mismatch",
                lambda rng: (rng.standard_normal((4, 3)), np.ones(3, np.float32), np.zeros(3, np.float16)),
                {},
                "gamma and beta must have the same dtype",
            ),
            BadInput(
                "int-x",
                args_of(lambda rng: np.ones((4, 3), np.int32), normal(3), normal(3)),
                {},
                "x must be a floating-point",
            ),
        ),
    ),
)

_DROPOUT: tuple[LayerSpec, ...] = (
    LayerSpec(
        "dropout",
        manual.dropout,
        autodiff.dropout,
        (
            Case("rate-0", args_of(normal(2, 3, 3, 4), key(0)), {"rate": 0.0}),
            Case("rate-0.5-rbg-key", args_of(normal(2, 3, 3, 4), key(1, "rbg")), {"rate": 0.5}),
            Case("rate-0.25-raw-key", args_of(normal(2, 3, 3, 4), lambda rng: jax.random.PRNGKey(2)), {"rate": 0.25}),
        ),
        # Observed error 0: dx is the very multiply-and-select autodiff derives. The default is kept
        # rather than 0 so that a backend that fuses the scale differently is not failed on an ulp.
        rtol_float32=1e-5,
        bad_inputs=(
            BadInput(
                "rate-1", args_of(normal(3), key(0)), {"rate": 1.0}, r"dropout: rate must be in \[0, 1\), got 1.0"
            ),
            BadInput("rate-negative", args_of(normal(3), key(0)), {"rate": -0.1}, r"got -0.1"),
            BadInput(
                "rate-array",
                args_of(normal(3), key(0)),
                {"rate": np.array([0.5])},
                "rate must be a Python float",
            ),
            BadInput(
                "key-shape",
                args_of(normal(3), lambda rng: jax.random.split(jax.random.key(0))),
                {"rate": 0.5},
                r"single PRNG key.*\(2,\)",
            ),
            BadInput(
                "not-a-key",
                args_of(normal(3), normal(2)),
                {"rate": 0.5},
                "key must be a jax.random.key or a raw uint32 key",
            ),
            BadInput(
                "int-x", args_of(lambda rng: np.ones(3, np.int32), key(0)), {"rate": 0.5}, "x must be a floating-point"
            ),
        ),
    ),
)


# ------------------------------------------- global pooling, residual add and block

_GLOBAL_POOL = (
    LayerSpec(
        "global_avg_pool",
        manual.global_avg_pool,
        autodiff.global_avg_pool,
        (Case("nhwc", args_of(normal(2, 3, 4, 5))), Case("1x1-spatial", args_of(normal(3, 1, 1, 2)))),
        bad_inputs=(
            BadInput("x-rank", args_of(normal(2, 3, 4)), {}, r"global_avg_pool: x must have rank 4.*\(2, 3, 4\)"),
            BadInput("int-x", lambda rng: (np.ones((1, 2, 2, 1), np.int32),), {}, "x must be a floating-point"),
        ),
    ),
)


def _residual_block(ops):
    """``Residual(Conv(C, stride=2), Relu)`` of :mod:`jaxbp.models` on ``ops`` as a function of its
    arrays: ``x`` [N, H, W, Cin] and ``Cin != C``, so the skip is the 1x1 stride-2 ``proj`` conv."""

    def block(x, w1, b1, wp, bp):
        cout = w1.shape[-1]
        layer = models.Residual(models.Conv(cout, stride=2), models.Relu)
        params = {"conv1": {"w": w1, "b": b1}, "proj": {"w": wp, "b": bp}}
        return layer.apply(params, x, ops=ops)[0]

    return block


def _residual_block_spec() -> LayerSpec:
    from jaxbp.layers import residual

    cin, cout = 2, 3
    shapes = [(2, 5, 5, cin), (3, 3, cin, cout), (cout,), (1, 1, cin, cout), (cout,)]
    return LayerSpec(
        "residual_block",
        _residual_block(manual),
        _residual_block(autodiff),
        # The identity skip is residual_add's own case; deeper blocks (batch norm, two convs) are the
        # resnet's tests (tests/test_custom_layers.py): each conv here costs seconds of compilation.
        (Case("stride2-projection", args_of(*(normal(*s) for s in shapes)), argnums=tuple(range(5))),),
        composite=True,
        derivation=(residual.__doc__ or "").strip()
        + "\n\nHere f = conv(stride 2) -> relu and the skip is a 1x1 stride-2 conv "
        "(jaxbp.models.Residual): every VJP in it is hand-derived.",
    )


_RESIDUAL = (
    LayerSpec(
        "residual_add",
        manual.residual_add,
        autodiff.residual_add,
        (Case("nhwc", args_of(normal(2, 3, 3, 2), normal(2, 3, 3, 2)), argnums=(0, 1)),),
        bad_inputs=(
            BadInput("shape-mismatch", args_of(normal(2, 3), normal(2, 1)), {}, r"same shape.*\(2, 3\).*\(2, 1\)"),
            BadInput(
                "dtype-mismatch",
                lambda rng: (np.ones((2, 3), np.float32), np.ones((2, 3), np.float16)),
                {},
                "same shape and dtype",
            ),
        ),
    ),
    _residual_block_spec(),
)

REGISTRY: dict[str, LayerSpec] = {
    spec.name: spec
    for spec in (
        *_CONV,
        *_CONV_TRANSPOSE,
        *_POOL,
        *_GLOBAL_POOL,
        *_DENSE,
        *_ACTIVATIONS,
        *_SOFTMAX,
        *_LOSS,
        *_NORM,
        *_DROPOUT,
        *_RESIDUAL,
        *norm_cases.SPECS,
        *activation_cases.SPECS,
        *upsample_cases.SPECS,
        *combine_cases.SPECS,
    )
}


def get(name: str) -> LayerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown layer {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
