"""What a verification found (:class:`Report`) and how it reads: a table, the failures, JSON.

A report lists one :class:`GradCheck` per differentiable leaf and dtype, one
:class:`TransformCheck` per transform and dtype, one :class:`ExploreCheck` per explored
region of inputs, the leaves that were not differentiated (and why), and on request the
manual and reference Jacobian blocks of small failing leaves. ``str(report)`` is the
readable form; :meth:`Report.raise_if_failed` raises it as an ``AssertionError``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "TRANSFORMS",
    "ExploreCheck",
    "GradCheck",
    "element_label",
    "JacobianBlock",
    "Report",
    "TransformCheck",
    "equation_lines",
    "json_safe",
]

KNOWN_LIMITATION_FORWARD_MODE = "not supported by jax.custom_vjp (known limitation)"

# What each transform check compares, for the report.
TRANSFORMS = {
    "forward": "manual forward output vs reference forward output",
    "jit": "manual VJP under jit vs the same op by op",
    "vmap": "manual VJP under vmap vs a loop of the manual VJP over the examples",
    "grad_of_grad": "gradient of <manual VJP, u> with respect to the inputs vs the same through autodiff",
    "grad_of_grad_ct": "gradient of <manual VJP, u> with respect to the cotangent vs the same through autodiff",
    "zero_cotangents": "each output differentiated alone (the others' cotangents symbolic zeros, as jax.grad "
    "of one output makes them) vs autodiff",
    "forward_mode": "jax.jvp of the manual function vs of the reference",
}


def _ratio(err: float | None, tol: float | None) -> float:
    if err is None or tol is None:
        return 0.0
    if tol <= 0:
        return 0.0 if err == 0 else math.inf
    return err / tol


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, complex):
        return f"{v:.6g}"
    return f"{v:.6g}"


def element_label(arg: str, index: tuple[int, ...]) -> str:
    """An element of an argument as an expression: ``x[0, 2, 1, 0]`` (the argument alone for a scalar)."""
    return f"{arg}[{', '.join(map(str, index))}]" if index else arg


@dataclass
class GradCheck:
    """The VJP of one differentiable leaf at one dtype.

    ``max_rel_err`` is ``max|manual - autodiff| / max|autodiff|`` over every element
    and cotangent (None when there is no reference function), ``max_abs_err`` its
    numerator; ``worst_index`` is the element where the two differ most
    (``manual_value`` vs ``reference_value`` there). ``fd_rel_err`` is the worst error
    against finite differences over the directions they could judge (None where they did
    not run or could judge none); ``oracle`` says which comparisons decided the row.
    """

    arg: str
    dtype: str
    max_abs_err: float | None
    max_rel_err: float | None
    worst_index: tuple[int, ...]
    manual_value: float | complex | None
    reference_value: float | complex | None
    tolerance: float
    tolerance_source: str
    fd_rel_err: float | None = None
    fd_tolerance: float | None = None
    shape: tuple[int, ...] = ()
    note: str = ""
    oracle: str = ""  # what decided: "autodiff and finite differences", "autodiff", "finite differences", "none"

    @property
    def ratio(self) -> float:
        """The larger of error/tolerance against autodiff and against finite differences: below 1 passes."""
        return max(_ratio(self.max_rel_err, self.tolerance), _ratio(self.fd_rel_err, self.fd_tolerance))

    @property
    def passed(self) -> bool:
        ad_ok = self.max_rel_err is None or self.max_rel_err <= self.tolerance
        fd_ok = self.fd_rel_err is None or self.fd_rel_err <= self.fd_tolerance
        checked = self.max_rel_err is not None or self.fd_rel_err is not None
        return bool(ad_ok and fd_ok and checked)

    @property
    def element(self) -> str:
        """The worst element as an expression: ``x[0, 2, 1, 0]``."""
        return element_label(self.arg, self.worst_index)


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
class ExploreCheck:
    """The manual VJP at inputs beyond the examples (a ``region``: ``x100``, ``zeros``, ...).

    ``passed`` is None where the input was skipped (the reference itself is not
    finite there); ``arg`` and ``worst_index`` locate the worst element.
    """

    region: str
    dtype: str
    error: float | None
    tolerance: float
    passed: bool | None
    arg: str = ""
    worst_index: tuple[int, ...] = ()
    manual_value: float | complex | None = None
    reference_value: float | complex | None = None
    note: str = ""

    @property
    def element(self) -> str:
        """The worst element as an expression: ``x[0, 2, 1, 0]``."""
        return element_label(self.arg, self.worst_index)


@dataclass
class JacobianBlock:
    """``d out / d arg`` of a small failing leaf, manual and reference, as nested lists (rows: output elements)."""

    arg: str
    out: str
    dtype: str
    manual: list
    reference: list


REGION_WORDS = {
    "x1e-3": "1e-3x the example inputs",
    "x10": "10x the example inputs",
    "x100": "100x the example inputs",
    "zeros": "all-zero inputs",
    "ties": "inputs rounded to integers (ties)",
}


@dataclass
class Report:
    """Everything ``verify_vjp`` found; ``str()`` is a readable table, :meth:`to_json` the full record."""

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
    explored: list[ExploreCheck] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"label", "reason"}: leaves not differentiated
    jacobians: list[JacobianBlock] = field(default_factory=list)
    reference: str = "autodiff"  # or "finite differences only" (reference_fn=None)
    notes: list[str] = field(default_factory=list)  # what the reader must know about the check itself

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and bool(self.grads)
            and all(g.passed for g in self.grads)
            and all(t.passed is not False for t in self.transforms)
            and all(e.passed is not False for e in self.explored)
        )

    @property
    def failures(self) -> list[GradCheck | TransformCheck | ExploreCheck]:
        return (
            [g for g in self.grads if not g.passed]
            + [t for t in self.transforms if t.passed is False]
            + [e for e in self.explored if e.passed is False]
        )

    def worst(self, dtype: str | None = None) -> GradCheck | None:
        """The gradient check with the largest error/tolerance ratio (of one dtype, if given)."""
        rows = [g for g in self.grads if dtype is None or g.dtype == dtype]
        return max(rows, key=lambda g: g.ratio, default=None)

    def raise_if_failed(self) -> Report:
        """Raise ``AssertionError`` unless every check passed: its first line names the first failing
        check, leaf and dtype (what pytest's short summary shows), the rest is the whole report."""
        if not self.passed:
            raise AssertionError(f"{self.name}: FAIL {self.headline()}\n" + str(self))
        return self

    def headline(self) -> str:
        """The first failure in a few words: ``grad x float64 vs autodiff 1.0e-02 > 1e-10``."""
        if self.errors:
            return f"error: {self.errors[0]}"
        for g in self.grads:
            if g.passed:
                continue
            if g.max_rel_err is not None and not g.max_rel_err <= g.tolerance:
                return f"grad {g.arg} {g.dtype} vs autodiff {g.max_rel_err:.1e} > {g.tolerance:.0e}"
            if g.fd_rel_err is not None and not g.fd_rel_err <= g.fd_tolerance:
                return f"grad {g.arg} {g.dtype} vs finite differences {g.fd_rel_err:.1e} > {g.fd_tolerance:.0e}"
            return f"grad {g.arg} {g.dtype}: nothing could judge it ({g.note or 'no oracle'})"
        for t in self.transforms:
            if t.passed is False:
                err = "" if t.error is None else f" {t.error:.1e} > {t.tolerance:.0e}"
                return f"{t.name} {t.dtype}{err}" + (f" ({t.note})" if t.error is None and t.note else "")
        for e in self.explored:
            if e.passed is False:
                err = "" if e.error is None else f" {e.error:.1e} > {e.tolerance:.0e}"
                where = f" at {e.element}" if e.arg else ""
                return f"at {REGION_WORDS.get(e.region, e.region)} {e.dtype}{err}{where}"
        return "no gradient was checked" if not self.grads else ""

    def to_dict(self) -> dict:
        """A JSON-ready dict: the fields plus ``ratio``/``passed`` per row; inf and nan as strings."""
        d = dataclasses.asdict(self)
        for g, row in zip(self.grads, d["grads"]):
            row["ratio"], row["passed"] = g.ratio, g.passed
        d["passed"] = self.passed
        return json_safe(d)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        return self.render()

    def render(self, *, derivation: bool = True) -> str:
        """The readable report; ``derivation=False`` leaves the derivation out (shown elsewhere once)."""
        status = "PASS" if self.passed else "FAIL"
        lines = [
            f"{self.name}: {status}  (backend {self.backend}, matmul precision {self.matmul_precision!r}, "
            f"seed {self.seed}, reference: {self.reference})"
        ]
        lines += [f"  note: {note}" for note in self.notes]
        lines += self._grad_lines() + self._transform_lines() + self._explore_lines()
        for s in self.skipped:
            lines.append(f"  skipped {s['label']}: {s['reason']}")
        sources = {g.dtype: g.tolerance_source for g in self.grads}
        if sources:
            lines.append("  tolerances: " + "; ".join(f"{d}: {s}" for d, s in sources.items()))
        for e in self.errors:
            lines.append(f"  ERROR {e}")
        if not self.passed:
            lines += self._explain_failures(derivation)
        return "\n".join(lines)

    def _grad_lines(self) -> list[str]:
        if not self.grads:
            return []
        w = max(4, *(len(g.arg) for g in self.grads))
        header = (
            f"  {'arg':<{w}} {'dtype':<8} {'vs autodiff':>11} {'tol':>6} {'vs FD':>8} {'tol':>6} "
            f"{'ratio':>8}  {'result':<6} worst element: manual | reference"
        )
        lines = [header, "  " + "-" * (len(header) - 2)]
        for g in self.grads:
            ad = "-" if g.max_rel_err is None else f"{g.max_rel_err:.1e}"
            fd = "-" if g.fd_rel_err is None else f"{g.fd_rel_err:.1e}"
            fdt = "" if g.fd_tolerance is None else f"{g.fd_tolerance:.0e}"
            where = f"{g.element}: {_value(g.manual_value)} | {_value(g.reference_value)}"
            if g.oracle and g.oracle != "autodiff and finite differences":
                where += f"  [decided by {g.oracle}]"
            if g.note:
                where += f"  ({g.note})"
            lines.append(
                f"  {g.arg:<{w}} {g.dtype:<8} {ad:>11} {g.tolerance:6.0e} {fd:>8} {fdt:>6} "
                f"{g.ratio:8.2g}  {'ok' if g.passed else 'FAIL':<6} {where}"
            )
        return lines

    def _transform_lines(self) -> list[str]:
        by_name: dict[str, list[TransformCheck]] = {}
        for t in self.transforms:
            by_name.setdefault(t.name, []).append(t)
        lines = ["  transforms:"] if by_name else []
        for name, checks in by_name.items():
            cells = []
            for t in checks:
                state = {True: "ok", False: "FAIL", None: "n/a"}[t.passed]
                err = "" if t.error is None else f" {t.error:.1e}"
                cells.append(f"{t.dtype} {state}{err}")
            notes = sorted({t.note for t in checks if t.note and (t.passed is not True)})
            note = f"  ({'; '.join(notes)})" if notes else ""
            lines.append(f"    {name:<15} {' | '.join(cells)}{note}")
        return lines

    def _explore_lines(self) -> list[str]:
        if not self.explored:
            return []
        lines = ["  inputs beyond the examples:"]
        for e in self.explored:
            state = {True: "ok", False: "FAIL", None: "skipped"}[e.passed]
            err = "" if e.error is None else f" {e.error:.1e}"
            note = f"  ({e.note})" if e.note else ""
            lines.append(f"    {e.region:<15} {e.dtype} {state}{err}{note}")
        return lines

    def _explain_failures(self, derivation: bool) -> list[str]:
        lines = []
        for g in (g for g in self.grads if not g.passed):
            why = []
            if g.max_rel_err is not None and g.max_rel_err > g.tolerance:
                why.append(f"vs autodiff {g.max_rel_err:.2e} > {g.tolerance:.0e}")
            if g.fd_rel_err is not None and g.fd_rel_err > g.fd_tolerance:
                why.append(f"vs finite differences {g.fd_rel_err:.2e} > {g.fd_tolerance:.0e}")
            if g.max_rel_err is None and g.fd_rel_err is None:
                why.append(f"nothing could judge it ({g.note or 'no reference and no finite differences'})")
            lines.append(
                f"  FAIL d{g.arg} ({g.dtype}, shape {tuple(g.shape)}): {', '.join(why)}; worst element "
                f"{g.element}: manual {_value(g.manual_value)}, reference {_value(g.reference_value)}"
            )
        failed_transforms = [t for t in self.transforms if t.passed is False]
        second_order = {"grad_of_grad", "grad_of_grad_ct", "zero_cotangents", "forward_mode"}
        if any(not g.passed for g in self.grads) and any(t.name in second_order for t in failed_transforms):
            names = ", ".join(dict.fromkeys(t.name for t in failed_transforms if t.name in second_order))
            lines.append(f"  FAIL {names}: these compare against autodiff too; fix the gradient first")
        for t in failed_transforms:
            if t.name not in second_order or all(g.passed for g in self.grads):
                err = "" if t.error is None else f" error {t.error:.2e} > {t.tolerance:.0e}"
                note = f" ({t.note})" if t.note else ""
                lines.append(f"  FAIL {t.name} ({t.dtype}, {TRANSFORMS.get(t.name, '')}):{err}{note}")
        for e in (e for e in self.explored if e.passed is False):
            err = "" if e.error is None else f"error {e.error:.2e} > {e.tolerance:.0e}; "
            where = (
                f"worst element {e.element}: manual {_value(e.manual_value)}, reference {_value(e.reference_value)}"
                if e.arg
                else e.note
            )
            lines.append(f"  FAIL at {REGION_WORDS.get(e.region, e.region)} ({e.dtype}): {err}{where}")
        for j in self.jacobians:
            lines.append(f"  Jacobian d{j.out}/d{j.arg} ({j.dtype}), rows: output elements")
            lines += ["    manual:"] + ["      " + row for row in _matrix(j.manual)]
            lines += ["    reference:"] + ["      " + row for row in _matrix(j.reference)]
        if self.derivation and derivation:
            lines += self.derivation_lines()
        return lines

    def derivation_lines(self) -> list[str]:
        """The equations of the failing leaves if the derivation names them, else the whole derivation, once."""
        failing = sorted({g.arg for g in self.grads if not g.passed})
        lines = []
        for arg in failing:
            hits = equation_lines(self.derivation, _root(arg), self.layer)
            if hits:
                lines.append(f"  the equations for d{_root(arg)}:")
                lines += ["    " + ln.strip() for ln in hits]
        if not lines:
            lines.append("  derivation to check:")
            lines += ["    " + ln for ln in self.derivation.splitlines()]
        return lines


def _root(label: str) -> str:
    """``params['w']`` -> ``w``; ``xs[1]`` -> ``xs``; ``x`` -> ``x``: the name a derivation would use."""
    keys = re.findall(r"\['([A-Za-z_]\w*)'\]", label)
    return keys[-1] if keys else re.split(r"[\[.]", label, maxsplit=1)[0]


def _matrix(rows: list) -> list[str]:
    return ["[" + " ".join(f"{v:10.4g}" for v in row) + "]" for row in rows]


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


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON can hold it: inf/nan as strings, complex as ``[re, im]``, NumPy scalars unwrapped."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "inf", "-inf", "nan": strict JSON has no literals for them
    if isinstance(obj, complex):
        return [json_safe(obj.real), json_safe(obj.imag)]
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj
