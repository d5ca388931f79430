"""Compare mode's verdict: a cheap float32 guard on every step, and exact float64 audits.

Every step of ``grad="compare"`` computes the manual and the autodiff gradient in float32;
the guard measures per parameter ``max|g_manual - g_autodiff| / scale``, with ``scale =
max(max|g_autodiff|, AGREEMENT_FLOOR x the model's largest |g_autodiff| entry)``
(:func:`jaxbp.train.steps.agreement`). Float32 rounding alone moves that by up to ~130 ulps;
the guard fails above ``compare_rtol`` (1e-4, 840 ulps): it catches a gross bug on the step
it shows, never rounding, but a small bug (a layer norm whose backward leaves out eps:
4e-6 to 1.8e-5) hides under it.

The audit decides exactly: at the first step (of the run, and of a resumed one), every
``audit_every`` steps (default: the last step of every epoch) and whenever the guard fails,
it recomputes both gradients of that same step (same parameters, model state, batch and
dropout key) in float64 and requires the same measure within ``audit_rtol`` (1e-9, where
float64 rounding stays under 4e-14). A guard failure that the audit clears is a warning;
a failed audit stops the run with :class:`GradientMismatchError`. Every audit is a
``"kind": "audit"`` record of ``metrics.jsonl``; :class:`AuditLog` (the summary's
``audits``) counts them and keeps the worst.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxbp import models, parallel
from jaxbp.choices import MODELS
from jaxbp.loading import first_line
from jaxbp.train import steps
from jaxbp.train.config import TrainConfig
from jaxbp.train.errors import GradientMismatchError
from jaxbp.verify.compiled import x64_scope

__all__ = ["REASONS", "AuditLog", "Auditor", "Verdict", "check_step", "named", "summary_fields", "verdict"]

# Why an audit ran: the key is the record's "reason", the text goes into messages.
REASONS = {
    "first step": "at the first step",
    "first step after resume": "at the first step after resuming",
    "interval": "every --audit-every steps",
    "guard": "because the float32 guard failed",
}


class Verdict(NamedTuple):
    """One comparison of a step's two gradients (the guard's or an audit's): per parameter the
    error against its scale and the cosine, the worst parameter and whether it is in tolerance."""

    rel: dict[str, float]
    cos: dict[str, float]
    param: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # NaN fails too

    def outside(self) -> list[str]:
        return [k for k, v in self.rel.items() if not v <= self.tolerance]


def named(tree) -> dict[str, Any]:
    """``{"conv1.w": leaf, ...}`` for a nested dict tree."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[".".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return out


def verdict(rel_tree, cos_tree, tolerance: float) -> Verdict:
    """The :class:`Verdict` of :func:`~jaxbp.train.steps.agreement`'s ``rel_err`` and ``cos``
    trees; the worst parameter is the largest error (a NaN or infinite one first)."""
    rel = {k: float(v) for k, v in named(rel_tree).items()}
    cos = {k: float(v) for k, v in named(cos_tree).items()}
    param = max(rel, key=lambda k: (not math.isfinite(rel[k]), rel[k]))
    return Verdict(rel, cos, param, rel[param], tolerance)


@dataclass
class AuditLog:
    """The audits of a run (in the checkpoint, so a resumed run's summary counts them all):
    how many ran, how many guard failures they cleared, and the worst (largest error) one."""

    count: int = 0
    guard_failures_cleared: int = 0
    worst: dict[str, Any] | None = None  # {"step", "param", "error", "reason"}
    last_step: int | None = None

    def add(self, rec: dict[str, Any]) -> AuditLog:
        self.count += 1
        self.last_step = rec["step"]
        if rec["reason"] == "guard" and rec["passed"]:
            self.guard_failures_cleared += 1
        if self.worst is None or not rec["error"] <= self.worst["error"]:
            self.worst = {k: rec[k] for k in ("step", "param", "error", "reason")}
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AuditLog:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in fields})


