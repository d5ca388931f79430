"""PEP 562 lazy exports: a package's public names imported from their modules on first use.

``import jaxbp`` (and ``jaxbp.train``, ``jaxbp.verify``) imports no JAX: ``jaxbp --help``
builds its parser in a fraction of a second. Standard library only, so any package of
jaxbp, :mod:`jaxbp.verify` included (which imports nothing else of jaxbp), can use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["LazyExports", "lazy_exports"]


class LazyExports(NamedTuple):
    """What a package's ``__init__`` assigns: ``__getattr__, __dir__ = exports.getattr, exports.dir``
    (``__all__`` stays a literal expression there, which the API reference reads statically)."""

    getattr: Callable[[str], Any]
    dir: Callable[[], list[str]]


def lazy_exports(package: str, namespace: dict, names: Mapping[str, tuple[str, ...]]) -> LazyExports:
    """The exports of ``package`` whose ``globals()`` is ``namespace``: ``names`` maps a module
    (relative to the package, or absolute with a dot) to the public names it defines. An
    attribute that is neither a name nor a submodule raises ``AttributeError``; a value once
    imported is kept in ``namespace``."""
    module_of = {name: module for module, exported in names.items() for name in exported}

    def getattr_(name: str) -> Any:
        if name in module_of:
            module = module_of[name]
            value = getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return LazyExports(getattr_, dir_)
