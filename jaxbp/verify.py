"""Verify a hand-derived VJP against ``jax.grad`` and central finite differences.

:func:`verify_vjp` takes a function with a custom backward (``manual_fn``) and a
plain-JAX twin (``reference_fn``) and returns a :class:`Report`:

* per differentiable argument and dtype, the VJP of ``manual_fn`` against the VJP
  that autodiff derives from ``reference_fn``, for several random cotangents: the
  max absolute and relative error and the worst element with both values; and the
  error of the manual VJP against central finite differences of the reference
  forward (computed in float64 at the inputs rounded to the dtype under test);
* the transforms: forward equality, ``jit``, ``vmap`` (per-example VJPs of a batch
  against a Python loop), grad-of-grad, and forward mode (which ``custom_vjp``
  functions do not support: reported as a known limitation, not a failure).

Errors against autodiff are norm-wise: ``max|manual - ref| / max|ref|``, so a
tolerance reads as "digits that agree relative to the largest entry" and
near-zero entries do not blow it up. Errors against finite differences are taken
along random unit directions ``v`` of an argument with ``n`` entries:
``|fd(v) - <g, v>| / (|g| / sqrt(n))``, the error of the directional derivative
relative to the typical size of one (a random unit ``v`` sees about ``|g| / sqrt(n)``),
so it reads like a relative error of the gradient, as the autodiff one does. The tolerance
comes from the dtype and the matmul precision in force (see
:func:`default_tolerance`) and the report says which; every check runs under
``jax.default_matmul_precision(matmul_precision)`` ("highest" unless asked).

:func:`check_registry` runs :func:`verify_layer` over every registered layer and
configuration (``jaxbp check``); :func:`format_table` and :func:`format_markdown`
summarise its reports one row per configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import loading
from jaxbp.loading import LoadError, first_line

# Norm-wise relative tolerances at "highest" matmul precision.
_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}
# TF32 (GPU) and one-bf16-pass (TPU) matmuls keep about 10 mantissa bits.
_REDUCED_PRECISION_TOLERANCE = 2e-2
_FULL_PRECISION = ("highest", "float32")
# Central differences with step h = FD_STEP * max(1, max|x|) in float64: truncation
# error ~ h^2, rounding ~ 1e-16 / h, both far below FD_TOLERANCE.
FD_TOLERANCE = 1e-6
FD_STEP = 1e-6
FD_DIRECTIONS = 2


def default_tolerance(dtype: str, matmul_precision: str | None = "highest") -> tuple[float, str]:
    """The norm-wise relative tolerance for ``dtype`` and a sentence saying where it comes from.

    Reduced matmul precision ("default", "high", "bfloat16", "tensorfloat32", ...)
    loosens float32 to ``2e-2`` on accelerators, where it means TF32 or bf16 passes;
    CPU matmuls are full float32 at any precision setting.
    """
    if dtype not in _TOLERANCE:
        try:
            dtype = str(jnp.dtype(dtype))
        except TypeError:
            pass
    if dtype not in _TOLERANCE:
        raise ValueError(f"no default tolerance for dtype {dtype!r}; known: {', '.join(_TOLERANCE)}")
    precision = matmul_precision or "default"
    if dtype == "float32" and precision not in _FULL_PRECISION:
        backend = jax.default_backend()
        if backend != "cpu":
            return _REDUCED_PRECISION_TOLERANCE, (
                f"float32 at matmul precision {precision!r} on {backend} (TF32/bf16 matmul passes)"
            )
        return _TOLERANCE[dtype], f"default for float32 (matmul precision {precision!r} is full float32 on cpu)"
    return _TOLERANCE[dtype], f"default for {dtype} at matmul precision {precision!r}"


# ------------------------------------------------------------------ the report


def _ratio(err: float | None, tol: float | None) -> float:
    if err is None or tol is None:
        return 0.0
    if tol <= 0:
        return 0.0 if err == 0 else math.inf
    return err / tol


@dataclass
class GradCheck:
    """The VJP of one differentiable argument at one dtype.

    ``max_rel_err`` is ``max|manual - autodiff| / max|autodiff|`` over every element
    and cotangent, ``max_abs_err`` its numerator; ``worst_index`` is the element
    where the two differ most (``manual_value`` vs ``reference_value`` there).
    ``fd_rel_err`` is the worst error against central finite differences (None
    where they did not run: a kink on purpose, or ``fd=False``).
    """

    arg: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...]
    manual_value: float
    reference_value: float
    tolerance: float
    tolerance_source: str
    fd_rel_err: float | None = None
    fd_tolerance: float | None = None
    shape: tuple[int, ...] = ()

    @property
    def ratio(self) -> float:
        """The larger of error/tolerance against autodiff and against finite differences: below 1 passes."""
        return max(_ratio(self.max_rel_err, self.tolerance), _ratio(self.fd_rel_err, self.fd_tolerance))

    @property
    def passed(self) -> bool:
        fd_ok = self.fd_rel_err is None or self.fd_rel_err <= self.fd_tolerance
        return bool(self.max_rel_err <= self.tolerance and fd_ok)

    @property
    def element(self) -> str:
        """The worst element as an expression: ``x[0, 2, 1, 0]``."""
        return f"{self.arg}[{', '.join(map(str, self.worst_index))}]" if self.worst_index else self.arg


@dataclass
class TransformCheck:
    """A transform of the manual function (jit, vmap, ...) against the reference."""

    name: str
    dtype: str
    error: float | None
    tolerance: float | None
    passed: bool | None  # None: not applicable or a known limitation (see note)
    note: str = ""


# What each transform check compares, for the report.
TRANSFORMS = {
    "forward": "manual forward output vs reference forward output",
    "jit": "jit-compiled manual VJP vs autodiff",
    "vmap": "vmap of per-example manual VJPs vs a loop of autodiff VJPs",
    "grad_of_grad": "gradient of <manual VJP, u> vs the same through autodiff",
    "forward_mode": "jax.jvp of the manual function vs of the reference",
}


@dataclass
class Report:
    """Everything :func:`verify_vjp` found; ``str()`` is a table, :meth:`to_json` the full record."""

    name: str
    grads: list[GradCheck] = field(default_factory=list)
    transforms: list[TransformCheck] = field(default_factory=list)
    matmul_precision: str = "highest"
    backend: str = ""
    derivation: str = ""
    seed: int = 0
    layer: str = ""  # registry layer and configuration (check_registry), else ""
    config: str = ""
    errors: list[str] = field(default_factory=list)  # exceptions raised while checking

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and all(g.passed for g in self.grads)
            and all(t.passed is not False for t in self.transforms)
        )

    @property
    def failures(self) -> list[GradCheck | TransformCheck]:
        return [g for g in self.grads if not g.passed] + [t for t in self.transforms if t.passed is False]

    def worst(self, dtype: str | None = None) -> GradCheck | None:
        """The gradient check with the largest error/tolerance ratio (of one dtype, if given)."""
        rows = [g for g in self.grads if dtype is None or g.dtype == dtype]
        return max(rows, key=lambda g: g.ratio, default=None)

    def to_dict(self) -> dict:
        """A JSON-ready dict: the fields plus ``ratio``/``passed`` per row; inf and nan as strings."""
        d = dataclasses.asdict(self)
        for g, row in zip(self.grads, d["grads"]):
            row["ratio"], row["passed"] = g.ratio, g.passed
        d["passed"] = self.passed
        return _json_safe(d)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [
            (
                f"{self.name}: {status}  (backend {self.backend}, matmul precision {self.matmul_precision!r}, "
                f"seed {self.seed})"
            )
        ]
        if self.grads:
            w = max(4, *(len(g.arg) for g in self.grads))
            header = (
                f"  {'arg':<{w}} {'dtype':<8} {'vs autodiff':>11} {'tol':>6} {'vs FD':>8} {'tol':>6} "
                f"{'ratio':>8}  {'result':<6} worst element: manual | autodiff"
            )
            lines += [header, "  " + "-" * (len(header) - 2)]
            for g in self.grads:
                fd = "-" if g.fd_rel_err is None else f"{g.fd_rel_err:.1e}"
                fdt = "" if g.fd_tolerance is None else f"{g.fd_tolerance:.0e}"
                lines.append(
                    f"  {g.arg:<{w}} {g.dtype:<8} {g.max_rel_err:11.1e} {g.tolerance:6.0e} {fd:>8} {fdt:>6} "
                    f"{g.ratio:8.2g}  {'ok' if g.passed else 'FAIL':<6} "
                    f"{g.element}: {g.manual_value:.6g} | {g.reference_value:.6g}"
                )
        by_name: dict[str, list[TransformCheck]] = {}
        for t in self.transforms:
            by_name.setdefault(t.name, []).append(t)
        if by_name:
            lines.append("  transforms:")
        for name, checks in by_name.items():
            cells = []
            for t in checks:
                state = {True: "ok", False: "FAIL", None: "n/a"}[t.passed]
                err = "" if t.error is None else f" {t.error:.1e}"
                cells.append(f"{t.dtype} {state}{err}")
            notes = sorted({t.note for t in checks if t.note and (t.passed is not True)})
            note = f"  ({'; '.join(notes)})" if notes else ""
            lines.append(f"    {name:<13} {' | '.join(cells)}{note}")
        sources = {g.dtype: g.tolerance_source for g in self.grads}
        if sources:
            lines.append("  tolerances: " + "; ".join(f"{d}: {s}" for d, s in sources.items()))
        for e in self.errors:
            lines.append(f"  ERROR {e}")
        if not self.passed:
            lines += self._explain_failures()
        return "\n".join(lines)

    def _explain_failures(self) -> list[str]:
        lines = []
        for g in (g for g in self.grads if not g.passed):
            why = []
            if g.max_rel_err > g.tolerance:
                why.append(f"vs autodiff {g.max_rel_err:.2e} > {g.tolerance:.0e}")
            if g.fd_rel_err is not None and g.fd_rel_err > g.fd_tolerance:
                why.append(f"vs finite differences {g.fd_rel_err:.2e} > {g.fd_tolerance:.0e}")
            lines.append(
                f"  FAIL d{g.arg} ({g.dtype}, shape {tuple(g.shape)}): {', '.join(why)}; worst element "
                f"{g.element}: manual {g.manual_value:.8g}, autodiff {g.reference_value:.8g}"
            )
        failed_transforms = [t for t in self.transforms if t.passed is False]
        if failed_transforms and any(not g.passed for g in self.grads):
            names = ", ".join(dict.fromkeys(t.name for t in failed_transforms))
            lines.append(f"  FAIL {names}: these compare against autodiff too; fix the gradient first")
        else:
            for t in failed_transforms:
                err = "" if t.error is None else f" error {t.error:.2e} > {t.tolerance:.0e}"
                note = f" ({t.note})" if t.note else ""
                lines.append(f"  FAIL {t.name} ({t.dtype}, {TRANSFORMS.get(t.name, '')}):{err}{note}")
        if self.derivation:
            failing = sorted({g.arg for g in self.grads if not g.passed})
            for arg in failing:
                hits = equation_lines(self.derivation, arg, self.layer)
                if hits:
                    lines.append(f"  the equations for d{arg}:")
                    lines += ["    " + ln.strip() for ln in hits]
            lines.append("  derivation to check:")
            lines += ["    " + ln for ln in self.derivation.splitlines()]
        return lines


def equation_lines(derivation: str, arg: str, layer: str = "") -> list[str]:
    """The lines of a derivation that mention ``d<arg>`` (``dx``, ``dgamma``), where the math is.

    Where the derivation covers several layers (a module docstring) and one paragraph
    starts with ``<layer>:`` or ``<layer>,``, only that paragraph is searched.
    """
    pattern = re.compile(rf"(?<![A-Za-z0-9_])(d{re.escape(arg)}|d_{re.escape(arg)}|grad_{re.escape(arg)})\b")
    lines = derivation.splitlines()
    if layer:
        lines = _layer_paragraph(lines, layer) or lines
    return [ln for ln in lines if pattern.search(ln)]


def _layer_paragraph(lines: list[str], layer: str) -> list[str]:
    """From the line that starts with ``<layer>:`` to the next line as little indented that names another."""
    start = next((i for i, ln in enumerate(lines) if re.match(rf"\s*{re.escape(layer)}\s*[:,]", ln)), None)
    if start is None:
        return []
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines):
        ln = lines[end]
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent and re.match(r"\s*[A-Za-z_]\w*\s*[:,]", ln):
            break
        end += 1
    return lines[start:end]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "inf", "-inf", "nan": strict JSON has no literals for them
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


# ---------------------------------------------------------------- the checks


def _rel_err(manual: Any, reference: Any) -> tuple[float, float, tuple[int, ...]]:
    """Max abs error, norm-wise relative error and the index of the worst element (inf for nan)."""
    manual, reference = np.asarray(manual, np.float64), np.asarray(reference, np.float64)
    if manual.shape != reference.shape:
        raise ValueError(f"shapes differ: manual {manual.shape}, reference {reference.shape}")
    if manual.size == 0:
        return 0.0, 0.0, ()
    diff = np.abs(manual - reference)
    diff = np.where(np.isnan(diff), np.inf, diff)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = float(np.max(np.abs(reference)))
    abs_err = float(diff[idx])
    if abs_err == 0:
        rel = 0.0
    elif scale > 0 and math.isfinite(scale):
        rel = abs_err / scale
    else:
        rel = math.inf
    return abs_err, rel, tuple(int(i) for i in idx)


def _tree_err(a: Any, b: Any) -> float:
    """The worst :func:`_rel_err` over matching leaves; inf where the structures differ."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or any(np.shape(x) != np.shape(y) for x, y in zip(la, lb)):
        return math.inf
    return max((_rel_err(x, y)[1] for x, y in zip(la, lb)), default=0.0)


