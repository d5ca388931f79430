"""Every layer, with the example inputs that every check runs over.

One :class:`LayerSpec` per public layer names its hand-derived function
(``jaxbp.manual``), its plain-JAX reference (``jaxbp.autodiff``), a spread of
:class:`Case` configurations (shapes, strides, paddings, ties and kinks) and the
float32 tolerance the layer is held to. The tests, ``jaxbp check``, the golden
files of ``jaxbp devices`` and the docs all iterate over :data:`REGISTRY`, so a
layer added here is checked everywhere.

Example inputs are made in float64 with NumPy from a seeded generator; the
checks cast floating arrays to the dtype under test and leave integer arrays
(labels) and PRNG keys alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxbp import autodiff, manual

ArgMaker = Callable[[np.random.Generator], tuple]


@dataclass(frozen=True)
class Case:
    """One configuration of a layer.

    ``make_args(rng)`` returns the positional arguments; ``kwargs`` are the static
    hyper-parameters; ``argnums`` the differentiable positions. ``smooth`` is False
    where the inputs sit on a kink on purpose (ties in a max pool, ReLU at 0): there
    the derivative is a convention, and finite differences do not apply.
    """

    name: str
    make_args: ArgMaker
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    argnums: tuple[int, ...] = (0,)
    smooth: bool = True

    def args(self, seed: int = 0) -> tuple:
        return self.make_args(np.random.default_rng(seed))


@dataclass(frozen=True)
class BadInput:
    """An input the layer must reject at trace time with a ``ValueError`` matching ``match``."""

    name: str
    make_args: ArgMaker
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    match: str = ""


@dataclass(frozen=True)
class LayerSpec:
    name: str
    manual: Callable
    reference: Callable
    cases: tuple[Case, ...]
    bad_inputs: tuple[BadInput, ...] = ()
    rtol_float32: float = 1e-5

    @property
    def doc(self) -> str:
        """The layer's stated derivation: its module docstring."""
        import sys

        module = sys.modules.get(getattr(self.reference, "__module__", ""), None)
        return (module.__doc__ or "").strip() if module else ""


# ------------------------------------------------------------------ input makers


def normal(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape)


def args_of(*makers: Callable[[np.random.Generator], Any]) -> ArgMaker:
    """Combine per-argument makers into one ``make_args``; ``None`` stays ``None``."""
    return lambda rng: tuple(None if m is None else m(rng) for m in makers)


def away_from_zero(*shape: int, margin: float = 0.05) -> Callable[[np.random.Generator], np.ndarray]:
    """Normal samples pushed at least ``margin`` away from 0 (no kink within finite-difference reach)."""

    def make(rng):
        x = rng.standard_normal(shape)
        return np.where(x >= 0, x + margin, x - margin)

    return make


def with_zeros(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Normal samples with about a third of the entries exactly 0 (the kink of ReLU)."""

    def make(rng):
        x = rng.standard_normal(shape)
        return np.where(rng.random(shape) < 0.33, 0.0, x)

    return make


def labels(n: int, classes: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.integers(0, classes, size=(n,)).astype(np.int32)


def key(seed: int) -> Callable[[np.random.Generator], jax.Array]:
    return lambda rng: jax.random.key(seed)


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
_CONV: tuple[LayerSpec, ...] = ()
_POOL: tuple[LayerSpec, ...] = ()

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
            Case("rate-0.5", args_of(normal(2, 3, 3, 4), key(1)), {"rate": 0.5}),
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

REGISTRY: dict[str, LayerSpec] = {
    spec.name: spec for spec in (*_CONV, *_POOL, *_DENSE, *_ACTIVATIONS, *_SOFTMAX, *_LOSS, *_NORM, *_DROPOUT)
}


def get(name: str) -> LayerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown layer {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
