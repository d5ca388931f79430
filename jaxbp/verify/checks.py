"""The checks of one dtype: independent functions of a :class:`Pass`, each returning report rows.

A :class:`Problem` holds what every dtype shares (the pair of functions, the float64
example inputs split into leaves, the cotangents, the finite-difference directions); a
:class:`Pass` casts it to one dtype. Each check isolates one property, so a failure
appears under the check that names it:

* :func:`check_gradients` - first order at the examples: every leaf's manual VJP against
  autodiff of the reference (several cotangents) and against float64 finite differences
  where those can judge (:mod:`jaxbp.verify.fd`); the row says which oracle decided;
* :func:`check_forward` - the manual primal and its fwd rule against the reference forward;
* :func:`check_jit` - the manual VJP under ``jit`` against the same op by op;
* :func:`check_vmap` - the manual VJP under ``vmap`` against a loop of the manual VJP;
* :func:`check_grad_of_grad` - second order, manual against reference, with respect to the
  inputs and to the cotangent (what ``gradgradcheck`` adds);
* :func:`check_zero_cotangents` - each output alone, the others' cotangents symbolic zeros;
* :func:`check_forward_mode` - ``jax.jvp`` (a known limitation of ``custom_vjp``).

:data:`CHECKS` maps the transform names to their functions: a new check is one function and
one line there. Exploration beyond the examples is :mod:`jaxbp.verify.explore`.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.verify import compiled
from jaxbp.verify.fd import FDLeaf, fd_error, finite_differences
from jaxbp.verify.numerics import cast, floor_ratio, global_scale, rel_err, tree_err
from jaxbp.verify.report import KNOWN_LIMITATION_FORWARD_MODE, GradCheck, JacobianBlock, TransformCheck
from jaxbp.verify.structure import Inputs, Outputs

__all__ = ["CHECKS", "FD_BASIS_MAX", "JACOBIAN_MAX", "Pass", "Problem", "check_gradients", "fd_scale", "jacobians"]

FD_BASIS_MAX = 64  # without a reference: every basis direction of leaves this small
JACOBIAN_MAX = 64  # Jacobian blocks are printed for leaves and outputs this small


@dataclass(frozen=True)
class Problem:
    """What every dtype's checks share."""

    manual_fn: Callable
    reference_fn: Callable | None  # None: finite differences only
    args64: tuple  # the example arguments, inexact leaves as float64 / complex128
    inputs: Inputs
    cts64: list  # cotangents: per draw, one float64 array per inexact output leaf
    directions: list | None  # finite-difference directions per leaf (None: no FD)
    seed: int
    random: bool  # a PRNG key among the arguments: finite differences only in float64

    @property
    def target(self) -> Callable:
        """The function whose forward finite differences differentiate."""
        return self.reference_fn or self.manual_fn


class Pass:
    """One dtype: the arguments cast to it, its tolerances, and its first-order VJPs (computed once)."""

    def __init__(
        self, problem: Problem, dtype: str, tol: float, tol_src: str, fd_tol: float, most_precise: bool = True
    ):
        self.p, self.dtype, self.tol, self.tol_src, self.fd_tol = problem, dtype, tol, tol_src, fd_tol
        self.most_precise = most_precise  # the dtype the transforms and exploration run in
        self.args = tuple(jax.tree.map(lambda a: cast(a, dtype), a) for a in problem.args64)
        self.layout = problem.inputs.layout(self.args)
        self.diff, self.rest = self.layout.split(self.args)
        fn = problem.target
        self.outputs = Outputs(jax.eval_shape(lambda *d: fn(*self.layout.build(d, self.rest)), *self.diff))
        self.out = self.outputs.layout
        structs = [s for s, ok in zip(self.outputs.structs, self.outputs.inexact) if ok]
        self.cts = [[jnp.asarray(c, s.dtype) for c, s in zip(ct, structs)] for ct in problem.cts64]
        self.ratio = floor_ratio(dtype, tol)

    def rng(self, check: str) -> np.random.Generator:
        """A stream of the check's own: the same draws whichever checks run, in any order."""
        return np.random.default_rng([self.p.seed, zlib.crc32(check.encode()), zlib.crc32(self.dtype.encode())])

    def vjp(self, fn: Callable, diff: list, cts: list) -> tuple[Any, list]:
        """``(output, grads)`` of ``fn`` at ``diff`` (compiled once per function, layout and shapes)."""
        return compiled.vjp(fn, self.layout, self.out, diff, self.rest, cts)

    @functools.cached_property
    def vjps(self) -> list[tuple[tuple[Any, list], tuple[Any, list] | None]]:
        """Per cotangent: the manual ``(output, grads)`` and the reference's (None without a reference)."""
        ref = self.p.reference_fn
        return [
            (self.vjp(self.p.manual_fn, self.diff, ct), None if ref is None else self.vjp(ref, self.diff, ct))
            for ct in self.cts
        ]

    @functools.cached_property
    def first_order(self) -> list[tuple[list, list | None]]:
        """Per cotangent: the manual grads and the reference's (None without a reference)."""
        return [(man[1], None if ref is None else ref[1]) for man, ref in self.vjps]

    @functools.cached_property
    def scale(self) -> float:
        """``G`` at the examples: the largest gradient entry over leaves and cotangents (the reference's)."""
        return global_scale([ref if ref is not None else man for man, ref in self.first_order])

    def fd_at(self, diff: list, directions: list) -> list[FDLeaf] | None:
        """Finite differences of the target's forward in float64 at ``diff``, with the first cotangent."""
        if self.p.random and self.dtype != "float64":
            return None
        with compiled.x64_scope(True):
            args = tuple(jax.tree.map(lambda a: cast(a, "float64"), a) for a in self.args)
            layout = self.p.inputs.layout(args)
            _, rest = layout.split(args)
            wide = [np.asarray(d).astype(np.complex128 if np.iscomplexobj(d) else np.float64) for d in diff]
            fn, out = self.p.target, _wide_out(self.out)

            def pairing(stacked, ct):
                return compiled.pairing_batch(fn, layout, out, stacked, rest, ct)

            return finite_differences(pairing, wide, self.p.cts64[0], directions)


