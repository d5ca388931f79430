"""The checks of one dtype, as methods of one :class:`Probe`.

A :class:`Problem` holds what every dtype shares (the pair of functions, the float64
example inputs split into differentiable leaves, the cotangents, the finite-difference
directions); a :class:`Probe` casts it to one dtype, compiles the manual and reference
VJPs once, and each method is one check that reuses them:

* :meth:`Probe.gradients` - every leaf's VJP against autodiff over several cotangents,
  and against float64 central differences of the reference forward;
* :meth:`Probe.forward`, :meth:`Probe.jit`, :meth:`Probe.vmap`, :meth:`Probe.grad_of_grad`
  (with respect to the inputs and to the cotangent, as ``gradgradcheck``),
  :meth:`Probe.zero_cotangents` (each output alone, the others symbolic zeros) and
  :meth:`Probe.forward_mode` - the transforms;
* :meth:`Probe.explore` - the same compiled VJPs at inputs beyond the examples (scaled
  copies, zeros, ties): same shapes, so nothing recompiles;
* :meth:`Probe.jacobians` - the manual and reference Jacobian blocks of a small failing leaf.

Without a reference function (``reference_fn=None``) the gradients are checked against
finite differences of the manual function's own forward, along every basis direction
for leaves of at most :data:`FD_BASIS_MAX` elements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.loading import first_line
from jaxbp.verify.numerics import cast, directional_error, finite_differences, rel_err, tree_err
from jaxbp.verify.report import (
    KNOWN_LIMITATION_FORWARD_MODE,
    ExploreCheck,
    GradCheck,
    JacobianBlock,
    TransformCheck,
)
from jaxbp.verify.structure import Inputs, Outputs

__all__ = ["EXPLORE_REGIONS", "EXPLORE_TOLERANCE", "FD_BASIS_MAX", "JACOBIAN_MAX", "Problem", "Probe", "pairing"]

# Inputs beyond the examples: positive scalings keep sign-restricted domains valid.
EXPLORE_SCALES = {"x1e-3": 1e-3, "x10": 10.0, "x100": 100.0}
EXPLORE_REGIONS = (*EXPLORE_SCALES, "zeros", "ties")
# Far from the examples a correct VJP can lose digits to cancellation (softmax at 100x large
# logits agrees to ~1e-5): exploration looks for wrong branches and overflow, not last digits.
EXPLORE_TOLERANCE = 1e-3
FD_BASIS_MAX = 64  # without a reference: every basis direction of leaves this small
JACOBIAN_MAX = 64  # Jacobian blocks are printed for leaves and outputs this small


def pairing(outputs: Outputs, out: Any, cts: Sequence[Any]) -> Any:
    """``Re sum(ct * out)`` over the inexact output leaves: the scalar whose gradient is the VJP."""
    terms = [jnp.real(jnp.sum(c * o)) for o, c in zip(outputs.pick(out), cts)]
    return sum(terms) if terms else jnp.zeros(())


def _finite(tree: Any) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree) if np.size(x))


@dataclass(frozen=True)
class Problem:
    """What every dtype's checks share."""

    manual_fn: Callable
    reference_fn: Callable | None  # None: finite differences only
    args64: tuple  # the example arguments, inexact leaves as float64 / complex128
    inputs: Inputs
    cts64: list  # cotangents: per draw, one float64 array per inexact output leaf
    directions: list | None  # finite-difference directions per leaf (None: no FD)
    fd_pairing: Callable | None  # vmapped, jitted (stacked leaves, ct) -> pairing, float64
    transforms: frozenset[str]
    explore: tuple[str, ...]
    jacobian: bool
    random: bool  # a PRNG key among the arguments: finite differences only in float64