@dataclass
class Auditor:
    """What a compare-mode run audits with: the float64 audit step (from
    :func:`jaxbp.train.steps.compiled`), compiled ahead of time by :meth:`prepare`, the
    interval, and whether this process has audited yet (its first step always is)."""

    audit_step: Callable
    interval: int
    executable: Any = None
    compile_s: float = 0.0
    audited: bool = False

    @classmethod
    def create(cls, config: TrainConfig, audit_step: Callable, steps_per_epoch: int) -> Auditor:
        return cls(audit_step, config.audit_every or steps_per_epoch)

    def prepare(self, state, batch_shape: tuple[int, ...], model: str) -> None:
        """Compile the audit for batches of ``batch_shape`` before the run's first float32 trace
        (``model``: the config's, named in a :class:`~jaxbp.models.ModelError` if a user's fails).

        JAX 0.10.2 reuses a closed-over NumPy float64 constant traced under one x64 setting
        in a trace under the other (a user's layer that closes over ``np.linspace(...)``
        fails to lower), so the float64 audit is traced inside
        :func:`jaxbp.verify.compiled.x64_scope`, which drops JAX's x64-blind staging caches
        on the way in and out (compiled executables stay), and kept as an ahead-of-time
        executable that never traces again."""
        t0 = time.perf_counter()
        args = self._arguments(state, (np.zeros(batch_shape), np.zeros(batch_shape[:1]), batch_shape[0]), 1)
        try:
            with x64_scope(True):
                self.executable = self.audit_step.lower(*args).compile()
        except Exception as err:
            if model in MODELS:
                raise
            raise models.ModelError(  # the first trace of the user's layers: say whose code failed
                f"{model!r}: tracing the float64 audit of --grad compare raised {type(err).__name__}: {first_line(err)}"
            ) from err
        self.compile_s = time.perf_counter() - t0

    def _arguments(self, state, batch: tuple, step: int) -> tuple:
        """The audit's host arguments for step ``step`` (1-based): float64 parameters, model
        state and images from ``state`` (the state before the step) and ``batch``."""
        xb, yb, n_valid = batch
        params, model_state, rng = parallel.to_host((state.params, state.model_state, state.rng))
        key = steps.dropout_key(rng, step - 1)  # float32 mode: the train step's key, bit for bit
        images = np.asarray(xb, np.float64)
        return _float64(params), _float64(model_state), images, np.asarray(yb, np.int32), np.int32(n_valid), key

    def reason(self, step: int, guard_passed: bool) -> str | None:
        """Why step ``step`` (1-based) is audited, or None."""
        if not guard_passed:
            return "guard"
        if not self.audited:
            return "first step" if step == 1 else "first step after resume"
        return "interval" if step % self.interval == 0 else None

    def audit(self, state, batch: tuple, step: int, tolerance: float) -> tuple[Verdict, dict[str, Any], float]:
        """Recompute step ``step`` (1-based) in float64 from ``state``, the state before it, and
        its ``batch`` ``(xb, yb, n_valid)``: ``(verdict, {param: (abs err, scale)}, seconds)``."""
        t0 = time.perf_counter()
        args = self._arguments(state, batch, step)
        with jax.enable_x64(True):
            out = jax.device_get(self.executable(*args))
        self.audited = True
        err, scale = named(out["abs_err"]), named(out["scale"])
        numbers = {k: (float(err[k]), float(scale[k])) for k in err}
        return verdict(out["rel_err"], out["cos"], tolerance), numbers, time.perf_counter() - t0


def _float64(tree):
    return jax.tree.map(
        lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, tree
    )


def check_step(run, state, batch: tuple, m: dict[str, Any], progress) -> None:
    """Compare mode after step ``progress.step``: fold the float32 guard's agreement into the
    run's worst, audit the step in float64 when it is due or the guard failed (``state`` is
    the state before the step, ``batch`` its ``(xb, yb, n_valid)``), record the audit, and raise
    :class:`GradientMismatchError` when the audit fails."""
    config = run.config
    guard = verdict(m["rel_err"], m["cos"], config.compare_rtol)
    _fold_guard(guard, progress)
    reason = run.auditor.reason(progress.step, guard.passed)
    if reason is None:
        return
    result, numbers, seconds = run.auditor.audit(state, batch, progress.step, config.audit_rtol)
    rec = {
        "kind": "audit", "step": progress.step, "epoch": progress.epoch + 1, "reason": reason,
        "param": result.param, "error": _json_float(result.error), "tolerance": config.audit_rtol,
        "passed": result.passed, "guard_param": guard.param, "guard_error": _json_float(guard.error),
        "audit_time_s": seconds,
    }  # fmt: skip
    run.folder.record(rec)
    if run.display.callback:
        run.display.callback(rec)
    progress.audits = dataclasses.asdict(AuditLog.from_dict(progress.audits).add(rec))
    if not result.passed:
        raise GradientMismatchError(
            failure_message(config, run.auditor.interval, progress, reason, result, guard, numbers)
        )
    if not guard.passed and run.folder.primary:
        print(f"warning: {guard_cleared_message(config, progress.step, guard, result)}", file=sys.stderr, flush=True)