def _is_float(x: Any) -> bool:
    return x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _cast(x: Any, dtype: str) -> Any:
    return jnp.asarray(x, dtype=dtype) if _is_float(x) else x


def _unwrap(fn: Callable) -> Callable:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _param_names(fn: Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _arg_names(manual_fn: Callable, reference_fn: Callable, n: int) -> list[str]:
    """Argument names from the manual function's signature, else the reference's, else ``arg<i>``."""
    for fn in (manual_fn, reference_fn):
        names = _param_names(fn)
        if len(names) >= n:
            return names[:n]
    return [f"arg{i}" for i in range(n)]


def _substitute(args: tuple, argnums: tuple[int, ...], diff: Sequence[Any]) -> list:
    full = list(args)
    for i, v in zip(argnums, diff):
        full[i] = v
    return full


def _vjp_fn(fn: Callable, args: tuple, argnums: tuple[int, ...], with_output: bool = False) -> Callable:
    """``(diff_args, cotangent) -> grads`` (or ``(output, grads)``) with the other arguments closed over."""

    def vjp(diff_args, ct):
        out, pullback = jax.vjp(lambda *d: fn(*_substitute(args, argnums, d)), *diff_args)
        grads = pullback(ct)
        return (out, grads) if with_output else grads

    return vjp


def _cotangent_like(ct64: Any, out: Any) -> Any:
    """A float64 NumPy cotangent cast to the dtypes of ``out`` (float0 zeros for integer outputs)."""

    def leaf(c, o):
        if not jnp.issubdtype(o.dtype, jnp.inexact):
            return np.zeros(np.shape(c), dtype=jax.dtypes.float0)
        return jnp.asarray(c, dtype=o.dtype)

    return jax.tree.map(leaf, ct64, out)


def _pairing(out: Any, ct: Any) -> Any:
    """``<out, ct>`` summed over the floating leaves."""
    terms = [jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(ct)) if _is_float(o)]
    return sum(terms) if terms else jnp.zeros(())


