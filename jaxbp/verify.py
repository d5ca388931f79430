"""Verify a hand-derived VJP against ``jax.grad`` and central finite differences.

:func:`verify_vjp` takes a function with a custom backward (``manual_fn``) and a
plain-JAX twin (``reference_fn``) and returns a :class:`Report`:

* per differentiable argument and dtype, the VJP of ``manual_fn`` against the VJP
  that ``jax.grad`` derives from ``reference_fn``, for several random cotangents:
  the max absolute and relative error, the worst element with both values, and
  (float64, smooth inputs) the error against central finite differences;
* the transforms: forward equality, ``jit``, ``vmap`` (per-example VJPs of a batch
  against a Python loop), grad-of-grad, and forward mode (which ``custom_vjp``
  functions do not support: reported as a known limitation, not a failure).

Errors are norm-wise: ``max|manual - ref| / max|ref|``, so a tolerance reads as
"digits that agree relative to the largest entry" and near-zero entries do not
blow it up. The tolerance comes from the dtype and the matmul precision in force
(see :func:`default_tolerance`), and the report says which.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Norm-wise relative tolerances at "highest" matmul precision.
_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}
# TF32 (GPU) and bf16-pass (TPU) matmuls keep about 10 mantissa bits.
_REDUCED_PRECISION_TOLERANCE = 2e-2
FD_TOLERANCE = 1e-6
FD_STEP = 1e-6


def default_tolerance(dtype: str, matmul_precision: str = "highest") -> tuple[float, str]:
    """The relative tolerance for ``dtype`` and where it comes from."""
    if dtype not in _TOLERANCE:
        raise ValueError(f"no default tolerance for dtype {dtype!r}; known: {', '.join(_TOLERANCE)}")
    if dtype == "float32" and matmul_precision not in ("highest", "float32"):
        backend = jax.default_backend()
        if backend != "cpu":
            return _REDUCED_PRECISION_TOLERANCE, (
                f"float32 with matmul precision {matmul_precision!r} on {backend} (TF32/bf16 passes)"
            )
    return _TOLERANCE[dtype], f"default for {dtype} at matmul precision {matmul_precision!r}"


# ------------------------------------------------------------------ the report


@dataclass
class GradCheck:
    """One differentiable argument at one dtype."""

    arg: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...]
    manual_value: float
    reference_value: float
    tolerance: float
    tolerance_source: str
    fd_rel_err: float | None = None  # None where finite differences were not run
    fd_tolerance: float | None = None

    @property
    def ratio(self) -> float:
        """Error over tolerance: below 1 passes."""
        return self.max_rel_err / self.tolerance

    @property
    def passed(self) -> bool:
        fd_ok = self.fd_rel_err is None or self.fd_rel_err <= self.fd_tolerance
        return bool(self.max_rel_err <= self.tolerance and fd_ok)


@dataclass
class TransformCheck:
    """A transform of the manual function (jit, vmap, ...) against the reference."""

    name: str
    dtype: str
    error: float | None
    tolerance: float | None
    passed: bool | None  # None: not applicable or a known limitation (see note)
    note: str = ""


@dataclass
class Report:
    name: str
    grads: list[GradCheck] = field(default_factory=list)
    transforms: list[TransformCheck] = field(default_factory=list)
    matmul_precision: str = "highest"
    backend: str = ""
    derivation: str = ""

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.grads) and all(t.passed is not False for t in self.transforms)

    @property
    def failures(self) -> list[GradCheck | TransformCheck]:
        return [g for g in self.grads if not g.passed] + [t for t in self.transforms if t.passed is False]

    def worst(self, dtype: str | None = None) -> GradCheck | None:
        """The gradient check with the largest error/tolerance ratio (of one dtype, if given)."""
        rows = [g for g in self.grads if dtype is None or g.dtype == dtype]
        return max(rows, key=lambda g: g.ratio, default=None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for g, row in zip(self.grads, d["grads"]):
            row["ratio"], row["passed"] = g.ratio, g.passed
        d["passed"] = self.passed
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"{self.name}: {status}  (backend {self.backend}, matmul precision {self.matmul_precision})"]
        header = f"  {'arg':<10} {'dtype':<8} {'rel err':>9} {'tol':>8} {'ratio':>7} {'fd err':>9}  worst element"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for g in self.grads:
            fd = "-" if g.fd_rel_err is None else f"{g.fd_rel_err:.1e}"
            mark = "" if g.passed else "  <-- FAIL"
            lines.append(
                f"  {g.arg:<10} {g.dtype:<8} {g.max_rel_err:9.1e} {g.tolerance:8.0e} {g.ratio:7.2f} {fd:>9}  "
                f"{list(g.worst_index)}: manual {g.manual_value:.6g}, autodiff {g.reference_value:.6g}{mark}"
            )
        for t in self.transforms:
            state = {True: "ok", False: "FAIL", None: "n/a"}[t.passed]
            err = "" if t.error is None else f" err {t.error:.1e}"
            note = f" ({t.note})" if t.note else ""
            lines.append(f"  {t.name:<13} {t.dtype:<8} {state}{err}{note}")
        if not self.passed and self.derivation:
            lines += ["  derivation to check:"] + ["    " + ln for ln in self.derivation.splitlines()]
        return "\n".join(lines)


# ---------------------------------------------------------------- the checks


def _rel_err(manual: np.ndarray, reference: np.ndarray) -> tuple[float, float, tuple[int, ...]]:
    """Max abs error, norm-wise relative error and the index of the worst element."""
    manual, reference = np.asarray(manual, np.float64), np.asarray(reference, np.float64)
    if manual.shape != reference.shape:
        raise ValueError(f"gradient shapes differ: manual {manual.shape}, reference {reference.shape}")
    if manual.size == 0:
        return 0.0, 0.0, ()
    diff = np.abs(manual - reference)
    if not np.all(np.isfinite(diff)):
        diff = np.where(np.isfinite(diff), diff, np.inf)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = float(np.max(np.abs(reference)))
    abs_err = float(diff[idx])
    rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else np.inf)
    return abs_err, rel, tuple(int(i) for i in idx)


def _tree_err(a: Any, b: Any) -> float:
    errs = [_rel_err(x, y)[1] for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(errs, default=0.0)


def _cast(x: Any, dtype: str) -> Any:
    if x is None or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return jnp.asarray(x, dtype=dtype)


def _arg_names(fn: Callable, n: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) and not params[i].startswith("*") else f"arg{i}" for i in range(n)]


def _is_float(x: Any) -> bool:
    return x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _vjp_fn(fn: Callable, args: tuple, argnums: tuple[int, ...]) -> Callable:
    """``(diff_args, cotangent) -> grads`` with the other arguments closed over."""

    def vjp(diff_args, ct):
        def f(*d):
            full = list(args)
            for i, v in zip(argnums, d):
                full[i] = v
            return fn(*full)

        _, pullback = jax.vjp(f, *diff_args)
        return pullback(ct)

    return vjp


def _random_like(rng: np.random.Generator, tree: Any, dtype: str) -> Any:
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), dtype=dtype), tree)


def _check_dtype(
    manual_fn, reference_fn, args, argnums, names, dtype, rng, tol, tol_src, num_cotangents, fd, transforms
) -> tuple[list[GradCheck], list[TransformCheck]]:
    args = tuple(_cast(a, dtype) for a in args)
    diff_args = tuple(args[i] for i in argnums)
    out_man = manual_fn(*args)
    out_ref = reference_fn(*args)
    grads: list[GradCheck] = []
    checks: list[TransformCheck] = []

    # Forward: the manual function must compute what the reference computes.
    fwd_err = _tree_err(out_man, out_ref)
    checks.append(TransformCheck("forward", dtype, fwd_err, tol, fwd_err <= tol))

    vjp_man = jax.jit(_vjp_fn(manual_fn, args, argnums))
    vjp_ref = jax.jit(_vjp_fn(reference_fn, args, argnums))
    cts = [_random_like(rng, out_ref, dtype) for _ in range(num_cotangents)]
    results = [(vjp_man(diff_args, ct), vjp_ref(diff_args, ct)) for ct in cts]

    for k, (i, name) in enumerate(zip(argnums, names)):
        worst = None
        for g_man, g_ref in results:
            abs_err, rel, idx = _rel_err(g_man[k], g_ref[k])
            if worst is None or rel > worst[1]:
                worst = (abs_err, rel, idx, np.asarray(g_man[k])[idx], np.asarray(g_ref[k])[idx])
        abs_err, rel, idx, mv, rv = worst
        grads.append(GradCheck(name, dtype, abs_err, rel, idx, float(mv), float(rv), tol, tol_src))

    if fd and dtype == "float64":
        for k, g in enumerate(grads):
            g.fd_rel_err, g.fd_tolerance = _finite_difference_err(manual_fn, args, argnums, k, cts[0], results[0][0], rng)

    if not transforms:
        return grads, checks

    # jit: the eager (op-by-op) manual VJP against the compiled one.
    eager = _vjp_fn(manual_fn, args, argnums)(diff_args, cts[0])
    err = _tree_err(eager, results[0][1])
    checks.append(TransformCheck("jit", dtype, err, tol, err <= tol, "eager manual vs jit reference"))
    checks.append(_check_vmap(manual_fn, reference_fn, args, argnums, dtype, rng, tol))
    checks.append(_check_grad_of_grad(manual_fn, reference_fn, args, argnums, cts[0], dtype, rng, tol))
    checks.append(_check_forward_mode(manual_fn, reference_fn, args, argnums, dtype, rng, tol))
    return grads, checks


def _finite_difference_err(fn, args, argnums, k, ct, grads, rng, num_directions: int = 2):
    """Central differences of ``<fn(args), ct>`` along random directions of argument ``k``.

    The error is ``|fd - <g, v>| / (|g| |v|)``: the directional derivative's error
    relative to its Cauchy-Schwarz bound, so it is scale-free.
    """
    i = argnums[k]
    g = np.asarray(grads[k], np.float64)

    def s(xi):
        full = list(args)
        full[i] = xi
        return float(sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(fn(*full)), jax.tree.leaves(ct))))

    x = np.asarray(args[i], np.float64)
    worst = 0.0
    for _ in range(num_directions):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v) or 1.0
        h = FD_STEP * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
        fd = (s(jnp.asarray(x + h * v)) - s(jnp.asarray(x - h * v))) / (2 * h)
        bound = float(np.linalg.norm(g) * np.linalg.norm(v))
        err = abs(fd - float(np.vdot(g, v)))
        worst = max(worst, err / bound if bound > 0 else err)
    return worst, FD_TOLERANCE


def _check_vmap(manual_fn, reference_fn, args, argnums, dtype, rng, tol, batch: int = 3) -> TransformCheck:
    """Per-example VJPs of a batch under ``vmap`` against a Python loop over the examples.

    The batch stacks the example arguments scaled by 1, 1.25, 1.5, ... (scaling keeps
    ties and zeros where they were); non-differentiable arguments are shared.
    """
    diff = [args[i] for i in argnums]
    stacked = [jnp.stack([a * (1 + 0.25 * b) for b in range(batch)]) for a in diff]
    out = reference_fn(*args)
    cts = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal((batch, *np.shape(o))), dtype), out)

    def per_example(fn):
        def one(d, ct):
            return _vjp_fn(fn, args, argnums)(d, ct)

        return one

    batched = jax.jit(jax.vmap(per_example(manual_fn)))(stacked, cts)
    loop_ref = [
        per_example(reference_fn)([s[b] for s in stacked], jax.tree.map(lambda c: c[b], cts)) for b in range(batch)
    ]
    loop_ref = jax.tree.map(lambda *xs: jnp.stack(xs), *loop_ref)
    err = _tree_err(batched, loop_ref)
    return TransformCheck("vmap", dtype, err, tol, err <= tol, f"vmap over {batch} examples vs a loop")


def _check_grad_of_grad(manual_fn, reference_fn, args, argnums, ct, dtype, rng, tol) -> TransformCheck:
    """The gradient of ``<VJP(args, ct), u>`` with respect to the arguments, manual vs reference."""
    diff = tuple(args[i] for i in argnums)
    us = [jnp.asarray(rng.standard_normal(np.shape(d)), dtype) for d in diff]

    def second(fn):
        vjp = _vjp_fn(fn, args, argnums)

        def scalar(d):
            return sum(jnp.vdot(g, u) for g, u in zip(vjp(d, ct), us))

        return jax.jit(jax.grad(scalar))

    try:
        g_man = second(manual_fn)(diff)
    except Exception as e:  # noqa: BLE001 - report, do not crash
        return TransformCheck("grad_of_grad", dtype, None, tol, False, f"raised {type(e).__name__}: {e}")
    g_ref = second(reference_fn)(diff)
    err = _tree_err(g_man, g_ref)
    return TransformCheck("grad_of_grad", dtype, err, tol, err <= tol)


def _check_forward_mode(manual_fn, reference_fn, args, argnums, dtype, rng, tol) -> TransformCheck:
    diff = tuple(args[i] for i in argnums)
    tangents = tuple(jnp.asarray(rng.standard_normal(np.shape(d)), dtype) for d in diff)

    def jvp(fn):
        def f(*d):
            full = list(args)
            for i, v in zip(argnums, d):
                full[i] = v
            return fn(*full)

        return jax.jvp(f, diff, tangents)[1]

    try:
        t_man = jvp(manual_fn)
    except TypeError as e:
        if "custom_vjp" in str(e) or "forward-mode" in str(e):
            return TransformCheck(
                "forward_mode", dtype, None, None, None, "not supported by jax.custom_vjp (known limitation)"
            )
        raise
    err = _tree_err(t_man, jvp(reference_fn))
    return TransformCheck("forward_mode", dtype, err, tol, err <= tol)


def verify_vjp(
    manual_fn: Callable,
    reference_fn: Callable,
    *example_args: Any,
    argnums: int | Sequence[int] | None = None,
    dtypes: Sequence[str] = ("float64", "float32"),
    seed: int = 0,
    num_cotangents: int = 3,
    rtol: float | dict[str, float] | None = None,
    fd: bool = True,
    transforms: bool = True,
    matmul_precision: str = "highest",
    name: str | None = None,
    derivation: str | None = None,
) -> Report:
    """Compare the VJP of ``manual_fn`` with ``jax.grad`` of ``reference_fn``.

    Args:
      manual_fn: the function with a hand-derived backward (usually ``jax.custom_vjp``).
      reference_fn: the same forward in plain JAX; its gradient comes from autodiff.
      *example_args: positional arguments for both; floating arrays are cast to each dtype.
      argnums: the differentiable positions (default: every floating-point array argument).
      dtypes: the dtypes to check in; float64 runs with ``jax_enable_x64`` switched on.
      seed: seeds the cotangents, finite-difference directions and vmap batch.
      num_cotangents: random cotangents per dtype; the worst is reported.
      rtol: a tolerance for every dtype, or a ``{dtype: tol}`` dict; default :func:`default_tolerance`.
      fd: also check float64 gradients against central finite differences (off at kinks).
      transforms: also check jit, vmap, grad-of-grad and forward mode.
      matmul_precision: ``jax.default_matmul_precision`` in force during the checks.
      name: label of the report (default ``manual_fn.__name__``).
      derivation: the math to show on failure (default ``manual_fn.__doc__``).
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
    names = [_arg_names(manual_fn, len(example_args))[i] for i in argnums]
    report = Report(
        name=name or getattr(manual_fn, "__name__", "function"),
        matmul_precision=matmul_precision,
        backend=jax.default_backend(),
        derivation=(derivation if derivation is not None else inspect.getdoc(manual_fn) or "").strip(),
    )
    rng = np.random.default_rng(seed)
    for dtype in dtypes:
        if isinstance(rtol, dict) and dtype in rtol:
            tol, src = rtol[dtype], "given"
        elif isinstance(rtol, (int, float)):
            tol, src = float(rtol), "given"
        else:
            tol, src = default_tolerance(dtype, matmul_precision)
        with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision(matmul_precision):
            grads, checks = _check_dtype(
                manual_fn, reference_fn, example_args, argnums, names, dtype, rng, tol, src, num_cotangents, fd,
                transforms,
            )
        report.grads += grads
        report.transforms += checks
    return report


def verify_layer(spec, case, *, dtypes: Sequence[str] = ("float64", "float32"), seed: int = 0, **kwargs) -> Report:
    """:func:`verify_vjp` for one registry case, with the layer's own float32 tolerance."""
    from functools import partial

    manual_fn = partial(spec.manual, **case.kwargs)
    reference_fn = partial(spec.reference, **case.kwargs)
    rtol = {"float32": spec.rtol_float32} if kwargs.get("matmul_precision", "highest") == "highest" else None
    kwargs.setdefault("rtol", rtol)
    kwargs.setdefault("fd", case.smooth)
    with jax.enable_x64(True):  # example inputs are float64 until cast
        args = case.args(seed)
    report = verify_vjp(
        manual_fn,
        reference_fn,
        *args,
        argnums=case.argnums,
        dtypes=dtypes,
        seed=seed,
        name=f"{spec.name}[{case.name}]",
        derivation=spec.doc,
        **kwargs,
    )
    return report
