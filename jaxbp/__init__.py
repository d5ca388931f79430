"""jaxbp: convolutional networks with hand-derived backward passes in JAX.

``jaxbp.manual`` holds the layers with hand-derived VJPs, ``jaxbp.autodiff`` the
plain-JAX twins; :func:`verify_vjp` checks any pair against each other.
"""

from jaxbp import autodiff, manual, testing
from jaxbp.verify import Report, verify_vjp

__version__ = "0.1.0"

__all__ = ["Report", "__version__", "autodiff", "manual", "testing", "verify_vjp"]