def _pairing_fn(reference_fn: Callable, args64: tuple, argnums: tuple[int, ...]) -> Callable:
    """``(diff_args, ct) -> <reference_fn(args), ct>``, compiled once (call it with x64 on)."""
    return jax.jit(lambda diff, ct: _pairing(reference_fn(*_substitute(args64, argnums, diff)), ct))


def _finite_differences(pairing, diff, ct64, directions) -> list[list[float]]:
    """Central differences of ``pairing(diff, ct)`` along each direction of each argument, in float64.

    ``diff`` are the inputs under test rounded to their dtype; they are evaluated in
    float64 so the differences are limited by the step, not by the dtype.
    """
    with jax.enable_x64(True):
        diff = [np.asarray(d, np.float64) for d in diff]
        values = []
        for k, x in enumerate(diff):
            h = FD_STEP * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)

            def s(xk, k=k):
                moved = list(diff)
                moved[k] = xk
                return float(pairing(tuple(moved), ct64))

            values.append([(s(x + h * v) - s(x - h * v)) / (2 * h) for v in directions[k]])
    return values


def _fd_error(g_man, g_ref, directions, fd_values) -> float:
    """Worst ``|fd(v) - <g_man, v>| / (max(|g_man|, |g_ref|) |v| / sqrt(n))`` over the directions.

    For a random unit ``v``, ``<e, v>`` is about ``|e| / sqrt(n)``, so the ratio is
    about ``|g_man - g_true| / |g|``: a relative error, not one diluted by ``sqrt(n)``.
    """
    g_man, g_ref = np.asarray(g_man, np.float64), np.asarray(g_ref, np.float64)
    scale = max(np.linalg.norm(g_man), np.linalg.norm(g_ref)) / math.sqrt(max(g_man.size, 1))
    worst = 0.0
    for v, fd in zip(directions, fd_values):
        err = abs(fd - float(np.vdot(g_man, v)))
        typical = scale * float(np.linalg.norm(v))
        worst = max(worst, err / typical if typical > 0 else err)
    return worst if math.isfinite(worst) else math.inf


