"""The manual VJP at inputs beyond the examples, with kinks told apart from bugs.

Each region moves the examples (same shapes, so the compiled VJPs are reused): scaled by
1e-3, 10 and 100 (positive factors keep ``sqrt``/``log`` domains valid), the first
argument set to zeros, or rounded to integers (ties). Where manual and autodiff disagree
there, the elements that disagree are probed one by one with float64 finite differences
along their basis direction (:mod:`jaxbp.verify.fd`):

* where the one-sided slopes differ the point is a kink (ReLU at 0, a tie of a max): any
  value between the two slopes is a valid subgradient, so a manual value there is a note
  ("at a kink: manual 0, autodiff 0.5"), not a failure, unless ``strict_kinks``; a manual
  value outside them is wrong on either side of the kink and fails;
* where the function is smooth and the manual value matches finite differences, autodiff of
  the reference is off there (a ``log1p(exp(-|z|))`` formula at 0): a note;
* otherwise the manual VJP is wrong there: a failure naming the region and the element.

Errors are measured against ``max(max|reference leaf|, r G)`` where ``G`` is the largest
reference gradient entry at the region or at the examples (see :mod:`jaxbp.verify.numerics`),
so a gradient that vanishes there compares rounding noise to the gradient's real scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxbp.verify.checks import Pass, fd_scale
from jaxbp.verify.fd import fd_error
from jaxbp.verify.numerics import floor_ratio, global_scale, rel_err
from jaxbp.verify.report import ExploreCheck

__all__ = ["EXPLORE_REGIONS", "EXPLORE_SCALES", "EXPLORE_TOLERANCE", "KINK_REGIONS", "check_explore"]

EXPLORE_SCALES = {"x1e-3": 1e-3, "x10": 10.0, "x100": 100.0}
KINK_REGIONS = ("zeros", "ties")
EXPLORE_REGIONS = (*EXPLORE_SCALES, *KINK_REGIONS)
# Far from the examples a correct VJP can lose digits to cancellation (softmax at 100x large
# logits agrees to ~1e-5): exploration looks for wrong branches and overflow, not last digits.
EXPLORE_TOLERANCE = 1e-3
PROBED_ELEMENTS = 16  # the worst disagreeing elements probed for kinks per region


def check_explore(p: Pass, regions: Sequence[str], strict_kinks: bool = False) -> list[ExploreCheck]:
    """The compiled VJPs at each region asked for; one row per region."""
    rows = []
    first = p.p.inputs.leaves[0].arg if p.p.inputs.leaves else None
    for region in regions:
        # scalings move every leaf; zeros and ties only the first argument's (the input, not weights or targets)
        diff = [
            _moved(region, d) if region in EXPLORE_SCALES or leaf.arg == first else d
            for leaf, d in zip(p.p.inputs.leaves, p.diff)
        ]
        try:
            rows.append(_explore_at(p, region, diff, strict_kinks))
        except Exception as e:  # noqa: BLE001 - report, do not crash
            note = f"raised {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            rows.append(ExploreCheck(region, p.dtype, None, max(p.tol, EXPLORE_TOLERANCE), False, note=note))
    return rows


def _moved(region: str, d: Any) -> np.ndarray:
    """The leaf moved to ``region``, on the host (a device-side op would compile a program per shape)."""
    d = np.asarray(d)
    if region in EXPLORE_SCALES:
        return (d * np.asarray(EXPLORE_SCALES[region], d.dtype)).astype(d.dtype)
    if region == "zeros":
        return np.zeros_like(d)
    return np.round(d)  # ties: integers repeat


def _finite(tree: Any) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree) if np.size(x))


def _explore_at(p: Pass, region: str, diff: list, strict_kinks: bool) -> ExploreCheck:
    ct, tol, fd_tol = p.cts[0], max(p.tol, EXPLORE_TOLERANCE), max(p.fd_tol, EXPLORE_TOLERANCE)
    out_man, g_man = p.vjp(p.p.manual_fn, diff, ct)
    if p.p.reference_fn is None:
        return _explore_fd_only(p, region, diff, g_man, fd_tol)
    out_ref, g_ref = p.vjp(p.p.reference_fn, diff, ct)
    if not (_finite(p.outputs.layout.pick(out_ref)) and _finite(g_ref)):
        return ExploreCheck(region, p.dtype, None, tol, None, note="reference not finite here: skipped")
    floor = floor_ratio(p.dtype, tol) * max(global_scale(g_ref), p.scale)
    errs = [rel_err(a, b, floor) for a, b in zip(g_man, g_ref)]
    if not errs:
        return ExploreCheck(region, p.dtype, 0.0, tol, True)
    k = max(range(len(errs)), key=lambda j: errs[j][1])
    row = _row(p, region, tol, errs[k][1], k, errs[k][2], g_man[k], g_ref[k])
    if not row.passed:
        _judge_disagreement(p, row, diff, g_man, g_ref, floor, strict_kinks and region in KINK_REGIONS)
    return row


def _row(p: Pass, region: str, tol: float, err: float, k: int, idx: tuple, a: Any, b: Any) -> ExploreCheck:
    row = ExploreCheck(region, p.dtype, float(err), tol, bool(err <= tol), p.p.inputs.labels[k], idx)
    if np.size(a):
        row.manual_value, row.reference_value = np.asarray(a)[idx].item(), np.asarray(b)[idx].item()
    return row


def _explore_fd_only(p: Pass, region: str, diff: list, g_man: list, fd_tol: float) -> ExploreCheck:
    fds = p.fd_at(diff, p.p.directions)
    if fds is None:
        return ExploreCheck(region, p.dtype, None, fd_tol, None, note="no finite differences here")
    if not all(np.all(np.isfinite(f.estimates)) for f in fds):
        return ExploreCheck(region, p.dtype, None, fd_tol, None, note="forward not finite: skipped")
    at = [(g_man, None)]
    verdicts = [fd_error(g, f, fd_scale(p, k, at), fd_tol) for k, (g, f) in enumerate(zip(g_man, fds))]
    judged = [(v.error, k) for k, v in enumerate(verdicts) if v.error is not None]
    if not judged:
        note = "finite differences cannot judge here (every direction crosses a kink or tie): skipped"
        return ExploreCheck(region, p.dtype, None, fd_tol, None, note=note)
    err, k = max(judged)
    return ExploreCheck(region, p.dtype, err, fd_tol, bool(err <= fd_tol), arg=p.p.inputs.labels[k], note="vs FD")


def _disagreeing(g_man: list, g_ref: list, floor: float, tol: float) -> tuple[list[tuple[float, int, tuple]], int]:
    """The worst disagreeing elements over all leaves, ``(error, leaf, index)``, at most PROBED_ELEMENTS,
    and how many disagree in all."""
    found, total = [], 0
    for k, (a, b) in enumerate(zip(g_man, g_ref)):
        a, b = np.asarray(a), np.asarray(b)
        if not a.size:
            continue
        scale = max(float(np.max(np.abs(b))), floor)
        err = np.abs(a - b) / scale if scale > 0 else np.where(a == b, 0.0, np.inf)
        err = np.where(np.isnan(err), np.inf, err)
        total += int(np.sum(err > tol))
        flat = np.argsort(-err.reshape(-1), kind="stable")[:PROBED_ELEMENTS]
        found += [
            (float(err.reshape(-1)[i]), k, np.unravel_index(i, a.shape)) for i in flat if err.reshape(-1)[i] > tol
        ]
    found.sort(key=lambda t: -t[0])
    return found[:PROBED_ELEMENTS], total


def _judge_disagreement(p, row: ExploreCheck, diff, g_man, g_ref, floor: float, strict: bool) -> None:
    """Probe the disagreeing elements; pass the row with a note where each is a kink or autodiff's own error."""
    elements, total = _disagreeing(g_man, g_ref, floor, row.tolerance)
    directions = [[] for _ in diff]
    for _, k, idx in elements:
        e = np.zeros(np.shape(diff[k]))
        e[idx] = 1.0
        directions[k].append(e)
    fds = p.fd_at(diff, directions)
    if fds is None or not elements:
        return
    seen = [0] * len(diff)
    kinks, autodiff_off = [], []
    for _, k, idx in elements:
        j = seen[k]
        seen[k] += 1
        verdict = _probe(fds[k], j, g_man[k][idx], g_ref[k][idx], floor, row.tolerance)
        if verdict is None:
            return  # the manual value is off: the failure stands
        (kinks if verdict == "kink" else autodiff_off).append((k, idx, _real(g_man[k][idx]), _real(g_ref[k][idx])))
    if kinks and strict:
        row.note = "at a kink (strict_kinks): " + _kink_words(p, kinks[0])
        return
    row.passed = True
    notes = []
    if kinks:
        probed = (
            f"{len(kinks)} of {total} disagreeing elements probed"
            if total > len(elements)
            else (f"{len(kinks)} element{'s' if len(kinks) > 1 else ''}")
        )
        notes.append(f"at a kink ({probed}; between the one-sided slopes, any subgradient is valid): "
                     + _kink_words(p, kinks[0]))  # fmt: skip
    if autodiff_off:
        k, idx, man, ref = autodiff_off[0]
        notes.append(f"autodiff of the reference is off at {_element(p, k, idx)} ({ref:.6g}); the manual VJP "
                     f"({man:.6g}) agrees with finite differences")  # fmt: skip
    row.note = "; ".join(notes)