def _wide_out(out: compiled.OutLayout) -> compiled.OutLayout:
    widen = {"float32": "float64", "bfloat16": "float64", "float16": "float64", "complex64": "complex128"}
    return compiled.OutLayout(out.treedef, tuple((s, widen.get(d, d), ok) for s, d, ok in out.leaves))


# ------------------------------------------------------------------ first order


def check_gradients(p: Pass) -> list[GradCheck]:
    """Each leaf's VJP vs autodiff (worst over the cotangents) and vs finite differences."""
    fds = None if p.p.directions is None else p.fd_at(p.diff, p.p.directions)
    note = (
        "no finite differences in this dtype: random arguments draw differently with x64 on"
        if (p.p.directions is not None and fds is None)
        else ""
    )
    return [_grad_row(p, k, label, fds, note) for k, label in enumerate(p.p.inputs.labels)]


def _grad_row(p: Pass, k: int, label: str, fds: list | None, note: str) -> GradCheck:
    shape = tuple(np.shape(p.diff[k]))
    g = GradCheck(label, p.dtype, None, None, (), None, None, p.tol, p.tol_src, shape=shape)
    oracles = []
    if p.p.reference_fn is not None:
        worst = max(
            ((rel_err(man[k], ref[k], p.ratio * p.scale), man[k], ref[k]) for man, ref in p.first_order),
            key=lambda t: t[0][1],
        )
        (g.max_abs_err, g.max_rel_err, g.worst_index), man_k, ref_k = worst
        if np.size(man_k):
            g.manual_value = np.asarray(man_k)[g.worst_index].item()
            g.reference_value = np.asarray(ref_k)[g.worst_index].item()
        oracles.append("autodiff")
    if fds is not None:
        man, ref = p.first_order[0]
        verdict = fd_error(man[k], fds[k], fd_scale(p, k), p.fd_tol)
        g.fd_rel_err, g.fd_tolerance = verdict.error, p.fd_tol
        if verdict.judged:
            oracles.append("finite differences")
        if verdict.judged < verdict.total:
            note = _join(note, f"finite differences judged {verdict.judged} of {verdict.total} directions "
                               "(the others cross a kink or tie within the step)")  # fmt: skip
        if ref is None and np.size(man[k]):
            g.manual_value = np.asarray(man[k]).reshape(-1)[0].item()
    g.oracle = " and ".join(oracles) or "none"
    g.note = note
    if not np.prod(shape):
        g.note = "zero-size: nothing to compare, passes trivially"
        g.max_rel_err = g.max_rel_err if g.max_rel_err is not None else 0.0
    return g


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def fd_scale(p: Pass, k: int, first_order: list | None = None) -> float:
    """The gradient's scale along a unit direction for leaf ``k``, floored by the global one."""
    man, ref = (first_order or p.first_order)[0]

    def typical(j: int) -> float:
        wide = [np.asarray(g[j]).astype(np.complex128) for g in (man, ref) if g is not None]
        norms = [np.linalg.norm(w) for w in wide]
        size = max(1, int(np.size(man[j])))
        return float(max(norms)) / math.sqrt(size)

    own = typical(k)
    others = max((typical(j) for j in range(len(man))), default=0.0)
    return max(own, floor_ratio(p.dtype, p.fd_tol) * others)