def _guard(name: str, dtype: str, tol: float, check: Callable[[], TransformCheck]) -> TransformCheck:
    """Run one transform check; an exception becomes a failed check that says what was raised."""
    try:
        return check()
    except Exception as e:  # noqa: BLE001 - report, do not crash
        return TransformCheck(name, dtype, None, tol, False, f"raised {type(e).__name__}: {first_line(e)}")


@dataclass(frozen=True)
class _Problem:
    """What every dtype's checks share: the pair, the float64 inputs and the random probes."""

    manual_fn: Callable
    reference_fn: Callable
    args64: tuple  # the example arguments, floating ones as float64
    argnums: tuple[int, ...]
    names: list[str]  # of the differentiated arguments
    cts64: list  # cotangents: float64 NumPy trees shaped like the output
    directions: list | None  # finite-difference directions per differentiated argument (None: no FD)
    pairing: Callable | None  # (diff_args, ct) -> <reference_fn(args), ct>, for the finite differences
    transforms: bool


def _check_dtype(
    p: _Problem, dtype: str, tol: float, tol_src: str, fd_tol: float, rng: np.random.Generator
) -> tuple[list[GradCheck], list[TransformCheck]]:
    """Every check of one dtype: the gradients per argument, then the transforms."""
    manual_fn, reference_fn, argnums, names, cts64, directions = (
        p.manual_fn,
        p.reference_fn,
        p.argnums,
        p.names,
        p.cts64,
        p.directions,
    )
    args = tuple(_cast(a, dtype) for a in p.args64)
    diff_args = tuple(args[i] for i in argnums)
    out_shape = jax.eval_shape(lambda *d: reference_fn(*_substitute(args, argnums, d)), *diff_args)
    cts = [_cotangent_like(c, out_shape) for c in cts64]

    # The VJPs, compiled once each and pulled back along every cotangent.
    vjp_man = jax.jit(_vjp_fn(manual_fn, args, argnums, with_output=True))
    vjp_ref = jax.jit(_vjp_fn(reference_fn, args, argnums, with_output=True))
    results = [(vjp_man(diff_args, ct)[1], vjp_ref(diff_args, ct)[1]) for ct in cts]
    # Op by op (no jit, so no fusion differences): the primal and the fwd rule's output
    # against the reference forward, and the manual VJP that the jit check compares.
    eager: dict[str, Any] = {}
    checks = [
        _guard(
            "forward",
            dtype,
            tol,
            lambda: _check_forward(manual_fn, reference_fn, args, argnums, cts[0], eager, dtype, tol),
        )
    ]

    fd_values = None
    if directions is not None:
        fd_values = _finite_differences(p.pairing, diff_args, cts64[0], directions)

    grads: list[GradCheck] = []
    for k, name in enumerate(names):
        worst = None
        for g_man, g_ref in results:
            abs_err, rel, idx = _rel_err(g_man[k], g_ref[k])
            if worst is None or rel > worst[1]:
                worst = (abs_err, rel, idx, np.asarray(g_man[k])[idx], np.asarray(g_ref[k])[idx])
        abs_err, rel, idx, mv, rv = worst
        g = GradCheck(name, dtype, abs_err, rel, idx, float(mv), float(rv), tol, tol_src, shape=np.shape(g_man[k]))
        if fd_values is not None:
            g.fd_rel_err = _fd_error(results[0][0][k], results[0][1][k], directions[k], fd_values[k])
            g.fd_tolerance = fd_tol
        grads.append(g)

    if p.transforms:
        ct, (jit_man, ref_grads) = cts[0], results[0]
        checks += [
            _guard(
                "jit",
                dtype,
                tol,
                lambda: _check_jit(
                    manual_fn, args, argnums, diff_args, ct, eager.get("grads"), jit_man, ref_grads, dtype, tol
                ),
            ),
            _guard(
                "vmap", dtype, tol, lambda: _check_vmap(manual_fn, vjp_ref, args, argnums, out_shape, dtype, rng, tol)
            ),
            _guard(
                "grad_of_grad",
                dtype,
                tol,
                lambda: _check_grad_of_grad(manual_fn, reference_fn, args, argnums, ct, dtype, rng, tol),
            ),
            _guard(
                "forward_mode",
                dtype,
                tol,
                lambda: _check_forward_mode(manual_fn, reference_fn, args, argnums, dtype, rng, tol),
            ),
        ]
    return grads, checks


def _check_forward(manual_fn, reference_fn, args, argnums, ct, eager, dtype, tol) -> TransformCheck:
    """The manual primal and its fwd rule's output (inside ``jax.vjp``) against the reference forward.

    Op by op, so identical computations give identical bits; keeps the eager manual
    VJP in ``eager["grads"]`` for the jit check.
    """
    out_ref = reference_fn(*args)
    out_fwd, eager["grads"] = _vjp_fn(manual_fn, args, argnums, with_output=True)(tuple(args[i] for i in argnums), ct)
    err = max(_tree_err(manual_fn(*args), out_ref), _tree_err(out_fwd, out_ref))
    return TransformCheck("forward", dtype, err, tol, err <= tol, "primal and fwd rule vs reference")


