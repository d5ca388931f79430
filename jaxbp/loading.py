"""Load a user's function by name: ``module:function`` or ``path/to/file.py:function``.

One loader for every command that takes the user's own code: ``jaxbp check --target``
(a custom_vjp to verify, ``--example`` inputs) and ``jaxbp train --model`` (a model
builder). Only :mod:`importlib` is used: nothing the user types is evaluated.

* ``mylayer:softplus`` imports the module ``mylayer`` (the current directory is searched
  first, so a ``mylayer.py`` beside the user is found) and returns ``softplus``;
  the function part may be dotted (``module:Class.method``).
* ``path/to/mylayer.py:softplus`` (anything ending in ``.py`` before the colon) imports
  that file as a module named after it; its folder goes on ``sys.path`` first so the
  file's own sibling imports work.

Every failure is a :class:`LoadError` (a ``ValueError``) whose message is one line
naming the spec and what is wrong; the CLI prints it and exits with status 2. So is a
spec that names a module of Python's standard library (``os:system`` is not a model), a
file named like a module already imported (``jax.py`` would replace jax) and a module that
calls ``sys.exit``. The user's code runs under :func:`user_code`: with ``sys.argv`` set to
``[spec]``, and Ctrl-C during it an :class:`UserCodeInterrupted` naming the spec.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LoadError",
    "UserCodeInterrupted",
    "anchored_spec",
    "first_line",
    "load_function",
    "split_spec",
    "user_code",
]


class LoadError(ValueError):
    """A ``module:function`` spec that cannot be loaded (the CLI exits with status 2)."""


class UserCodeInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while a user's module was importing or running (one that loops at import,
    say); the message names the spec. The CLI prints it and exits with status 130."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "interrupted"


# The module names _import_file has put into sys.modules: a file may be loaded again under its
# name, but a file never replaces a module that Python or another package imported.
_FILE_MODULES: set[str] = set()


_TRACEBACK = "Traceback (most recent call last):"


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters; where the message
    carries a Python traceback (a host callback's error, as XLA reports it), the traceback's last
    line (the exception) instead of its header."""
    text = str(e).strip().splitlines()
    if not text:
        return ""
    line = text[0].rstrip()
    if line.endswith(_TRACEBACK) and len(text) > 1:
        line = f"{line[: -len(_TRACEBACK)].rstrip()} {text[-1].strip()}".strip()
    return line[:limit]


def split_spec(spec: str) -> tuple[str, str]:
    """``(module or path, dotted function name)`` of a well-formed spec; :class:`LoadError` otherwise.
    Imports nothing (``jaxbp.models.check_model_name`` validates a ``--model`` with it)."""
    # rpartition: a Windows drive letter or a colon in a folder name stays in the path part.
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part.strip() or not attr_path.strip():
        raise LoadError(f"{spec!r} is not of the form MODULE:FUNCTION or path/to/file.py:FUNCTION")
    attr_path = attr_path.strip()
    if not all(part.isidentifier() for part in attr_path.split(".")):
        raise LoadError(f"{spec!r}: {attr_path!r} is not a dotted Python name")
    return module_part.strip(), attr_path


def anchored_spec(spec: str) -> str:
    """``spec`` with the file of a ``path/to/file.py:FUNCTION`` made absolute (resolved from the
    current directory now), so that it names the same file from any directory; a
    ``MODULE:FUNCTION`` spec (found on ``sys.path``), a built-in name and a malformed spec come
    back unchanged. Imports nothing."""
    try:
        module_part, attr_path = split_spec(spec)
    except LoadError:
        return spec
    if not module_part.endswith(".py"):
        return spec
    return f"{os.path.abspath(os.path.expanduser(module_part))}:{attr_path}"


