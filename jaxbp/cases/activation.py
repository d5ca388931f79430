"""Registry cases of GELU (both forms) and SiLU (the older activations are in :mod:`jaxbp.registry`)."""

from __future__ import annotations

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal


def _wide(*shape: int):
    """Normal samples times 4: the tails, where Phi(x) -> 0 or 1 and x phi(x) -> 0."""
    return lambda rng: 4.0 * rng.standard_normal(shape)


def _cases(**kwargs) -> tuple[Case, ...]:
    return (
        Case("vector", args_of(normal(7)), kwargs),
        Case("nhwc-odd", args_of(normal(2, 3, 5, 3)), kwargs),
        Case("wide", args_of(_wide(5, 3)), kwargs),
    )


SPECS = (
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