def _check_jit(
    manual_fn, args, argnums, diff_args, ct, eager_grads, jit_grads, ref_grads, dtype, tol
) -> TransformCheck:
    """The manual VJP op by op and under ``jax.jit`` against autodiff."""
    if eager_grads is None:
        eager_grads = _vjp_fn(manual_fn, args, argnums)(diff_args, ct)
    err = max(_tree_err(eager_grads, ref_grads), _tree_err(jit_grads, ref_grads))
    return TransformCheck("jit", dtype, err, tol, err <= tol, "manual VJP op by op and jit-compiled vs autodiff")


def _check_vmap(manual_fn, vjp_ref, args, argnums, out, dtype, rng, tol, batch: int = 3) -> TransformCheck:
    """Per-example VJPs of a batch under ``vmap`` against a Python loop over the examples.

    The batch stacks the example arguments scaled by 1, 1.25, 1.5, ... (scaling keeps
    ties and zeros where they were); non-differentiable arguments are shared.
    """
    diff = [args[i] for i in argnums]
    stacked = [jnp.stack([a * (1 + 0.25 * b) for b in range(batch)]) for a in diff]
    cts64 = jax.tree.map(lambda o: rng.standard_normal((batch, *o.shape)), out)
    cts = _cotangent_like(cts64, out)

    batched = jax.jit(jax.vmap(_vjp_fn(manual_fn, args, argnums)))(stacked, cts)
    loop = [vjp_ref(tuple(s[b] for s in stacked), jax.tree.map(lambda c, b=b: c[b], cts))[1] for b in range(batch)]
    loop = jax.tree.map(lambda *xs: jnp.stack(xs), *loop)
    err = _tree_err(batched, loop)
    return TransformCheck("vmap", dtype, err, tol, err <= tol, f"vmap over {batch} examples vs a loop")


def _check_grad_of_grad(manual_fn, reference_fn, args, argnums, ct, dtype, rng, tol) -> TransformCheck:
    """The gradient of ``<VJP(args, ct), u>`` with respect to the arguments, manual vs reference."""
    diff = tuple(args[i] for i in argnums)
    us = [jnp.asarray(rng.standard_normal(np.shape(d)), dtype) for d in diff]

    def second(fn):
        vjp = _vjp_fn(fn, args, argnums)
        return jax.jit(jax.grad(lambda d: sum(jnp.vdot(g, u) for g, u in zip(vjp(d, ct), us))))

    err = _tree_err(second(manual_fn)(diff), second(reference_fn)(diff))
    return TransformCheck("grad_of_grad", dtype, err, tol, err <= tol)


KNOWN_LIMITATION_FORWARD_MODE = "not supported by jax.custom_vjp (known limitation)"


def _check_forward_mode(manual_fn, reference_fn, args, argnums, dtype, rng, tol) -> TransformCheck:
    """``jax.jvp`` of the manual function against the reference's; custom_vjp cannot, by design."""
    diff = tuple(args[i] for i in argnums)
    tangents = tuple(jnp.asarray(rng.standard_normal(np.shape(d)), dtype) for d in diff)

    def jvp(fn):
        return jax.jvp(lambda *d: fn(*_substitute(args, argnums, d)), diff, tangents)[1]

    try:
        t_man = jvp(manual_fn)
    except TypeError as e:
        if "custom_vjp" in str(e) or "forward-mode" in str(e):
            return TransformCheck("forward_mode", dtype, None, None, None, KNOWN_LIMITATION_FORWARD_MODE)
        raise
    err = _tree_err(t_man, jvp(reference_fn))
    return TransformCheck("forward_mode", dtype, err, tol, err <= tol)


def _tolerance_for(dtype: str, rtol: Any, precision: str) -> tuple[float, str]:
    if isinstance(rtol, dict) and dtype in rtol:
        given = rtol[dtype]
        return (float(given[0]), str(given[1])) if isinstance(given, tuple) else (float(given), "rtol argument")
    if isinstance(rtol, (int, float)) and not isinstance(rtol, bool):
        return float(rtol), "rtol argument"
    return default_tolerance(dtype, precision)


