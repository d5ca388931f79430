"""jaxbp: convolutional networks with hand-derived backward passes in JAX.

``jaxbp.manual`` holds the layers with hand-derived VJPs, ``jaxbp.autodiff`` the
plain-JAX twins; :func:`~jaxbp.verify.api.verify_vjp` checks any pair against each other.

``import jaxbp`` imports nothing else: the names below, and every module of the package
(``jaxbp.testing.assert_vjp``, ``jaxbp.models``), are imported on first use (PEP 562),
so that ``jaxbp --help`` and modules that need no JAX do not pay for importing it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = ["Report", "__version__", "autodiff", "manual", "testing", "verify_vjp"]

# the names that are not modules, by the module that defines them
_MODULE_OF = {"Report": "jaxbp.verify", "verify_vjp": "jaxbp.verify"}


def __getattr__(name: str):
    """``Report``, ``verify_vjp`` or a submodule (``jaxbp.testing``), imported now."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
