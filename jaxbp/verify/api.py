"""``verify_vjp``: check a hand-derived VJP against ``jax.grad`` of a twin and finite differences."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxbp.verify import compiled
from jaxbp.verify.checks import CHECKS, FD_BASIS_MAX, Pass, Problem, check_gradients, jacobians
from jaxbp.verify.explore import EXPLORE_REGIONS, KINK_REGIONS, check_explore
from jaxbp.verify.numerics import cast, is_inexact
from jaxbp.verify.report import TRANSFORMS, Report, TransformCheck
from jaxbp.verify.structure import Inputs, Outputs
from jaxbp.verify.tolerances import FD_DIRECTIONS, FD_TOLERANCE, tolerance_for, validate_rtol

__all__ = ["verify_vjp"]

CHECKABLE_TRANSFORMS = tuple(t for t in TRANSFORMS if t != "forward")
# Without a reference, random directions per leaf for leaves above FD_BASIS_MAX elements.
FD_ONLY_DIRECTIONS = 8


def unwrap(fn: Callable) -> Callable:
    """The function inside ``functools.partial`` wrappers."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _param_names(fn: Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def arg_names(manual_fn: Callable, reference_fn: Callable | None, n: int) -> list[str]:
    """Argument names from the manual function's signature, else the reference's, else ``arg<i>``."""
    for fn in (manual_fn, reference_fn):
        names = _param_names(fn) if fn is not None else []
        if len(names) >= n:
            return names[:n]
    return [f"arg{i}" for i in range(n)]


def _has_inexact(arg: Any) -> bool:
    return any(is_inexact(leaf) for leaf in jax.tree.leaves(arg))


def _argnums(argnums, example_args) -> tuple[int, ...]:
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(example_args) if _has_inexact(a))
        if not argnums:
            raise ValueError(
                "verify_vjp: no floating-point or complex array among the arguments' leaves to differentiate"
            )
        return argnums
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for i in argnums:
        if not 0 <= i < len(example_args):
            raise ValueError(f"verify_vjp: argnum {i} is out of range for {len(example_args)} arguments")
        if not _has_inexact(example_args[i]):
            raise ValueError(
                f"verify_vjp: argument {i} has no floating-point array leaf (it is not a floating-point array) "
                "and cannot be differentiated"
            )
    return argnums


def _transform_names(transforms: bool | Iterable[str]) -> frozenset[str]:
    if transforms is True:
        return frozenset(CHECKABLE_TRANSFORMS)
    if transforms is False or transforms is None:
        return frozenset()
    names = frozenset([transforms] if isinstance(transforms, str) else transforms)
    unknown = sorted(names - set(CHECKABLE_TRANSFORMS))
    if unknown:
        raise ValueError(
            f"verify_vjp: unknown transform {', '.join(unknown)}; known: {', '.join(CHECKABLE_TRANSFORMS)}"
        )
    return names