def verify_vjp(
    manual_fn: Callable,
    reference_fn: Callable,
    *example_args: Any,
    argnums: int | Sequence[int] | None = None,
    dtypes: Sequence[str] = ("float64", "float32"),
    seed: int = 0,
    num_cotangents: int = 3,
    rtol: float | dict[str, float | tuple[float, str]] | None = None,
    fd: bool = True,
    transforms: bool = True,
    matmul_precision: str | None = "highest",
    name: str | None = None,
    derivation: str | None = None,
) -> Report:
    """Compare the VJP of ``manual_fn`` with autodiff of ``reference_fn`` and with finite differences.

    Args:
      manual_fn: the function with a hand-derived backward (usually ``jax.custom_vjp``).
      reference_fn: the same forward in plain JAX; its gradient comes from autodiff.
      *example_args: positional arguments for both; floating arrays are cast to each
        dtype, everything else (integer labels, PRNG keys, None, Python numbers) is
        passed through unchanged.
      argnums: the differentiable positions, each an array (default: every floating-point array).
      dtypes: the dtypes to check in; float64 runs with ``jax_enable_x64`` switched on.
      seed: seeds the cotangents, finite-difference directions, vmap batch and
        second-order probes, so a report is reproducible.
      num_cotangents: random cotangents per dtype; the worst is reported.
      rtol: a tolerance for every dtype, or a ``{dtype: tol}`` dict (``tol`` may be a
        ``(tol, where_it_comes_from)`` pair); default :func:`default_tolerance`.
      fd: also check against central finite differences (turn off where the inputs
        sit on a kink on purpose: ties of a max, ReLU at 0).
      transforms: also check jit, vmap, grad-of-grad and forward mode.
      matmul_precision: ``jax.default_matmul_precision`` in force during the checks;
        None keeps whatever is configured (and records it).
      name: label of the report (default the manual function's ``__name__``).
      derivation: the math to show on failure (default the manual function's docstring).

    Returns:
      A :class:`Report`; ``report.passed`` says whether every check is within tolerance.
      Exceptions raised by either function are recorded in ``report.errors`` (and fail it).
    """
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(example_args) if _is_float(a))
        if not argnums:
            raise ValueError("verify_vjp: no floating-point array argument to differentiate; pass argnums")
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    for i in argnums:
        if not 0 <= i < len(example_args):
            raise ValueError(f"verify_vjp: argnum {i} is out of range for {len(example_args)} arguments")
        if not _is_float(example_args[i]):
            raise ValueError(f"verify_vjp: argument {i} is not a floating-point array and cannot be differentiated")
    if num_cotangents < 1:
        raise ValueError("verify_vjp: num_cotangents must be >= 1")
    all_names = _arg_names(manual_fn, reference_fn, len(example_args))
    names = [all_names[i] for i in argnums]
    precision = matmul_precision or jax.config.jax_default_matmul_precision or "default"
    if derivation is None:
        derivation = inspect.getdoc(_unwrap(manual_fn)) or ""
    report = Report(
        name=name or getattr(_unwrap(manual_fn), "__name__", "function"),
        matmul_precision=precision,
        backend=jax.default_backend(),
        derivation=derivation.strip(),
        seed=seed,
    )

    # A stream of its own: the registry draws the example inputs from default_rng(seed), and a
    # cotangent equal to an input (dy = x) makes some gradients vanish (batch norm's dx).
    rng = np.random.default_rng([seed, 1])
    with jax.enable_x64(True):
        args64 = tuple(_cast(a, "float64") for a in example_args)
        try:
            out = jax.eval_shape(
                lambda *d: reference_fn(*_substitute(args64, argnums, d)), *(args64[i] for i in argnums)
            )
        except Exception as e:  # noqa: BLE001 - report, do not crash
            report.errors.append(f"reference_fn raised {type(e).__name__}: {first_line(e)}")
            return report
    # The same cotangents and finite-difference directions in every dtype.
    cts64 = [jax.tree.map(lambda o: rng.standard_normal(o.shape), out) for _ in range(num_cotangents)]
    directions = None
    if fd:
        directions = []
        for i in argnums:
            vs = [rng.standard_normal(np.shape(example_args[i])) for _ in range(FD_DIRECTIONS)]
            directions.append([v / (np.linalg.norm(v) or 1.0) for v in vs])
    problem = _Problem(
        manual_fn,
        reference_fn,
        args64,
        argnums,
        names,
        cts64,
        directions,
        _pairing_fn(reference_fn, args64, argnums) if fd else None,
        transforms,
    )

    for dtype in dtypes:
        dtype = str(jnp.dtype(dtype))
        tol, src = _tolerance_for(dtype, rtol, precision)
        fd_tol = FD_TOLERANCE if dtype == "float64" else max(FD_TOLERANCE, tol)
        context = jax.default_matmul_precision(matmul_precision) if matmul_precision else contextlib.nullcontext()
        try:
            with jax.enable_x64(dtype == "float64"), context:
                grads, checks = _check_dtype(problem, dtype, tol, src, fd_tol, rng)
        except Exception as e:  # noqa: BLE001 - report, do not crash
            report.errors.append(f"{dtype}: {type(e).__name__}: {first_line(e)}")
            continue
        report.grads += grads
        report.transforms += checks
    return report


# ---------------------------------------------------------------- the registry


def layer_tolerances(spec, matmul_precision: str | None = "highest") -> dict[str, tuple[float, str]]:
    """The float32 tolerance of a registered layer: its ``rtol_float32``, loosened at reduced precision."""
    precision = matmul_precision or jax.config.jax_default_matmul_precision or "default"
    tol32 = (spec.rtol_float32, f"registry rtol_float32 of {spec.name}")
    default32 = default_tolerance("float32", precision)
    if precision not in _FULL_PRECISION and default32[0] > tol32[0]:
        tol32 = default32
    return {"float32": tol32}


def verify_layer(spec, case, *, dtypes: Sequence[str] = ("float64", "float32"), seed: int = 0, **kwargs) -> Report:
    """:func:`verify_vjp` for one registry case, with the layer's own float32 tolerance."""
    kwargs.setdefault("rtol", layer_tolerances(spec, kwargs.get("matmul_precision", "highest")))
    kwargs.setdefault("fd", case.smooth)
    kwargs.setdefault("name", f"{spec.name}[{case.name}]")
    kwargs.setdefault("derivation", spec.doc)
    with jax.enable_x64(True):  # example inputs are float64 until cast
        args = case.args(seed)
    report = verify_vjp(
        functools.partial(spec.manual, **case.kwargs),
        functools.partial(spec.reference, **case.kwargs),
        *args,
        argnums=case.argnums,
        dtypes=dtypes,
        seed=seed,
        **kwargs,
    )
    report.layer, report.config = spec.name, case.name
    return report