def _real(v: Any) -> float:
    return float(np.real(np.asarray(v)))


def _probe(fd, j: int, man: Any, ref: Any, floor: float, tol: float) -> str | None:
    """One disagreeing element along its basis direction: ``"kink"`` where the one-sided slopes differ
    and the manual value lies between them (a valid subgradient), ``"autodiff"`` where the function
    is smooth and the manual value matches the finite difference, None where the manual value is off
    (or the leaf is complex: a real basis direction sees the real part only, so nothing is excused)."""
    if np.iscomplexobj(man) or np.iscomplexobj(ref):
        return None
    man, ref = _real(man), _real(ref)
    est, (fwd, bwd) = float(fd.estimates[j]), (float(v) for v in fd.one_sided[j])
    if not all(math.isfinite(v) for v in (est, fwd, bwd)):
        return None
    slack = tol * max(abs(ref), abs(est), abs(fwd), abs(bwd), floor)
    if abs(fwd - bwd) > slack:  # a kink: valid subgradients lie between the one-sided slopes
        return "kink" if min(fwd, bwd) - slack <= man <= max(fwd, bwd) + slack else None
    return "autodiff" if abs(man - est) <= slack else None


def _element(p: Pass, k: int, idx: tuple) -> str:
    label = p.p.inputs.labels[k]
    return f"{label}[{', '.join(map(str, idx))}]" if idx else label


def _kink_words(p: Pass, kink: tuple) -> str:
    k, idx, man, ref = kink
    return f"{_element(p, k, idx)}: manual {man:.6g}, autodiff {ref:.6g}"
