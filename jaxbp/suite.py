"""The registry suite (``jaxbp check``): every registered layer and configuration, and its tables.

:func:`check_registry` runs :func:`verify_layer` over every configuration; :func:`format_table`
and :func:`format_markdown` summarise its reports one row per configuration (the failures
explained below, each layer's derivation once); :func:`reports_to_dict` and :func:`write_json`
keep the full record.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax

from jaxbp.loading import first_line
from jaxbp.verify import verify_vjp
from jaxbp.verify.compiled import x64_scope
from jaxbp.verify.report import Report, json_safe
from jaxbp.verify.tolerances import FD_TOLERANCE, layer_tolerances

__all__ = [
    "check_output_path",
    "check_registry",
    "default_workers",
    "format_markdown",
    "format_table",
    "per_layer_rows",
    "status_line",
    "reports_to_dict",
    "summary_rows",
    "verify_layer",
    "write_json",
]


def verify_layer(spec, case, *, dtypes: Sequence[str] = ("float64", "float32"), seed: int = 0, **kwargs) -> Report:
    """:func:`verify_vjp` for one registry case, with the layer's own float32 tolerance."""
    kwargs.setdefault("rtol", layer_tolerances(spec, kwargs.get("matmul_precision", "highest")))
    kwargs.setdefault("fd", case.smooth)
    kwargs.setdefault("name", f"{spec.name}[{case.name}]")
    kwargs.setdefault("derivation", spec.doc)
    with x64_scope(True):  # example inputs are float64 until cast
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
    on_report: Callable[[Report], None] | None = None,
    workers: int | None = None,
) -> list[Report]:
    """:func:`verify_layer` for every configuration of the named layers (default: all registered).

    Unknown names raise ``KeyError`` listing the registered ones. ``progress`` shows
    a tqdm bar on stderr; ``on_report`` is called with each report, in registry order
    (the CLI prints a line per configuration when its output is a log, not a terminal).
    A configuration whose check raises is a failed report (``report.errors``), and the
    others still run. ``workers`` threads (default :func:`default_workers`: two per core)
    check configurations side by side: most of the time is XLA compiling, which runs outside
    the GIL, and ``jax_enable_x64`` is a per-thread setting.
    """
    from concurrent.futures import ThreadPoolExecutor

    from jaxbp import registry

    specs = list(registry.REGISTRY.values()) if layers is None else [registry.get(n) for n in dict.fromkeys(layers)]
    jobs = [(spec, case) for spec in specs for case in spec.cases]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="jaxbp check", unit="config", file=sys.stderr, leave=False)
    workers = max(1, min(workers or default_workers(), len(jobs) or 1))
    reports = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaxbp-check") as pool:
        for report in pool.map(lambda job: _checked(*job, dtypes, seed, matmul_precision), jobs):
            reports.append(report)
            if bar is not None:
                bar.set_postfix_str(report.name)
                bar.update()
            if on_report is not None:
                on_report(report)
    if bar is not None:
        bar.close()
    return reports


def default_workers() -> int:
    """Threads for checking configurations side by side: two per core. A configuration's thread
    alternates between Python (tracing and lowering, which hold the GIL) and XLA compiling (which
    does not), so one per core leaves cores idle. The whole registry on a 2-core AMD EPYC (AVX2),
    one process each, one after the other: 98.0 s with 2 threads, 95.4 s with 3 and 90.5 s with 4
    (before the checker's fast-compile options: 153, 126 and 113 s): within this machine's noise of
    10-15 %, so the default stays at two."""
    return 2 * (os.cpu_count() or 1)


def _checked(spec, case, dtypes, seed, matmul_precision) -> Report:
    """:func:`verify_layer`, a raised exception turned into a failed report."""
    try:
        return verify_layer(spec, case, dtypes=dtypes, seed=seed, matmul_precision=matmul_precision)
    except Exception as e:  # noqa: BLE001 - one broken layer must not hide the others
        return Report(
            f"{spec.name}[{case.name}]",
            matmul_precision=matmul_precision or "default",
            backend=jax.default_backend(),
            derivation=spec.doc,
            seed=seed,
            layer=spec.name,
            config=case.name,
            errors=[f"{type(e).__name__}: {first_line(e)}"],
        )


def status_line(report: Report) -> str:
    """One line per finished report, for logs: ``dense[no-bias]: PASS (worst ratio 0.01)``."""
    worst = report.worst()
    ratio = "" if worst is None else f" (worst error/tolerance {worst.ratio:.2g} at {worst.arg}, {worst.dtype})"
    return f"{report.name}: {'PASS' if report.passed else 'FAIL'}{ratio}"


# ------------------------------------------------------------------ summaries

_TRANSFORM_COLUMNS = (
    ("forward", "fwd"),
    ("jit", "jit"),
    ("vmap", "vmap"),
    ("grad_of_grad", "g(g)"),
    ("grad_of_grad_ct", "g(ct)"),
    ("zero_cotangents", "0ct"),
    ("forward_mode", "jvp"),
    ("explore", "expl"),
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
            checks = r.explored if name == "explore" else [t for t in r.transforms if t.name == name]
            states = [t.passed for t in checks]
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
            "fwd/jit/vmap/g(g)/g(ct)/0ct: forward equality, jit, vmap per example, grad-of-grad in the inputs and "
            "in the cotangent, each output alone (symbolic-zero cotangents for the others, multi-output only); "
            "jvp n/a: jax.custom_vjp has no forward mode (a known limitation); expl: the VJPs at x1e-3, x10, "
            "x100 the examples (and zeros, ties where smooth), float64."
        ),
    ]
    shown: set[str] = set()
    for r in failed:
        key = r.layer or r.name
        lines += ["", r.render(derivation=key not in shown)]  # each layer's derivation once
        shown.add(key)
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
    return json_safe(
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


def check_output_path(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written (a one-line message naming it), or None if it can.

    A file destination must not be an existing folder; a folder destination must not be
    an existing file; in both cases the parent folder must exist and be writable (and an
    existing destination writable). Checked before a long run, so nothing is lost after it.
    """
    p = Path(path)
    kind = "folder" if folder else "file"
    if p.exists():
        if not folder and p.is_dir():
            return f"{str(path)!r} is a folder, not a file"
        if folder and not p.is_dir():
            return f"{str(path)!r} is a file, not a folder"
        if not os.access(p, os.W_OK):
            return f"{str(path)!r} is not writable"
        return None
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"cannot write the {kind} {str(path)!r}: its folder {str(parent)!r} does not exist"
    if not os.access(parent, os.W_OK):
        return f"cannot write the {kind} {str(path)!r}: its folder {str(parent)!r} is not writable"
    return None


def write_json(path: str, reports: Sequence[Report], dtypes: Sequence[str] = ("float64", "float32"), **meta: Any):
    """Write :func:`reports_to_dict` to ``path`` (parents created) through the one atomic writer
    (:func:`jaxbp.files.atomic_write_text`, which refuses a run's files and non-regular files);
    returns the path."""
    from jaxbp import files

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.atomic_write_text(path, json.dumps(reports_to_dict(reports, dtypes, **meta), indent=2) + "\n")