def check_registry(
    layers: Iterable[str] | None = None,
    *,
    dtypes: Sequence[str] = ("float64", "float32"),
    seed: int = 0,
    matmul_precision: str | None = "highest",
    progress: bool = False,
) -> list[Report]:
    """:func:`verify_layer` for every configuration of the named layers (default: all registered).

    Unknown names raise ``KeyError`` listing the registered ones. ``progress`` shows
    a tqdm bar on stderr. A configuration whose check raises is a failed report
    (``report.errors``), and the others still run.
    """
    from jaxbp import registry

    specs = list(registry.REGISTRY.values()) if layers is None else [registry.get(n) for n in dict.fromkeys(layers)]
    jobs = [(spec, case) for spec in specs for case in spec.cases]
    reports = []
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(jobs, desc="jaxbp check", unit="config", file=sys.stderr, leave=False)
    else:
        bar = jobs
    for spec, case in bar:
        if progress:
            bar.set_postfix_str(f"{spec.name}[{case.name}]")
        try:
            report = verify_layer(spec, case, dtypes=dtypes, seed=seed, matmul_precision=matmul_precision)
        except Exception as e:  # noqa: BLE001 - one broken layer must not hide the others
            report = Report(
                f"{spec.name}[{case.name}]",
                matmul_precision=matmul_precision or "default",
                backend=jax.default_backend(),
                derivation=spec.doc,
                seed=seed,
                layer=spec.name,
                config=case.name,
                errors=[f"{type(e).__name__}: {first_line(e)}"],
            )
        reports.append(report)
    return reports


# ------------------------------------------------------------------ summaries

_TRANSFORM_COLUMNS = (
    ("forward", "fwd"),
    ("jit", "jit"),
    ("vmap", "vmap"),
    ("grad_of_grad", "g(g)"),
    ("forward_mode", "jvp"),
)


