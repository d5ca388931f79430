"""The pieces a registry entry is made of: :class:`Case`, :class:`BadInput`, :class:`LayerSpec`
and the seeded input makers. :mod:`jaxbp.registry` and the per-family case modules of
:mod:`jaxbp.cases` build on them (and :mod:`jaxbp.registry` re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import numpy as np

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
    # A block composed of registered layers (a residual block), checked as one function; it is
    # not a name of jaxbp.manual, and its derivation is ``derivation`` rather than a module's.
    composite: bool = False
    derivation: str = ""

    @property
    def doc(self) -> str:
        """The layer's stated derivation: its module docstring (a composite's own text)."""
        import sys

        if self.derivation:
            return self.derivation
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


def key(seed: int, impl: str | None = None) -> Callable[[np.random.Generator], jax.Array]:
    """A typed PRNG key. ``impl="rbg"`` compiles in a fraction of threefry's time (the suite's budget)."""
    return lambda rng: jax.random.key(seed, impl=impl)