# ------------------------------------------------------------------ transforms


def check_forward(p: Pass) -> list[TransformCheck]:
    """The manual primal and its fwd rule's output (inside ``jax.vjp``) against the reference forward,
    all compiled (the outputs of the first-order VJPs, and the primal alone)."""
    manual = compiled.primal(p.p.manual_fn, p.layout, p.diff, p.rest)
    (out_fwd, _), ref = p.vjps[0]
    if ref is None:
        err = tree_err(out_fwd, manual, p.ratio)
        return [TransformCheck("forward", p.dtype, err, p.tol, bool(err <= p.tol), "fwd rule vs primal")]
    err = max(tree_err(manual, ref[0], p.ratio), tree_err(out_fwd, ref[0], p.ratio))
    return [TransformCheck("forward", p.dtype, err, p.tol, bool(err <= p.tol), "primal and fwd rule vs reference")]


def check_jit(p: Pass) -> list[TransformCheck]:
    """The manual VJP under ``jax.jit`` against the same VJP op by op."""
    eager = compiled.vjp_eager(p.p.manual_fn, p.layout, p.out, p.diff, p.rest, p.cts[0])[1]
    err = tree_err(p.first_order[0][0], eager, p.ratio)
    return [TransformCheck("jit", p.dtype, err, p.tol, bool(err <= p.tol), "manual VJP under jit vs op by op")]


def check_vmap(p: Pass, batch: int = 3) -> list[TransformCheck]:
    """The manual VJP under ``vmap`` against a loop of the same VJP over the examples.

    The batch stacks the leaves scaled by 1, 1.25, 1.5 (scaling keeps ties and zeros where
    they were); the other arguments are shared. Manual against manual: a failure here is the
    batched backward differing from the unbatched one, never a wrong gradient.
    """
    rng = p.rng("vmap")
    # on the host: device-side stacking and slicing would each compile a program
    host = [np.asarray(d) for d in p.diff]
    stacked = [np.stack([(d * (1 + 0.25 * b)).astype(d.dtype) for b in range(batch)]) for d in host]
    structs = [s for s, ok in zip(p.outputs.structs, p.outputs.inexact) if ok]
    cts = [_draw(rng, (batch, *s.shape), s.dtype).astype(s.dtype) for s in structs]
    batched = compiled.vmapped_vjp(p.p.manual_fn, p.layout, p.out, stacked, p.rest, cts)
    loop = [p.vjp(p.p.manual_fn, [s[b] for s in stacked], [c[b] for c in cts])[1] for b in range(batch)]
    loop = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *loop)
    err = tree_err(list(batched), loop, p.ratio)
    note = f"manual under vmap over {batch} vs a loop"
    return [TransformCheck("vmap", p.dtype, err, p.tol, bool(err <= p.tol), note)]