def summary_fields(config: TrainConfig, auditor: Auditor | None, progress) -> dict[str, Any]:
    """``{"audits": ...}`` for the summary: the interval, the tolerance and the :class:`AuditLog`
    (None outside compare mode)."""
    if auditor is None:
        return {"audits": None}
    log = dataclasses.asdict(AuditLog.from_dict(progress.audits))
    return {"audits": {"every": auditor.interval, "rtol": config.audit_rtol, "compile_s": auditor.compile_s, **log}}


def _fold_guard(guard: Verdict, progress) -> None:
    """The run's and the logging window's worst guard agreement."""
    r, c = guard.error, min(guard.cos.values())
    worst = progress.worst
    if worst is None or not r <= worst["max_rel_err"]:
        worst = {**(worst or {}), "max_rel_err": r, "param": guard.param, "step": progress.step}
    if worst is not None:
        worst["min_cos"] = min(c, worst.get("min_cos", 1.0))
    progress.worst = worst
    progress.window.add_agreement(r, guard.param, c)


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # metrics.jsonl is strict JSON


def failure_message(config, interval: int, progress, reason: str, audit: Verdict, guard: Verdict, numbers) -> str:
    """Why the run stops: the parameter, the audit's and the guard's numbers, the flags."""
    step = progress.step
    err, scale = numbers[audit.param]
    where = f"step {step} (epoch {progress.epoch + 1}, batch {progress.batch_index})"
    head = f"gradient mismatch at {where}, found by the float64 audit {REASONS[reason]}"
    if reason == "guard":
        head += (
            f" (the guard measured parameter {guard.param!r} at {guard.error:.3e} > --compare-rtol "
            f"{config.compare_rtol:.1e}; the audit of the same step confirms it)"
        )
    lines = [
        f"{head}: parameter {audit.param!r} has max|g_manual - g_autodiff| / scale = {audit.error:.3e} "
        f"> --audit-rtol {config.audit_rtol:.1e} in float64 (max difference {err:.3e}, scale {scale:.3e}). "
        "Float64 rounding stays near 1e-14 of the scale: the manual backward of a layer this parameter's "
        "gradient flows through is wrong.",
        f"Per parameter (float64 audit / float32 guard, each against --audit-rtol {config.audit_rtol:.0e} / "
        f"--compare-rtol {config.compare_rtol:.0e}):",
    ]
    width = max(map(len, audit.rel))
    for k in audit.rel:
        mark = "   <-- outside --audit-rtol" if k in audit.outside() else ""
        lines.append(
            f"  {k:{width}s}  audit {audit.rel[k]:.3e}  guard {guard.rel[k]:.3e}  cosine {audit.cos[k]:.6f}{mark}"
        )
    lines.append(
        f"Audits run at the first step, every {interval} steps (--audit-every) and when the float32 guard fails "
        "(--compare-rtol)."
    )
    return "\n".join(lines)


def guard_cleared_message(config, step: int, guard: Verdict, audit: Verdict) -> str:
    return (
        f"step {step}: the float32 guard measured parameter {guard.param!r} at {guard.error:.3e} > --compare-rtol "
        f"{config.compare_rtol:.1e}, but the float64 audit of the same step agrees to {audit.error:.1e} "
        f"(<= --audit-rtol {config.audit_rtol:.0e}): float32 rounding, not a wrong backward; training goes on. "
        "A larger --compare-rtol silences this."
    )
