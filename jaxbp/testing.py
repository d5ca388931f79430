"""What users put in their own pytest suites: :func:`assert_vjp`.

.. code-block:: python

    from jaxbp.testing import assert_vjp

    def test_my_softplus():
        assert_vjp(softplus, softplus_reference, np.linspace(-3, 3, 7))

A failed assertion's message is the whole readable report (every argument, the worst
element, the transforms, the explored inputs, the derivation), not a dataclass repr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxbp.verify import Report, verify_vjp

__all__ = ["assert_vjp"]


def assert_vjp(manual_fn: Callable, reference_fn: Callable | None, *args: Any, **options: Any) -> Report:
    """:func:`jaxbp.verify_vjp` that raises ``AssertionError`` (the full report) unless every check passes.

    ``options`` are those of :func:`jaxbp.verify_vjp` (``argnums``, ``dtypes``, ``rtol``,
    ``explore``, ``transforms``, ``jacobian``, ...). Returns the report when it passes.
    """
    __tracebackhide__ = True  # pytest shows the assertion, not this frame
    return verify_vjp(manual_fn, reference_fn, *args, **options).raise_if_failed()
