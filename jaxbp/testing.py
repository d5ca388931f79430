"""What users put in their own pytest suites: :func:`assert_vjp` and :func:`assert_vjp_shapes`.

.. code-block:: python

    from jaxbp.testing import assert_vjp, assert_vjp_shapes

    def test_my_softplus():
        assert_vjp(softplus, softplus_reference, np.linspace(-3, 3, 7))

    def test_my_bias_at_other_shapes():  # batch 1, non-square, odd sizes
        assert_vjp_shapes(add_bias, add_bias_reference, lambda shape, seed: make(shape, seed), rank=2)

The first failing line of the ``AssertionError`` names the check, the leaf and the dtype
(``softplus: FAIL grad x float64 vs autodiff 1.0e-02 > 1e-10``): pytest's short summary
says what broke. A repeat with new values at the same shapes reuses the compiled checks.

For values beyond the examples, :func:`inputs_like` is a hypothesis strategy of
arguments shaped like given ones (hypothesis is a test dependency, imported on use).

A failed assertion's message is the whole readable report (every argument, the worst
element, the transforms, the explored inputs, the derivation), not a dataclass repr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxbp.verify import Report, verify_vjp
from jaxbp.verify.numerics import is_float
from jaxbp.verify.shapes import ShapesReport, verify_shapes

__all__ = ["assert_vjp", "assert_vjp_shapes", "inputs_like", "shapes"]


def assert_vjp(manual_fn: Callable, reference_fn: Callable | None, *args: Any, **options: Any) -> Report:
    """:func:`jaxbp.verify_vjp` that raises ``AssertionError`` (the full report) unless every check passes.

    ``options`` are those of :func:`jaxbp.verify_vjp` (``argnums``, ``dtypes``, ``rtol``,
    ``explore``, ``transforms``, ``jacobian``, ...). Returns the report when it passes.
    """
    __tracebackhide__ = True  # pytest shows the assertion, not this frame
    return verify_vjp(manual_fn, reference_fn, *args, **options).raise_if_failed()


def assert_vjp_shapes(
    manual_fn: Callable, reference_fn: Callable | None, make_args: Callable[..., Any], shapes=None, **options: Any
) -> ShapesReport:
    """:func:`jaxbp.verify.verify_shapes` that raises ``AssertionError`` unless every shape passes.

    ``make_args(shape, seed)`` builds the arguments at a shape; ``shapes`` defaults to
    :func:`jaxbp.verify.shapes.default_shapes` of ``rank`` (an option, default 2).
    """
    __tracebackhide__ = True
    return verify_shapes(manual_fn, reference_fn, make_args, shapes, **options).raise_if_failed()


def shapes(rank: int, min_side: int = 1, max_side: int = 5):
    """A hypothesis strategy of shapes with ``rank`` axes, sides in ``[min_side, max_side]``: draw more
    shapes than :func:`assert_vjp_shapes`'s defaults.

    .. code-block:: python

        @hypothesis.given(shape=jaxbp.testing.shapes(2))
        @hypothesis.settings(max_examples=10, deadline=None)
        def test_bias(shape):
            assert_vjp(add_bias, add_bias_reference, *make(shape, 0), explore=False)
    """
    from hypothesis import strategies as st

    return st.tuples(*[st.integers(min_side, max_side) for _ in range(rank)])


def inputs_like(*example_args: Any, min_value: float = -10.0, max_value: float = 10.0):
    """A hypothesis strategy of argument tuples shaped like ``example_args``: every floating leaf
    redrawn as finite float64 values in ``[min_value, max_value]``, every other leaf (labels,
    keys, static numbers) kept. ``min_value > 0`` keeps positive-only domains valid.

    .. code-block:: python

        @hypothesis.given(args=inputs_like(x, labels))
        @hypothesis.settings(max_examples=5, deadline=None)
        def test_xent(args):
            assert_vjp(xent, xent_reference, *args, explore=False)
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    leaves, treedef = jax.tree.flatten(example_args)
    elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)
    parts = [
        hnp.arrays(np.float64, np.shape(leaf), elements=elements) if is_float(leaf) else st.just(leaf)
        for leaf in leaves
    ]
    return st.tuples(*parts).map(lambda drawn: jax.tree.unflatten(treedef, list(drawn)))