def _worst(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def summary_rows(reports: Sequence[Report], dtypes: Sequence[str] = ("float64", "float32")) -> list[dict]:
    """One dict per report: the worst errors per dtype, the transform states, the verdict."""
    rows = []
    for r in reports:
        row: dict[str, Any] = {"layer": r.layer or r.name, "config": r.config, "passed": r.passed}
        for d in dtypes:
            gs = [g for g in r.grads if g.dtype == d]
            row[f"{d}_vs_autodiff"] = _worst(g.max_rel_err for g in gs)
            row[f"{d}_vs_fd"] = _worst(g.fd_rel_err for g in gs)
            row[f"{d}_tolerance"] = _worst(g.tolerance for g in gs)
        for name, _ in _TRANSFORM_COLUMNS:
            states = [t.passed for t in r.transforms if t.name == name]
            if not states:
                row[name] = "-"
            elif False in states:
                row[name] = "FAIL"
            else:
                row[name] = "n/a" if all(s is None for s in states) else "ok"
        rows.append(row)
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def format_table(reports: Sequence[Report], dtypes: Sequence[str] = ("float64", "float32")) -> str:
    """A terminal table, one row per layer and configuration; the failures explained below it."""
    rows = summary_rows(reports, dtypes)
    short = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
    num_cols = [
        (f"{d}_vs_{k}", f"{short.get(d, d)} vs {h}") for d in dtypes for k, h in (("autodiff", "AD"), ("fd", "FD"))
    ]
    lw = max([5, *(len(r["layer"]) for r in rows)])
    cw = max([6, *(len(r["config"]) for r in rows)])
    header = f"{'layer':<{lw}}  {'config':<{cw}}  " + "  ".join(f"{h:>10}" for _, h in num_cols)
    header += "  " + " ".join(f"{h:>4}" for _, h in _TRANSFORM_COLUMNS) + "  result"
    lines = [header, "-" * len(header)]
    previous = None
    for row in rows:
        layer = row["layer"] if row["layer"] != previous else ""
        previous = row["layer"]
        line = f"{layer:<{lw}}  {row['config']:<{cw}}  " + "  ".join(f"{_fmt(row[k]):>10}" for k, _ in num_cols)
        line += "  " + " ".join(f"{row[k]:>4}" for k, _ in _TRANSFORM_COLUMNS)
        lines.append(line + ("  PASS" if row["passed"] else "  FAIL"))
    failed = [r for r in reports if not r.passed]
    tols = sorted({(g.dtype, g.tolerance) for r in reports for g in r.grads})
    lines.append("-" * len(header))
    lines += [
        f"{len(reports) - len(failed)}/{len(reports)} configurations pass. Worst over arguments and cotangents.",
        "vs AD: max|manual - autodiff| / max|autodiff|, tolerance "
        + ", ".join(f"{d} {t:.0e}" for d, t in tols)
        + " (float32: the layer's rtol_float32).",
        (
            f"vs FD: directional derivatives vs float64 central differences, tolerance {FD_TOLERANCE:.0e} "
            "(or the dtype's, if looser); '-' where the inputs sit on a kink on purpose."
        ),
        (
            "fwd/jit/vmap/g(g): forward equality, jit, vmap per example, grad-of-grad; "
            "jvp n/a: jax.custom_vjp has no forward mode (a known limitation)."
        ),
    ]
    for r in failed:
        lines += ["", str(r)]
    return "\n".join(lines)


def per_layer_rows(rows: Sequence[dict], dtypes: Sequence[str] = ("float64", "float32")) -> list[dict]:
    """:func:`summary_rows` merged per layer: the worst error of its configurations, the worst transform state."""
    merged: dict[str, dict] = {}
    for row in rows:
        m = merged.setdefault(row["layer"], {"layer": row["layer"], "config": 0, "passed": True})
        m["config"] += 1
        m["passed"] = m["passed"] and row["passed"]
        for d in dtypes:
            for k in (f"{d}_vs_autodiff", f"{d}_vs_fd"):
                m[k] = _worst([m.get(k), row[k]])
        for name, _ in _TRANSFORM_COLUMNS:
            m.setdefault(f"_{name}", set()).add(row[name])
    for m in merged.values():
        for name, _ in _TRANSFORM_COLUMNS:
            states = m.pop(f"_{name}")
            m[name] = "FAIL" if "FAIL" in states else ", ".join(s for s in ("ok", "n/a", "-") if s in states)
    return list(merged.values())


def format_markdown(
    reports: Sequence[Report], dtypes: Sequence[str] = ("float64", "float32"), *, per_layer: bool = False
) -> str:
    """The summary table in Markdown: one row per configuration, or per layer (worst of its configurations)."""
    rows = summary_rows(reports, dtypes)
    cols = [("layer", "layer"), ("config", "configs" if per_layer else "config")]
    if per_layer:
        rows = per_layer_rows(rows, dtypes)
    cols += [(f"{d}_vs_{k}", f"{d} vs {h}") for d in dtypes for k, h in (("autodiff", "autodiff"), ("fd", "FD"))]
    cols += [(k, h) for k, h in _TRANSFORM_COLUMNS] + [("passed", "result")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        cells = []
        for k, _ in cols:
            v = row[k]
            if k == "passed":
                cells.append("pass" if v else "**FAIL**")
            elif k.endswith(("_vs_autodiff", "_vs_fd")):
                cells.append(_fmt(v))
            else:
                cells.append(f"`{v}`" if k == "layer" else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reports_to_dict(reports: Sequence[Report], dtypes: Sequence[str] = ("float64", "float32"), **meta: Any) -> dict:
    """The JSON record of a run of checks: metadata, the summary rows and every full report.

    The derivations (the math shown on failure) are listed once, under ``derivations``
    keyed by the report's layer (or name), rather than repeated in every report.
    """
    derivations, full = {}, []
    for r in reports:
        d = r.to_dict()
        derivations.setdefault(r.layer or r.name, d.pop("derivation"))
        full.append(d)
    return _json_safe(
        {
            "passed": all(r.passed for r in reports),
            "num_reports": len(reports),
            "num_failed": sum(not r.passed for r in reports),
            "dtypes": list(dtypes),
            "backend": jax.default_backend(),
            "jax_version": jax.__version__,
            **meta,
            "summary": summary_rows(reports, dtypes),
            "derivations": derivations,
            "reports": full,
        }
    )


# ------------------------------------------------------- a user's own function


class TargetError(LoadError):
    """A ``module:function`` spec or a shape that cannot be used (the CLI exits with status 2)."""


def load_function(spec: str, *, search_cwd: bool = True) -> Callable:
    """:func:`jaxbp.loading.load_function`, its errors raised as :class:`TargetError`."""
    try:
        return loading.load_function(spec, search_cwd=search_cwd)
    except TargetError:
        raise
    except LoadError as e:
        raise TargetError(str(e)) from e


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,4"`` -> ``(3, 4)``; ``"7"`` -> ``(7,)``; ``""`` or ``"()"`` -> a scalar. Raises :class:`TargetError`."""
    body = text.strip().strip("()[]").strip()
    if not body:
        return ()
    parts = [p.strip() for p in body.replace("x", ",").split(",")]
    if parts and parts[-1] == "":  # "3," is the 1-tuple (3,)
        parts = parts[:-1]
    if not parts or not all(p.isdigit() for p in parts):
        raise TargetError(f"malformed shape {text!r}: expected non-negative integers separated by commas, e.g. 3,4")
    return tuple(int(p) for p in parts)


def example_inputs(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded standard-normal float64 arrays of the given shapes."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape) for shape in shapes)


def check_target(
    target: str | Callable,
    reference: str | Callable,
    shapes: Sequence[str | tuple[int, ...]],
    *,
    argnums: Sequence[int] | None = None,
    dtypes: Sequence[str] = ("float64", "float32"),
    seed: int = 0,
    matmul_precision: str | None = "highest",
) -> Report:
    """:func:`verify_vjp` of a user's pair on random float64 inputs of the given shapes (``jaxbp check --target``)."""
    manual_fn = load_function(target) if isinstance(target, str) else target
    reference_fn = load_function(reference) if isinstance(reference, str) else reference
    shapes = [parse_shape(s) if isinstance(s, str) else tuple(s) for s in shapes]
    if not shapes:
        raise TargetError("give the shape of every argument, e.g. --shapes 3,4 4,2")
    if argnums is not None:
        bad = [i for i in argnums if not 0 <= i < len(shapes)]
        if bad:
            raise TargetError(f"argnums {bad} out of range for {len(shapes)} argument(s)")
    args = example_inputs(shapes, seed)
    for spec, fn in ((target, manual_fn), (reference, reference_fn)):
        try:
            inspect.signature(fn).bind(*args)
        except TypeError as e:
            label = spec if isinstance(spec, str) else getattr(fn, "__name__", "function")
            raise TargetError(f"{label} cannot take the {len(args)} argument(s) given by --shapes: {e}") from e
        except ValueError:  # no signature to check (a builtin): let the call decide
            pass
    name = target if isinstance(target, str) else getattr(_unwrap(target), "__name__", "function")
    return verify_vjp(
        manual_fn,
        reference_fn,
        *args,
        argnums=None if argnums is None else tuple(argnums),
        dtypes=dtypes,
        seed=seed,
        matmul_precision=matmul_precision,
        name=name,
    )


def write_json(path: str, reports: Sequence[Report], dtypes: Sequence[str] = ("float64", "float32"), **meta: Any):
    """Write :func:`reports_to_dict` to ``path`` (parents created); returns the path."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reports_to_dict(reports, dtypes, **meta), indent=2) + "\n", encoding="utf-8")
    return path