@contextlib.contextmanager
def user_code(spec: str, doing: str) -> Iterator[None]:
    """Run a user's code (``doing``: what it is, e.g. ``"importing 'm.py'"``) as a tool should:
    with a clean ``sys.argv`` (``[spec]``, so a module that parses the command line at import
    does not see jaxbp's flags), a ``sys.exit`` in it a :class:`LoadError` naming the spec (never
    jaxbp's own exit status), and Ctrl-C an :class:`UserCodeInterrupted` saying where it happened."""
    saved = sys.argv
    sys.argv = [spec]
    try:
        yield
    except SystemExit as e:
        raise LoadError(
            f"{spec!r} called sys.exit({e.code!r}) while {doing}; code jaxbp runs must return or raise"
        ) from None
    except KeyboardInterrupt as e:
        if isinstance(e, UserCodeInterrupted):
            raise
        raise UserCodeInterrupted(f"interrupted while {doing} ({spec!r})") from None
    finally:
        sys.argv = saved


def _refuse_standard_library(spec: str, module_name: str) -> None:
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__main__":
        raise LoadError(f"{spec!r}: {top!r} is a module of Python's standard library, not your code")


def _replaces_a_module(name: str, path: Path) -> bool:
    """Whether importing ``path`` as ``name`` would replace a module of the standard library or one
    imported from another file (a file loaded before by spec, or imported as itself, may load again)."""
    if name in sys.stdlib_module_names:
        return True
    existing = sys.modules.get(name)
    if existing is None or name in _FILE_MODULES:
        return False
    origin = getattr(existing, "__file__", None)
    return origin is None or Path(origin).resolve() != path.resolve()


def _import_file(spec: str, path_text: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise LoadError(f"{spec!r}: no such file {str(path)!r}")
    name = path.stem
    if not name.isidentifier():
        raise LoadError(f"{spec!r}: {path.name!r} is not importable (the file name must be a Python name)")
    if _replaces_a_module(name, path):
        raise LoadError(
            f"{spec!r}: the file name {path.name!r} would replace the module {name!r} that Python "
            f"{'ships' if name in sys.stdlib_module_names else 'has imported already'}; rename the file"
        )
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise LoadError(f"{spec!r}: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so dataclasses, pickling-free copies and relative lookups find it
    _FILE_MODULES.add(name)
    try:
        with user_code(spec, f"importing {str(path)!r}"):
            module_spec.loader.exec_module(module)
    except BaseException as e:  # a user's module may raise anything on import
        sys.modules.pop(name, None)
        if isinstance(e, LoadError) or not isinstance(e, Exception):  # sys.exit, Ctrl-C: user_code's
            raise
        raise LoadError(f"{spec!r}: importing {str(path)!r} raised {type(e).__name__}: {first_line(e)}") from e
    return module


def _import_name(spec: str, module_name: str, search_cwd: bool) -> Any:
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise LoadError(f"{spec!r}: {module_name!r} is neither a dotted module name nor a path ending in .py")
    _refuse_standard_library(spec, module_name)
    if search_cwd and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    importlib.invalidate_caches()  # a module written a moment ago
    try:
        with user_code(spec, f"importing {module_name!r}"):
            return importlib.import_module(module_name)
    except LoadError:
        raise
    except ModuleNotFoundError as e:
        raise LoadError(f"{spec!r}: cannot import module {module_name!r} ({e})") from e
    except Exception as e:  # a user's module may raise anything on import
        raise LoadError(f"{spec!r}: importing {module_name!r} raised {type(e).__name__}: {first_line(e)}") from e


def load_function(spec: str, *, search_cwd: bool = True) -> Any:
    """The callable named by ``spec`` (``module:function`` or ``path/to/file.py:function``).

    With ``search_cwd`` the current directory is put on ``sys.path`` before a dotted
    module is imported. Raises :class:`LoadError` saying what is wrong.
    """
    module_part, attr_path = split_spec(spec)
    if module_part.endswith(".py"):
        obj: Any = _import_file(spec, module_part)
    else:
        obj = _import_name(spec, module_part, search_cwd)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"{spec!r}: {getattr(obj, '__name__', module_part)!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LoadError(f"{spec!r} is not callable (it is a {type(obj).__name__})")
    return obj
