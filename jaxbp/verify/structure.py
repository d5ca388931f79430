"""Which leaves of a function's arguments and outputs are differentiated, and their names.

Every argument and output is a pytree. The differentiable leaves are the floating
and complex arrays of the selected arguments; each is named by its key path
(``params['w']``, ``xs[1]``). Everything else (integer labels, PRNG keys, bools,
Python numbers, leaves of unselected arguments) passes through unchanged, and the
array ones are listed as skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.verify.compiled import Layout, OutLayout
from jaxbp.verify.numerics import is_array, is_inexact

__all__ = ["Inputs", "Outputs", "Skipped", "skip_reason"]


@dataclass(frozen=True)
class Skipped:
    """A leaf that is not differentiated, and why."""

    label: str
    reason: str


def skip_reason(leaf: Any) -> str:
    """Why an array leaf is not differentiated: its kind in words."""
    dtype = leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return "PRNG key (passed through unchanged)"
    if dtype == jnp.bool_:
        return "bool (not differentiable)"
    if dtype == jnp.uint32 and np.shape(leaf)[-1:] == (2,):
        return "uint32 of shape (..., 2): a legacy PRNG key or integers (passed through unchanged)"
    if jnp.issubdtype(dtype, jnp.integer):
        return f"{dtype} (integers are not differentiable)"
    return f"{dtype} (not differentiable)"


def _label(name: str, path: tuple) -> str:
    return name + jax.tree_util.keystr(path)


@dataclass(frozen=True)
class Leaf:
    """One differentiable leaf: its label and where it sits."""

    label: str
    arg: int
    index: int  # position among the flattened leaves of its argument
    shape: tuple[int, ...]


class Inputs:
    """The example arguments split into differentiable leaves and everything else.

    :meth:`layout` gives the hashable :class:`Layout` that rebuilds the arguments from
    their leaves inside the compiled checks.
    """

    def __init__(self, args: Sequence[Any], argnums: Sequence[int], names: Sequence[str]):
        self.argnums = tuple(argnums)
        flat = [jax.tree_util.tree_flatten_with_path(a) for a in args]
        self.leaves: list[Leaf] = []
        self.skipped: list[Skipped] = []
        for i, (pairs, _) in enumerate(flat):
            for j, (path, leaf) in enumerate(pairs):
                label = _label(names[i], path)
                if i in self.argnums and is_inexact(leaf):
                    self.leaves.append(Leaf(label, i, j, tuple(np.shape(leaf))))
                elif is_array(leaf) and not is_inexact(leaf):
                    self.skipped.append(Skipped(label, skip_reason(leaf)))
                elif is_inexact(leaf):
                    self.skipped.append(Skipped(label, "not in argnums"))

    @property
    def labels(self) -> list[str]:
        return [leaf.label for leaf in self.leaves]

    def layout(self, args: Sequence[Any]) -> Layout:
        """The hashable :class:`Layout` of ``args`` (arguments laid out like the examples)."""
        return Layout.of(args, lambda i, leaf: i in self.argnums and is_inexact(leaf), is_array)


class Outputs:
    """The output pytree's leaves: which take a cotangent, their labels and dtypes."""

    def __init__(self, shape_tree: Any):
        pairs, self.treedef = jax.tree_util.tree_flatten_with_path(shape_tree)
        self.labels = [_label("out", path) for path, _ in pairs]
        self.structs = [s for _, s in pairs]
        self.inexact = [jnp.issubdtype(s.dtype, jnp.inexact) for s in self.structs]
        self.skipped = [
            Skipped(label, f"output {skip_reason(s)}: gets a float0 cotangent")
            for label, s, ok in zip(self.labels, self.structs, self.inexact)
            if not ok
        ]

    @property
    def layout(self) -> OutLayout:
        """The hashable :class:`OutLayout` the compiled checks take."""
        leaves = tuple((tuple(s.shape), str(s.dtype), ok) for s, ok in zip(self.structs, self.inexact))
        return OutLayout(self.treedef, leaves)

    @property
    def diff_labels(self) -> list[str]:
        return [label for label, ok in zip(self.labels, self.inexact) if ok]

    def random_cotangent(self, rng: np.random.Generator) -> list[np.ndarray]:
        """float64 (or complex128) standard-normal cotangents for the inexact leaves."""
        cts = []
        for s, ok in zip(self.structs, self.inexact):
            if not ok:
                continue
            c = rng.standard_normal(s.shape)
            if jnp.issubdtype(s.dtype, jnp.complexfloating):
                c = c + 1j * rng.standard_normal(s.shape)
            cts.append(c)
        return cts
