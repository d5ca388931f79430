"""jaxbp: convolutional networks with hand-derived backward passes in JAX.

``jaxbp.manual`` holds the layers with hand-derived VJPs, ``jaxbp.autodiff`` the
plain-JAX twins; :func:`~jaxbp.verify.api.verify_vjp` checks any pair against each other.

``import jaxbp`` imports nothing else: the names below, and every module of the package
(``jaxbp.testing.assert_vjp``, ``jaxbp.models``), are imported on first use (PEP 562),
so that ``jaxbp --help`` and modules that need no JAX do not pay for importing it.
"""

from __future__ import annotations

from jaxbp.lazy import lazy_exports

__version__ = "0.1.0"

_exports = lazy_exports(
    __name__,
    globals(),
    {"jaxbp.verify": ("Report", "verify_vjp")},
)
__all__ = ["Report", "__version__", "autodiff", "manual", "testing", "verify_vjp"]
__getattr__, __dir__ = _exports.getattr, _exports.dir
