"""A user's own function from the command line (``jaxbp check --target``): loading, example inputs.

The function is loaded by :func:`jaxbp.loading.load_function` (``module:fn`` or
``path/to/file.py:fn``); its example inputs come from ``--shapes`` (seeded standard-normal
float64 arrays) or from the user's own ``make_inputs`` function (``--example``), which
may return any pytrees: integer labels, PRNG keys, positive-only inputs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from jaxbp import loading
from jaxbp.loading import LoadError, first_line
from jaxbp.verify import Report, ShapesReport, verify_shapes, verify_vjp
from jaxbp.verify.api import unwrap
from jaxbp.verify.compiled import x64_scope

__all__ = [
    "MAX_ELEMENTS",
    "TargetCheck",
    "TargetError",
    "check_size",
    "check_target",
    "example_inputs",
    "exercises_a_rule",
    "load_example",
    "load_function",
    "parse_shape",
    "shape_parameter",
]


class TargetError(LoadError):
    """A ``module:function`` spec, a shape or example inputs that cannot be used (the CLI exits with status 2)."""


def load_function(spec: str, *, search_cwd: bool = True) -> Callable:
    """:func:`jaxbp.loading.load_function`, its errors raised as :class:`TargetError`."""
    try:
        return loading.load_function(spec, search_cwd=search_cwd)
    except TargetError:
        raise
    except LoadError as e:
        raise TargetError(str(e)) from e


# The most elements --shapes may ask for, over all arguments: 10 million float64 values (80 MB per
# copy; a check holds a few dozen copies). Beyond it a shape is refused before anything is allocated.
MAX_ELEMENTS = 10_000_000
_MAX_NDIM = 32


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,4"`` -> ``(3, 4)``; ``"7"`` -> ``(7,)``; ``""`` or ``"()"`` -> a scalar. Raises :class:`TargetError`
    for anything but ASCII digits (``"²"`` is a digit to ``str.isdigit``), more than 32 axes or more
    than :data:`MAX_ELEMENTS` elements."""
    body = text.strip().strip("()[]").strip()
    if not body:
        return ()
    parts = [p.strip() for p in body.replace("x", ",").split(",")]
    if parts and parts[-1] == "":  # "3," is the 1-tuple (3,)
        parts = parts[:-1]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise TargetError(
            f"malformed shape {text!r} (--shapes): expected non-negative integers in ASCII digits separated by "
            "commas, e.g. 3,4"
        )
    if len(parts) > _MAX_NDIM:
        raise TargetError(f"shape {text!r} (--shapes) has {len(parts)} axes, more than {_MAX_NDIM}")
    shape = tuple(int(p) for p in parts)
    check_size([shape], f"shape {text!r}")
    return shape


def check_size(shapes: Sequence[tuple[int, ...]], what: str = "the shapes") -> None:
    """:class:`TargetError` if ``shapes`` hold more than :data:`MAX_ELEMENTS` elements in all."""
    total = sum(math.prod(shape) for shape in shapes)
    if total > MAX_ELEMENTS:
        raise TargetError(
            f"{what} (--shapes) holds {total} elements, more than the limit of {MAX_ELEMENTS} for a check; "
            "check a smaller instance (the VJP's math does not depend on the size)"
        )


