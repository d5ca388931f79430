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
# (filled in by jaxbp.layers.loss / norm / dropout)
_LOSS: tuple[LayerSpec, ...] = ()
_NORM: tuple[LayerSpec, ...] = ()
_DROPOUT: tuple[LayerSpec, ...] = ()

REGISTRY: dict[str, LayerSpec] = {
    spec.name: spec for spec in (*_CONV, *_POOL, *_DENSE, *_ACTIVATIONS, *_SOFTMAX, *_LOSS, *_NORM, *_DROPOUT)
}


def get(name: str) -> LayerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown layer {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
