"""What users put in their own pytest suites: :func:`assert_vjp`.

.. code-block:: python

    from jaxbp.testing import assert_vjp

    def test_my_softplus():
        assert_vjp(softplus, softplus_reference, np.linspace(-3, 3, 7))

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

__all__ = ["assert_vjp", "inputs_like"]


def assert_vjp(manual_fn: Callable, reference_fn: Callable | None, *args: Any, **options: Any) -> Report:
    """:func:`jaxbp.verify_vjp` that raises ``AssertionError`` (the full report) unless every check passes.

    ``options`` are those of :func:`jaxbp.verify_vjp` (``argnums``, ``dtypes``, ``rtol``,
    ``explore``, ``transforms``, ``jacobian``, ...). Returns the report when it passes.
    """
    __tracebackhide__ = True  # pytest shows the assertion, not this frame
    return verify_vjp(manual_fn, reference_fn, *args, **options).raise_if_failed()


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