def example_inputs(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded standard-normal float64 arrays of the given shapes."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape) for shape in shapes)


def load_example(spec: str | Callable, seed: int = 0, *, label: str | None = None) -> tuple:
    """The example arguments from a user's ``make_inputs`` (``module:fn``): called with ``seed`` if it takes
    an argument, else with none; a tuple is the arguments, anything else the single argument.

    Runs with x64 on, so float64 inputs stay float64 until each dtype's cast.
    """
    fn = load_function(spec) if isinstance(spec, str) else spec
    label = label or (spec if isinstance(spec, str) else getattr(fn, "__name__", "make_inputs"))
    try:
        takes_seed = bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        takes_seed = False
    try:
        with x64_scope(True), loading.user_code(str(label), "calling it"):
            args = fn(seed) if takes_seed else fn()
    except LoadError as e:  # sys.exit
        raise TargetError(str(e)) from None
    except Exception as e:  # a user's function may raise anything
        raise TargetError(f"{label} raised {type(e).__name__}: {first_line(e)}") from e
    return args if isinstance(args, tuple) else (args,)


def _check_binds(spec: str | Callable, fn: Callable, args: tuple, source: str) -> None:
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        label = spec if isinstance(spec, str) else getattr(fn, "__name__", "function")
        raise TargetError(f"{label} cannot take the {len(args)} argument(s) given by {source}: {e}") from e
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass


@dataclass
class TargetCheck:
    """What ``jaxbp check --target`` found: the report at the examples, the report at the default shapes
    where the ``--example`` factory takes a ``shape``, and the pair and arguments it checked."""

    report: Report
    shapes: ShapesReport | None
    manual_fn: Callable
    reference_fn: Callable | None
    args: tuple

    @property
    def passed(self) -> bool:
        return self.report.passed and (self.shapes is None or self.shapes.passed)


def shape_parameter(fn: Callable) -> tuple[int, ...] | None:
    """The default of ``fn``'s ``shape`` parameter, where it has one (a factory that takes a shape)."""
    try:
        param = inspect.signature(fn).parameters.get("shape")
    except (TypeError, ValueError):
        return None
    if param is None:
        return None
    if param.default is inspect.Parameter.empty or not isinstance(param.default, tuple):
        raise TargetError(f"{getattr(fn, '__name__', 'make_inputs')}: give its shape parameter a tuple default, "
                          "e.g. shape=(2, 3): the check runs there, then at other shapes of that rank")  # fmt: skip
    return param.default


def _shape_factory(fn: Callable, label: str) -> Callable:
    takes_seed = "seed" in inspect.signature(fn).parameters

    def make(shape: tuple[int, ...], seed: int) -> tuple:
        try:
            with x64_scope(True), loading.user_code(label, "calling it"):
                args = fn(seed=seed, shape=shape) if takes_seed else fn(shape=shape)
        except LoadError as e:  # sys.exit
            raise TargetError(str(e)) from None
        return args if isinstance(args, tuple) else (args,)

    return make


def check_target(
    target: str | Callable,
    reference: str | Callable | None,
    shapes: Sequence[str | tuple[int, ...]] | None = None,
    *,
    example: str | Callable | None = None,
    argnums: Sequence[int] | None = None,
    dtypes: Sequence[str] = ("float64", "float32"),
    seed: int = 0,
    matmul_precision: str | None = "highest",
    rtol: float | None = None,
    explore: bool | Iterable[str] = True,
    jacobian: bool = False,
) -> TargetCheck:
    """:func:`verify_vjp` of a user's pair (``jaxbp check --target``), on random float64 inputs of the
    given ``shapes`` or on the arguments ``example`` returns. ``reference=None``: finite differences only.

    An ``example`` factory with a ``shape`` parameter (``make_inputs(seed, shape=(2, 3))``) is
    called at its default shape for the full check, then at the default shapes of that rank
    (:func:`jaxbp.verify.default_shapes`: batch 1, every side distinct, rotated) for first order.
    """
    manual_fn = load_function(target) if isinstance(target, str) else target
    reference_fn = load_function(reference) if isinstance(reference, str) else reference
    factory = None
    if example is not None:
        if shapes:
            raise TargetError("give either --shapes or --example, not both")
        example_fn = load_function(example) if isinstance(example, str) else example
        default_shape = shape_parameter(example_fn)
        if default_shape is None:
            args = load_example(example_fn, seed, label=str(example) if isinstance(example, str) else None)
        else:
            factory = _shape_factory(example_fn, str(example))
            args = factory(default_shape, seed)
        source = "--example"
    else:
        if not shapes:
            raise TargetError("give the shape of every argument, e.g. --shapes 3,4 4,2 (or --example mod:make_inputs)")
        parsed = [parse_shape(s) if isinstance(s, str) else tuple(s) for s in shapes]
        check_size(parsed)
        args, source = example_inputs(parsed, seed), "--shapes"
    if argnums is not None:
        bad = [i for i in argnums if not 0 <= i < len(args)]
        if bad:
            raise TargetError(f"argnums {bad} out of range for {len(args)} argument(s)")
    for spec, fn in ((target, manual_fn), (reference, reference_fn)):
        if fn is not None:
            _check_binds(spec, fn, args, source)
    name = target if isinstance(target, str) else getattr(unwrap(target), "__name__", "function")
    try:
        with loading.user_code(name, "checking it"):
            report = verify_vjp(
                manual_fn, reference_fn, *args, argnums=None if argnums is None else tuple(argnums),
                dtypes=dtypes, seed=seed, matmul_precision=matmul_precision, rtol=rtol, explore=explore,
                jacobian=jacobian, name=name,
            )  # fmt: skip
            if not exercises_a_rule(manual_fn, args):
                report.notes.append(
                    f"{name} is not a jax.custom_vjp or jax.custom_jvp function and calls none: no hand-written "
                    "derivative rule was exercised (the check compared JAX's own derivatives)"
                )
            at_shapes = None
            if factory is not None:
                at_shapes = verify_shapes(
                    manual_fn, reference_fn, factory, rank=len(default_shape), seed=seed, dtypes=dtypes,
                    matmul_precision=matmul_precision, rtol=rtol, name=name,
                    argnums=None if argnums is None else tuple(argnums),
                )  # fmt: skip
    except LoadError as e:  # sys.exit in the user's code: never a passing check
        raise TargetError(str(e)) from None
    except ValueError as e:  # argument problems found before any check ran
        raise TargetError(str(e)) from e
    return TargetCheck(report, at_shapes, manual_fn, reference_fn, args)


def exercises_a_rule(fn: Callable, args: tuple) -> bool:
    """Whether ``fn`` is a ``jax.custom_vjp``/``jax.custom_jvp`` function or calls one on ``args``
    (a nested call shows in its jaxpr); True where tracing it fails (nothing can be said)."""
    if isinstance(unwrap(fn), (jax.custom_vjp, jax.custom_jvp)):
        return True
    try:
        with x64_scope(True):
            jaxpr = jax.make_jaxpr(fn)(*args)
    except Exception:  # the check itself reports what fails
        return True
    return _calls_a_rule(jaxpr.jaxpr)


def _calls_a_rule(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith(("custom_vjp", "custom_jvp")):
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns") and _calls_a_rule(inner):
                    return True
    return False
