"""Registry cases of the activations: ReLU, leaky ReLU, sigmoid, tanh, softmax and log-softmax,
GELU (both forms) and SiLU."""

from __future__ import annotations

import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, away_from_zero, normal, with_zeros

_ELEMENTWISE_SHAPES = {"vector": (7,), "nhwc": (2, 3, 3, 4)}


def _elementwise_cases(kink: bool = False, **kwargs) -> tuple[Case, ...]:
    cases = [Case(f"{n}", args_of(away_from_zero(*s)), kwargs) for n, s in _ELEMENTWISE_SHAPES.items()]
    if kink:
        cases.append(Case("zeros-kink", args_of(with_zeros(4, 5)), kwargs, smooth=False))
    return tuple(cases)


_PIECEWISE = (
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


def _wide(*shape: int):
    """Normal samples times 4: the tails, where Phi(x) -> 0 or 1 and x phi(x) -> 0."""
    return lambda rng: 4.0 * rng.standard_normal(shape)


def _cases(**kwargs) -> tuple[Case, ...]:
    return (
        Case("vector", args_of(normal(7)), kwargs),
        Case("nhwc-odd", args_of(normal(2, 3, 5, 3)), kwargs),
        Case("wide", args_of(_wide(5, 3)), kwargs),
    )


_SMOOTH = (
    LayerSpec(
        "gelu",
        manual.gelu,
        autodiff.gelu,
        tuple(Case(f"erf-{c.name}", c.make_args, c.kwargs) for c in _cases())
        + tuple(Case(f"tanh-{c.name}", c.make_args, c.kwargs) for c in _cases(approximate=True)),
        bad_inputs=(
            BadInput(
                "approximate-string", args_of(normal(3)), {"approximate": "tanh"}, "approximate must be a Python bool"
            ),
        ),
    ),
    LayerSpec("silu", manual.silu, autodiff.silu, _cases()),
)

SPECS = (*_PIECEWISE, *_SOFTMAX, *_SMOOTH)