def first_line(e: BaseException) -> str:
    """An exception's message, first line only (what a report row has room for)."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def _explore_regions(explore: bool | Iterable[str], fd: bool) -> tuple[str, ...]:
    if explore is True:
        # zeros and ties sit on kinks; only where the inputs are not declared to (fd=True)
        return EXPLORE_REGIONS if fd else tuple(r for r in EXPLORE_REGIONS if r not in KINK_REGIONS)
    if not explore:
        return ()
    regions = tuple([explore] if isinstance(explore, str) else explore)
    unknown = [r for r in regions if r not in EXPLORE_REGIONS]
    if unknown:
        raise ValueError(
            f"verify_vjp: unknown explore region {', '.join(unknown)}; known: {', '.join(EXPLORE_REGIONS)}"
        )
    return regions


def _directions(inputs: Inputs, diff64: list, rng: np.random.Generator, fd_only: bool) -> list:
    """Unit directions per leaf (complex leaves: complex directions); every basis vector of small leaves
    when there is no reference."""
    out = []
    for d in diff64:
        shape, size, cplx = np.shape(d), int(np.size(d)), np.iscomplexobj(d)
        if fd_only and size <= FD_BASIS_MAX:
            eye = np.eye(size).reshape(size, *shape)
            vs = list(eye) + (list(1j * eye) if cplx else [])
        else:
            vs = []
            for _ in range(FD_ONLY_DIRECTIONS if fd_only else FD_DIRECTIONS):
                v = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if cplx else 0)
                vs.append(v / (np.linalg.norm(v) or 1.0))
        out.append(vs if size else [])
    return out


LOW_PRECISION = ("float16", "bfloat16")


def _dtypes(dtypes: Sequence[str] | None, example_args: tuple) -> list[str]:
    """The dtypes to check in: float64 and float32, plus float16/bfloat16 where an example leaf has it."""
    if dtypes is None:
        found = {str(leaf.dtype) for leaf in jax.tree.leaves(example_args) if is_inexact(leaf)}
        dtypes = ("float64", "float32", *(d for d in LOW_PRECISION if d in found))
    return [str(np.dtype(d)) if d not in LOW_PRECISION else d for d in dtypes]


def verify_vjp(
    manual_fn: Callable,
    reference_fn: Callable | None,
    *example_args: Any,
    argnums: int | Sequence[int] | None = None,
    dtypes: Sequence[str] | None = None,
    seed: int = 0,
    num_cotangents: int = 3,
    rtol: float | dict[str, float | tuple[float, str]] | None = None,
    fd: bool = True,
    transforms: bool | Iterable[str] = True,
    explore: bool | Iterable[str] = True,
    strict_kinks: bool = False,
    jacobian: bool = False,
    matmul_precision: str | None = "highest",
    name: str | None = None,
    derivation: str | None = None,
) -> Report:
    """Compare the VJP of ``manual_fn`` with autodiff of ``reference_fn`` and with finite differences.

    Args:
      manual_fn: the function with a hand-derived backward (usually ``jax.custom_vjp``).
      reference_fn: the same forward in plain JAX; its gradient comes from autodiff, the
        primary oracle. ``None`` checks against finite differences only: every basis
        direction of leaves up to 64 elements, 8 random ones above, no second order;
        weaker (see the docs page on verifying), but it needs no twin.
      *example_args: positional arguments for both, any pytrees. Every floating or
        complex array leaf of the selected arguments is differentiated and named by
        its key path (``params['w']``); integer labels, PRNG keys, bools and Python
        numbers pass through unchanged and are listed as skipped.
      argnums: the arguments to differentiate (default: every one with a floating leaf).
      dtypes: the dtypes to check in (all inexact leaves cast together); default float64
        and float32, plus float16 or bfloat16 where an example leaf has that dtype.
        float64 runs with ``jax_enable_x64`` on, the others with it off.
      seed: seeds the cotangents, finite-difference directions and each transform's
        draws (each check its own stream), so a report is reproducible.
      num_cotangents: random cotangents per dtype; the worst is reported.
      rtol: a tolerance for every dtype, or a ``{dtype: tol}`` dict (``tol`` may be a
        ``(tol, where_it_comes_from)`` pair); default :func:`default_tolerance`.
        Negative or NaN raises ``ValueError``.
      fd: also check against float64 finite differences where they can judge: a direction
        whose one-sided differences disagree (a kink or tie within the step) is skipped
        with a note; ``False`` also drops the zeros and ties regions of ``explore``.
      transforms: ``True`` (all), ``False`` (none: only the forward check) or the names
        to run among ``jit``, ``vmap``, ``grad_of_grad``, ``grad_of_grad_ct``,
        ``zero_cotangents``, ``forward_mode``; they run in the most precise dtype checked
        (first order and the forward run in every dtype).
      explore: also check at inputs beyond the examples, in the most precise dtype
        checked: ``True`` (scaled x1e-3, x10, x100; zeros and ties when ``fd``),
        ``False``, or the region names. Same shapes, so nothing recompiles.
      strict_kinks: at a kink found while exploring (one-sided slopes differ), require the
        manual VJP to equal autodiff's subgradient instead of noting the difference.
      jacobian: on failure, add manual and reference Jacobian blocks of failing
        leaves with at most 64 elements (outputs at most 64 elements in total).
      matmul_precision: ``jax.default_matmul_precision`` in force during the checks;
        None keeps whatever is configured (and records it).
      name: label of the report (default the manual function's ``__name__``).
      derivation: the math to show on failure (default the manual function's docstring).

    Returns:
      A :class:`Report`; ``report.passed`` says whether every check is within tolerance,
      ``report.raise_if_failed()`` raises it as an ``AssertionError``. Exceptions raised
      by either function are recorded in ``report.errors`` (and fail it).
    """
    argnums = _argnums(argnums, example_args)
    if num_cotangents < 1:
        raise ValueError("verify_vjp: num_cotangents must be >= 1")
    validate_rtol(rtol)
    options = _Options(
        _transform_names(transforms), _explore_regions(explore, fd or reference_fn is None), strict_kinks, jacobian
    )
    dtypes = _dtypes(dtypes, example_args)
    names = arg_names(manual_fn, reference_fn, len(example_args))
    precision = matmul_precision or jax.config.jax_default_matmul_precision or "default"
    if derivation is None:
        derivation = inspect.getdoc(unwrap(manual_fn)) or ""
    report = Report(
        name=name or getattr(unwrap(manual_fn), "__name__", "function"),
        matmul_precision=precision,
        backend=jax.default_backend(),
        derivation=derivation.strip(),
        seed=seed,
        reference="autodiff" if reference_fn is not None else "finite differences only",
    )
    inputs = Inputs(example_args, argnums, names)
    report.skipped = [{"label": s.label, "reason": s.reason} for s in inputs.skipped]
    problem = _problem(report, manual_fn, reference_fn, example_args, inputs, seed, num_cotangents, fd)
    if problem is None:
        return report
    most_precise = "float64" if "float64" in dtypes else (dtypes[0] if dtypes else None)
    for dtype in dtypes:
        tol, src = tolerance_for(dtype, rtol, precision)
        fd_tol = FD_TOLERANCE if dtype == "float64" else max(FD_TOLERANCE, tol)
        context = jax.default_matmul_precision(matmul_precision) if matmul_precision else contextlib.nullcontext()
        try:
            with compiled.x64_scope(dtype == "float64"), context:
                p = Pass(problem, dtype, tol, src, fd_tol, most_precise=dtype == most_precise)
                _check_dtype(report, p, options)
        except Exception as e:  # noqa: BLE001 - report, do not crash
            report.errors.append(f"{dtype}: {type(e).__name__}: {first_line(e)}")
    return report


class _Options(NamedTuple):
    transforms: frozenset[str]
    regions: tuple[str, ...]
    strict_kinks: bool
    jacobian: bool


def _problem(report, manual_fn, reference_fn, example_args, inputs, seed, num_cotangents, fd) -> Problem | None:
    """The float64 examples, the output's structure, cotangents and FD directions; None (with the
    error in the report) where the function cannot even be traced."""
    # A stream of its own: the registry draws the example inputs from default_rng(seed), and a
    # cotangent equal to an input (dy = x) makes some gradients vanish (batch norm's dx).
    rng = np.random.default_rng([seed, 1])
    with compiled.x64_scope(True):
        args64 = tuple(jax.tree.map(lambda a: cast(a, "float64"), a) for a in example_args)
        target = reference_fn or manual_fn
        layout = inputs.layout(args64)
        diff, rest = layout.split(args64)
        try:
            outputs = Outputs(jax.eval_shape(lambda *d: target(*layout.build(d, rest)), *diff))
        except Exception as e:  # noqa: BLE001 - report, do not crash
            which = "reference_fn" if reference_fn is not None else "manual_fn"
            report.errors.append(f"{which} raised {type(e).__name__}: {first_line(e)}")
            return None
    report.skipped += [{"label": s.label, "reason": s.reason} for s in outputs.skipped]
    if not any(outputs.inexact):
        kinds = ", ".join(f"{lab}: {s.dtype}" for lab, s in zip(outputs.labels, outputs.structs)) or "none"
        report.errors.append(f"no floating-point output to differentiate ({kinds}); nothing was checked")
        return None
    cts64 = [outputs.random_cotangent(rng) for _ in range(num_cotangents)]
    directions = None
    if fd or reference_fn is None:
        directions = _directions(inputs, diff, rng, reference_fn is None)
    random = any("PRNG key" in s.reason for s in inputs.skipped)
    return Problem(manual_fn, reference_fn, args64, inputs, cts64, directions, seed, random)


def _guard(name: str, p: Pass, check: Callable[[Pass], list]) -> list:
    """Run one transform check; an exception becomes a failed check that says what was raised."""
    try:
        return check(p)
    except Exception as e:  # noqa: BLE001 - report, do not crash
        return [TransformCheck(name, p.dtype, None, p.tol, False, f"raised {type(e).__name__}: {first_line(e)}")]


def _check_dtype(report: Report, p: Pass, options: _Options) -> None:
    """The checks of one dtype, appended to the report as they complete: first order and the forward in
    every dtype; the transforms and exploration in the most precise one (they test how the backward is
    built, batched and differentiated, which a dtype does not change, and each costs a compilation)."""
    grads = check_gradients(p)
    report.grads += grads
    report.transforms += _guard("forward", p, CHECKS["forward"])
    wanted = options.transforms if p.most_precise else frozenset()
    for name, check in CHECKS.items():
        if name == "forward" or not (name in wanted or (name == "grad_of_grad" and "grad_of_grad_ct" in wanted)):
            continue
        rows = _guard(name, p, check)
        report.transforms += [r for r in rows if r.name in wanted or (r.passed is False and r.name == name)]
    if p.most_precise:
        report.explored += check_explore(p, options.regions, options.strict_kinks)
    if options.jacobian:
        report.jacobians += jacobians(p, [k for k, g in enumerate(grads) if not g.passed])