def _draw(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    x = rng.standard_normal(shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x


def _pair(a, b) -> float:
    return float(sum(np.real(np.sum(np.asarray(x) * np.asarray(y))) for x, y in zip(a, b)))


def check_grad_of_grad(p: Pass) -> list[TransformCheck]:
    """The gradient of ``<VJP(x, ct), u>`` with respect to ``x`` and to ``ct``, manual vs reference.

    The VJP is linear in ``ct``, so the gradient ``h`` with respect to it must satisfy
    ``<h, w> = <VJP(x, w), u>`` for every ``w``: checked at the cotangents whose VJPs
    :func:`check_gradients` compares (the reference's, or without one the manual's).
    """
    rng = p.rng("grad_of_grad")
    us = [jnp.asarray(_draw(rng, np.shape(d), d.dtype), d.dtype) for d in p.diff]
    man_x, man_ct = compiled.grad_of_grad(p.p.manual_fn, p.layout, p.out, p.diff, p.rest, p.cts[0], us)
    got = np.array([_pair(man_ct, ct) for ct in p.cts])
    want = np.array([_pair(ref if ref is not None else man, us) for man, ref in p.first_order])
    scale = float(np.max(np.abs(np.concatenate([got, want]))))
    err_ct = float(np.max(np.abs(got - want))) / scale if scale > 0 else 0.0
    err_ct = err_ct if np.isfinite(err_ct) else math.inf
    note_ct = f"<d/dct, w> vs <VJP(x, w), u> at {len(p.cts)} cotangents w"
    row_ct = TransformCheck("grad_of_grad_ct", p.dtype, err_ct, p.tol, bool(err_ct <= p.tol), note_ct)
    if p.p.reference_fn is None:
        note = "needs reference_fn (finite differences check first order only)"
        return [TransformCheck("grad_of_grad", p.dtype, None, None, None, note), row_ct]
    ref_x, _ = compiled.grad_of_grad(p.p.reference_fn, p.layout, p.out, p.diff, p.rest, p.cts[0], us)
    err = tree_err(man_x, ref_x, p.ratio)
    return [TransformCheck("grad_of_grad", p.dtype, err, p.tol, bool(err <= p.tol)), row_ct]


def check_zero_cotangents(p: Pass) -> list[TransformCheck]:
    """Each inexact output differentiated alone, as ``jax.grad`` of it does: the other outputs'
    cotangents are symbolic zeros. A backward that crashes on them fails here."""
    labels = p.outputs.diff_labels
    if len(labels) < 2:
        return []
    worst = 0.0
    for k, label in enumerate(labels):
        try:
            man = compiled.alone_vjp(p.p.manual_fn, p.layout, p.out, k, p.diff, p.rest, p.cts[0][k])
        except Exception as e:  # noqa: BLE001 - the finding itself
            note = f"differentiating {label} alone raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return [TransformCheck("zero_cotangents", p.dtype, None, p.tol, False, note)]
        if p.p.reference_fn is None:
            others = [c if j == k else jnp.zeros_like(c) for j, c in enumerate(p.cts[0])]
            ref = p.vjp(p.p.manual_fn, p.diff, others)[1]
        else:
            ref = compiled.alone_vjp(p.p.reference_fn, p.layout, p.out, k, p.diff, p.rest, p.cts[0][k])
        worst = max(worst, tree_err(man, ref, p.ratio))
    note = f"each of {len(labels)} outputs alone"
    return [TransformCheck("zero_cotangents", p.dtype, worst, p.tol, bool(worst <= p.tol), note)]


def check_forward_mode(p: Pass) -> list[TransformCheck]:
    """``jax.jvp`` of the manual function against the reference's; custom_vjp cannot, by design."""
    rng = p.rng("forward_mode")
    tangents = [jnp.asarray(_draw(rng, np.shape(d), d.dtype), d.dtype) for d in p.diff]
    try:
        t_man = compiled.jvp(p.p.manual_fn, p.layout, p.diff, p.rest, tangents)
    except TypeError as e:
        if "custom_vjp" in str(e) or "forward-mode" in str(e):
            return [TransformCheck("forward_mode", p.dtype, None, None, None, KNOWN_LIMITATION_FORWARD_MODE)]
        raise
    if p.p.reference_fn is None:
        return [TransformCheck("forward_mode", p.dtype, None, None, None, "no reference_fn to compare with")]
    err = tree_err(t_man, compiled.jvp(p.p.reference_fn, p.layout, p.diff, p.rest, tangents), p.ratio)
    return [TransformCheck("forward_mode", p.dtype, err, p.tol, bool(err <= p.tol))]


# The transform checks by name, in report order; "grad_of_grad" also yields "grad_of_grad_ct".
CHECKS: dict[str, Callable[[Pass], list[TransformCheck]]] = {
    "forward": check_forward,
    "jit": check_jit,
    "vmap": check_vmap,
    "grad_of_grad": check_grad_of_grad,
    "zero_cotangents": check_zero_cotangents,
    "forward_mode": check_forward_mode,
}


# ------------------------------------------------------------------- Jacobians


def jacobians(p: Pass, failing: list[int]) -> list[JacobianBlock]:
    """Manual and reference ``d out / d leaf`` of the failing leaves, where leaf and output are small."""
    structs = [s for s, ok in zip(p.outputs.structs, p.outputs.inexact) if ok]
    sizes = [int(np.prod(s.shape)) for s in structs]
    if p.p.reference_fn is None or sum(sizes) > JACOBIAN_MAX:
        return []
    leaves = [k for k in failing if 0 < np.size(p.diff[k]) <= JACOBIAN_MAX]
    blocks = []
    for o, (label, s) in enumerate(zip(p.outputs.diff_labels, structs)):
        rows: dict[tuple[int, str], list] = {(k, w): [] for k in leaves for w in ("man", "ref")}
        for e in range(sizes[o]):
            basis = [jnp.zeros(t.shape, t.dtype) for t in structs]
            basis[o] = basis[o].reshape(-1).at[e].set(1).reshape(s.shape)
            for which, fn in (("man", p.p.manual_fn), ("ref", p.p.reference_fn)):
                g = p.vjp(fn, p.diff, basis)[1]
                for k in leaves:
                    rows[k, which].append(np.real(np.asarray(g[k], np.complex128)).reshape(-1).tolist())
        for k in leaves:
            blocks.append(JacobianBlock(p.p.inputs.labels[k], label, p.dtype, rows[k, "man"], rows[k, "ref"]))
    return blocks