class Probe:
    """The checks of one dtype; build it, then call the checks (each returns report rows)."""

    def __init__(self, problem: Problem, dtype: str, tol: float, tol_src: str, fd_tol: float, rng):
        p = self.p = problem
        self.dtype, self.tol, self.tol_src, self.fd_tol, self.rng = dtype, tol, tol_src, fd_tol, rng
        self.args = tuple(jax.tree.map(lambda a: cast(a, dtype), a) for a in p.args64)
        self.diff = p.inputs.values(self.args)
        target = p.reference_fn or p.manual_fn
        self.outputs = Outputs(jax.eval_shape(p.inputs.of(target, self.args), *self.diff))
        self.cts = [[jnp.asarray(c, s.dtype) for c, s in zip(ct, self._inexact_structs())] for ct in p.cts64]
        self.vjp_man = jax.jit(self.vjp_of(p.manual_fn))
        self.vjp_ref = None if p.reference_fn is None else jax.jit(self.vjp_of(p.reference_fn))
        self.results: list = []  # (manual grads, reference grads or None) per cotangent
        self.eager_grads = None

    def _inexact_structs(self) -> list:
        return [s for s, ok in zip(self.outputs.structs, self.outputs.inexact) if ok]

    def vjp_of(self, fn: Callable) -> Callable:
        """``(leaves, cts) -> (output, grads)`` of ``fn`` at this dtype's arguments."""
        f, outputs = self.p.inputs.of(fn, self.args), self.outputs

        def run(diff, cts):
            out, pullback = jax.vjp(f, *diff)
            return out, pullback(outputs.full(cts))

        return run

    # ------------------------------------------------------------- gradients

    def gradients(self) -> list[GradCheck]:
        """Each leaf's VJP vs autodiff (worst over the cotangents) and vs finite differences."""
        self.results = [
            (self.vjp_man(self.diff, ct)[1], None if self.vjp_ref is None else self.vjp_ref(self.diff, ct)[1])
            for ct in self.cts
        ]
        fd_values, fd_note = self._fd_values(self.diff)
        rows = []
        for k, label in enumerate(self.p.inputs.labels):
            rows.append(self._grad_row(k, label, fd_values, fd_note))
        return rows

    def _grad_row(self, k: int, label: str, fd_values, fd_note: str) -> GradCheck:
        shape = tuple(np.shape(self.diff[k]))
        g = GradCheck(label, self.dtype, None, None, (), None, None, self.tol, self.tol_src, shape=shape)
        if self.vjp_ref is not None:
            worst = None
            for g_man, g_ref in self.results:
                abs_err, rel, idx = rel_err(g_man[k], g_ref[k])
                if worst is None or rel > worst[1]:
                    worst = (abs_err, rel, idx, g_man[k], g_ref[k])
            g.max_abs_err, g.max_rel_err, g.worst_index = worst[0], worst[1], worst[2]
            if np.size(worst[3]):
                g.manual_value = np.asarray(worst[3])[worst[2]].item()
                g.reference_value = np.asarray(worst[4])[worst[2]].item()
        if fd_values is not None:
            g_man = self.results[0][0][k]
            g_ref = None if self.vjp_ref is None else self.results[0][1][k]
            g.fd_rel_err = directional_error(g_man, g_ref, self.p.directions[k], fd_values[k])
            g.fd_tolerance = self.fd_tol
            if self.vjp_ref is None and np.size(g_man):
                g.manual_value = np.asarray(g_man).reshape(-1)[0].item()
        if fd_note:
            g.note = fd_note
        if not np.prod(shape):
            g.note = "zero-size: nothing to compare, passes trivially"
            g.max_rel_err = g.max_rel_err if g.max_rel_err is not None else 0.0
        return g

    def _fd_values(self, diff: Sequence[Any]) -> tuple[list | None, str]:
        """Finite differences of the pairing along the directions, at ``diff`` evaluated in float64."""
        if self.p.directions is None:
            return None, ""
        if self.p.random and self.dtype != "float64":
            return None, "no finite differences in this dtype: random arguments draw differently with x64 on"
        with jax.enable_x64(True):
            wide = [np.asarray(d).astype(np.complex128 if np.iscomplexobj(d) else np.float64) for d in diff]
            return finite_differences(self.p.fd_pairing, wide, self.p.cts64[0], self.p.directions), ""

    # ------------------------------------------------------------ transforms

    def forward(self) -> TransformCheck:
        """The manual primal and its fwd rule's output (inside ``jax.vjp``) against the reference forward.

        Op by op, so identical computations give identical bits; keeps the eager
        manual VJP for :meth:`jit`.
        """
        manual = self.p.inputs.of(self.p.manual_fn, self.args)
        out_fwd, self.eager_grads = self.vjp_of(self.p.manual_fn)(self.diff, self.cts[0])
        if self.p.reference_fn is None:
            err = tree_err(out_fwd, manual(*self.diff))
            return TransformCheck("forward", self.dtype, err, self.tol, err <= self.tol, "fwd rule vs primal")
        out_ref = self.p.inputs.of(self.p.reference_fn, self.args)(*self.diff)
        err = max(tree_err(manual(*self.diff), out_ref), tree_err(out_fwd, out_ref))
        return TransformCheck("forward", self.dtype, err, self.tol, err <= self.tol, "primal and fwd rule vs reference")

    def jit(self) -> TransformCheck:
        """The manual VJP op by op and under ``jax.jit`` against autodiff (or each other without a reference)."""
        if self.eager_grads is None:
            self.eager_grads = self.vjp_of(self.p.manual_fn)(self.diff, self.cts[0])[1]
        jit_man, ref = self.results[0]
        if ref is None:
            err = tree_err(self.eager_grads, jit_man)
            return TransformCheck("jit", self.dtype, err, self.tol, err <= self.tol, "manual VJP op by op vs jit")
        err = max(tree_err(self.eager_grads, ref), tree_err(jit_man, ref))
        return TransformCheck(
            "jit", self.dtype, err, self.tol, err <= self.tol, "manual VJP op by op and jit vs autodiff"
        )

    def vmap(self, batch: int = 3) -> TransformCheck:
        """Per-example VJPs of a batch under ``vmap`` against a Python loop over the examples.

        The batch stacks the leaves scaled by 1, 1.25, 1.5, ... (scaling keeps ties and
        zeros where they were); the other arguments are shared.
        """
        stacked = [jnp.stack([d * (1 + 0.25 * b) for b in range(batch)]) for d in self.diff]
        cts = [jnp.asarray(self._draw((batch, *s.shape), s.dtype), s.dtype) for s in self._inexact_structs()]
        batched = jax.jit(jax.vmap(self.vjp_of(self.p.manual_fn)))(stacked, cts)[1]
        loop_fn = self.vjp_ref or self.vjp_man
        loop = [loop_fn([s[b] for s in stacked], [c[b] for c in cts])[1] for b in range(batch)]
        loop = jax.tree.map(lambda *xs: jnp.stack(xs), *loop)
        err = tree_err(batched, loop)
        return TransformCheck(
            "vmap", self.dtype, err, self.tol, err <= self.tol, f"vmap over {batch} examples vs a loop"
        )

    def _draw(self, shape, dtype) -> np.ndarray:
        x = self.rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * self.rng.standard_normal(shape)
        return x

    def grad_of_grad(self) -> list[TransformCheck]:
        """The gradient of ``<VJP(x, ct), u>`` with respect to ``x`` and to ``ct``, manual vs reference.

        The second is what ``torch.autograd.gradgradcheck`` adds: a backward that is right
        in value but wrong in how it depends on the cotangent (``stop_gradient(dy)``) fails it.
        The VJP is linear in ``ct``, so that gradient ``h`` must satisfy ``<h, w> = <VJP(x, w), u>``
        for every ``w``: checked at the cotangents whose VJPs :meth:`gradients` already has
        (the reference's, or without one the manual's, which finite differences checked).
        """
        us = [jnp.asarray(self._draw(np.shape(d), d.dtype), d.dtype) for d in self.diff]

        def pair(a, b):
            return sum(jnp.real(jnp.sum(x * y)) for x, y in zip(a, b))

        vjp_man = self.vjp_of(self.p.manual_fn)
        man_x, man_ct = jax.jit(jax.grad(lambda d, c: pair(vjp_man(d, c)[1], us), argnums=(0, 1)))(
            self.diff, self.cts[0]
        )
        got = np.array([float(pair(man_ct, ct)) for ct in self.cts])
        want = np.array([float(pair(ref if ref is not None else man, us)) for man, ref in self.results])
        scale = float(np.max(np.abs(np.concatenate([got, want]))))
        err_ct = float(np.max(np.abs(got - want))) / scale if scale > 0 else 0.0
        err_ct = err_ct if np.isfinite(err_ct) else float("inf")
        note_ct = f"<d/dct, w> vs <VJP(x, w), u> at {len(self.cts)} cotangents w"
        row_ct = TransformCheck("grad_of_grad_ct", self.dtype, err_ct, self.tol, err_ct <= self.tol, note_ct)
        if self.p.reference_fn is None:
            note = "needs reference_fn (finite differences check first order only)"
            return [TransformCheck("grad_of_grad", self.dtype, None, None, None, note), row_ct]
        vjp_ref = self.vjp_of(self.p.reference_fn)
        ct = self.cts[0]
        ref_x = jax.jit(jax.grad(lambda d: pair(vjp_ref(d, ct)[1], us)))(self.diff)
        err = tree_err(man_x, ref_x)
        return [TransformCheck("grad_of_grad", self.dtype, err, self.tol, err <= self.tol), row_ct]

    def zero_cotangents(self) -> TransformCheck | None:
        """Each inexact output differentiated alone, as ``jax.grad`` of it does: the other outputs'
        cotangents are symbolic zeros. A backward that crashes on them fails here. None for one output."""
        labels = self.outputs.diff_labels
        if len(labels) < 2:
            return None
        worst = 0.0
        for k, label in enumerate(labels):

            def alone(fn, k=k):
                f = self.p.inputs.of(fn, self.args)
                pick = self.outputs.pick
                return jax.jit(lambda d, c: jax.vjp(lambda *x: pick(f(*x))[k], *d)[1](c))

            try:
                man = alone(self.p.manual_fn)(self.diff, self.cts[0][k])
            except Exception as e:  # noqa: BLE001 - the finding itself
                note = f"differentiating {label} alone raised {type(e).__name__}: {first_line(e)}"
                return TransformCheck("zero_cotangents", self.dtype, None, self.tol, False, note)
            if self.p.reference_fn is None:
                others = [c if j == k else jnp.zeros_like(c) for j, c in enumerate(self.cts[0])]
                ref = self.vjp_man(self.diff, others)[1]
            else:
                ref = alone(self.p.reference_fn)(self.diff, self.cts[0][k])
            worst = max(worst, tree_err(man, ref))
        note = f"each of {len(labels)} outputs alone"
        return TransformCheck("zero_cotangents", self.dtype, worst, self.tol, worst <= self.tol, note)

    def forward_mode(self) -> TransformCheck:
        """``jax.jvp`` of the manual function against the reference's; custom_vjp cannot, by design."""
        tangents = tuple(jnp.asarray(self._draw(np.shape(d), d.dtype), d.dtype) for d in self.diff)

        def jvp(fn):
            return jax.jvp(self.p.inputs.of(fn, self.args), tuple(self.diff), tangents)[1]

        try:
            t_man = jvp(self.p.manual_fn)
        except TypeError as e:
            if "custom_vjp" in str(e) or "forward-mode" in str(e):
                return TransformCheck("forward_mode", self.dtype, None, None, None, KNOWN_LIMITATION_FORWARD_MODE)
            raise
        if self.p.reference_fn is None:
            return TransformCheck("forward_mode", self.dtype, None, None, None, "no reference_fn to compare with")
        err = tree_err(t_man, jvp(self.p.reference_fn))
        return TransformCheck("forward_mode", self.dtype, err, self.tol, err <= self.tol)

    # ------------------------------------------------------------ exploration

    def explore(self) -> list[ExploreCheck]:
        """The compiled VJPs at each region of :data:`EXPLORE_REGIONS` asked for (same shapes, no recompilation)."""
        rows = []
        first = self.p.inputs.leaves[0].arg if self.p.inputs.leaves else None
        for region in self.p.explore:
            # scalings move every leaf; zeros and ties only the first argument's (the input, not weights or targets)
            diff = [
                self._moved(region, d) if region in EXPLORE_SCALES or leaf.arg == first else d
                for leaf, d in zip(self.p.inputs.leaves, self.diff)
            ]
            try:
                rows.append(self._explore_at(region, diff))
            except Exception as e:  # noqa: BLE001 - report, do not crash
                note = f"raised {type(e).__name__}: {first_line(e)}"
                rows.append(ExploreCheck(region, self.dtype, None, max(self.tol, EXPLORE_TOLERANCE), False, note=note))
        return rows

    @staticmethod
    def _moved(region: str, d: Any) -> Any:
        if region in EXPLORE_SCALES:
            return d * jnp.asarray(EXPLORE_SCALES[region], d.dtype)
        if region == "zeros":
            return jnp.zeros_like(d)
        return jnp.round(d)  # ties: integers repeat

    def _explore_at(self, region: str, diff: list) -> ExploreCheck:
        ct, tol, fd_tol = self.cts[0], max(self.tol, EXPLORE_TOLERANCE), max(self.fd_tol, EXPLORE_TOLERANCE)
        out_man, g_man = self.vjp_man(diff, ct)
        if self.vjp_ref is None:
            fd_values, _ = self._fd_values(diff)
            if fd_values is None:
                return ExploreCheck(region, self.dtype, None, fd_tol, None, note="no finite differences here")
            if not all(np.all(np.isfinite(v)) for v in fd_values):
                return ExploreCheck(region, self.dtype, None, fd_tol, None, note="forward not finite: skipped")
            errs = [directional_error(g, None, v, f) for g, v, f in zip(g_man, self.p.directions, fd_values)]
            k = int(np.argmax(errs)) if errs else 0
            err = max(errs, default=0.0)
            arg = self.p.inputs.labels[k] if errs else ""
            return ExploreCheck(region, self.dtype, err, fd_tol, err <= fd_tol, arg=arg, note="vs FD")
        out_ref, g_ref = self.vjp_ref(diff, ct)
        if not (_finite(self.outputs.pick(out_ref)) and _finite(g_ref)):
            return ExploreCheck(region, self.dtype, None, tol, None, note="reference not finite here: skipped")
        worst = None
        for k, (a, b) in enumerate(zip(g_man, g_ref)):
            abs_err, rel, idx = rel_err(a, b)
            if worst is None or rel > worst[0]:
                worst = (rel, k, idx, a, b)
        if worst is None:
            return ExploreCheck(region, self.dtype, 0.0, tol, True)
        rel, k, idx, a, b = worst
        row = ExploreCheck(region, self.dtype, rel, tol, rel <= tol, self.p.inputs.labels[k], idx)
        if np.size(a):
            row.manual_value, row.reference_value = np.asarray(a)[idx].item(), np.asarray(b)[idx].item()
        if not row.passed:
            self._arbitrate(row, diff, g_man, fd_tol)
        return row

    def _arbitrate(self, row: ExploreCheck, diff: list, g_man: Sequence[Any], fd_tol: float) -> None:
        """Where manual and autodiff disagree, finite differences decide: autodiff of a reference written
        with ``abs``/``maximum`` is off exactly at their kinks (``log1p(exp(-|z|))`` at z = 0) even where the
        function itself is smooth. Passes the row, with a note, if the manual VJP agrees with them."""
        fd_values, _ = self._fd_values(diff)
        if fd_values is None or not all(np.all(np.isfinite(v)) for v in fd_values):
            return
        errs = [directional_error(g, None, v, f) for g, v, f in zip(g_man, self.p.directions, fd_values)]
        if max(errs, default=0.0) <= fd_tol:
            row.passed = True
            row.note = (
                f"autodiff of the reference differs by {row.error:.1e} here but the manual VJP agrees with "
                f"finite differences ({max(errs):.1e}): a kink in the reference's formula?"
            )

    # ------------------------------------------------------------- Jacobians

    def jacobians(self, failing: Sequence[int]) -> list[JacobianBlock]:
        """Manual and reference ``d out / d leaf`` of the failing leaves, where leaf and output are small."""
        structs = self._inexact_structs()
        sizes = [int(np.prod(s.shape)) for s in structs]
        if self.vjp_ref is None or sum(sizes) > JACOBIAN_MAX:
            return []
        leaves = [k for k in failing if 0 < np.size(self.diff[k]) <= JACOBIAN_MAX]
        if not leaves:
            return []
        blocks = []
        for o, (label, s) in enumerate(zip(self.outputs.diff_labels, structs)):
            rows_man: dict[int, list] = {k: [] for k in leaves}
            rows_ref: dict[int, list] = {k: [] for k in leaves}
            for e in range(sizes[o]):
                basis = [jnp.zeros(t.shape, t.dtype) for t in structs]
                basis[o] = basis[o].reshape(-1).at[e].set(1).reshape(s.shape)
                g_man, g_ref = self.vjp_man(self.diff, basis)[1], self.vjp_ref(self.diff, basis)[1]
                for k in leaves:
                    rows_man[k].append(np.real(np.asarray(g_man[k], np.complex128)).reshape(-1).tolist())
                    rows_ref[k].append(np.real(np.asarray(g_ref[k], np.complex128)).reshape(-1).tolist())
            for k in leaves:
                blocks.append(JacobianBlock(self.p.inputs.labels[k], label, self.dtype, rows_man[k], rows_ref[k]))
        return blocks
