"""The compiled functions every check calls, cached across calls of ``verify_vjp``.

Each is a module-level ``jax.jit`` whose static arguments are the user's function and two
hashable layouts (how the arguments are rebuilt from their leaves, and the output's
structure); every array, the differentiable leaves and the others (labels, keys), is a
traced argument. A second check of the same function at the same shapes, with new values,
reuses the compiled programs: ``assert_vjp`` in a loop or a hypothesis test recompiles
nothing.

:func:`x64_scope` switches ``jax_enable_x64`` for a dtype's pass. JAX 0.10 keeps lowered
programs in a cache whose key misses the x64 flag: tracing a function that closes over a
float64 NumPy array with x64 on, then calling it with x64 off, feeds a float64 buffer to a
float32 program (``RuntimeProgramInputMismatch``). The scope drops that cache whenever it
flips the flag, in and out, so neither the checks nor the user's code after them see it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.xla_flags import fast_compile_options

__all__ = [
    "Layout",
    "OutLayout",
    "alone_vjp",
    "checker_jit",
    "grad_of_grad",
    "jvp",
    "pairing",
    "pairing_batch",
    "primal",
    "vjp",
    "vjp_eager",
    "vmapped_vjp",
    "x64_scope",
]


class _Opaque:
    """An unhashable constant, hashed by identity: its programs are cached for this object only."""

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and other.value is self.value


def _static(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return _Opaque(value)
    return value


@dataclass(frozen=True)
class Layout:
    """How the arguments are rebuilt from their leaves: per argument its treedef and, per leaf,
    ``("d", i)`` (the i-th differentiable leaf), ``("a", i)`` (the i-th other array) or
    ``("c", value)`` (a Python constant, static)."""

    treedefs: tuple
    slots: tuple

    @staticmethod
    def of(args: Sequence[Any], is_diff: Callable[[int, Any], bool], is_array: Callable[[Any], bool]) -> Layout:
        treedefs, slots, nd, na = [], [], 0, 0
        for i, a in enumerate(args):
            leaves, treedef = jax.tree.flatten(a)
            treedefs.append(treedef)
            row = []
            for leaf in leaves:
                if is_diff(i, leaf):
                    row.append(("d", nd))
                    nd += 1
                elif is_array(leaf):
                    row.append(("a", na))
                    na += 1
                else:
                    row.append(("c", _static(leaf)))
            slots.append(tuple(row))
        return Layout(tuple(treedefs), tuple(slots))

    def split(self, args: Sequence[Any]) -> tuple[list, list]:
        """``(differentiable leaves, other array leaves)`` of arguments laid out like the examples."""
        diff, rest = {}, {}
        for a, row in zip(args, self.slots):
            for leaf, (kind, i) in zip(jax.tree.leaves(a), row):
                if kind == "d":
                    diff[i] = leaf
                elif kind == "a":
                    rest[i] = leaf
        return [diff[i] for i in range(len(diff))], [rest[i] for i in range(len(rest))]

    def build(self, diff: Sequence[Any], rest: Sequence[Any]) -> tuple:
        """The arguments with these leaves."""
        args = []
        for treedef, row in zip(self.treedefs, self.slots):
            leaves = [diff[i] if k == "d" else rest[i] if k == "a" else _unwrap(i) for k, i in row]
            args.append(jax.tree.unflatten(treedef, leaves))
        return tuple(args)


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, _Opaque) else value


@dataclass(frozen=True)
class OutLayout:
    """The output's treedef and, per leaf, its shape, dtype and whether it takes a cotangent."""

    treedef: Any
    leaves: tuple  # (shape, dtype name, inexact)

    def full(self, cts: Sequence[Any]) -> Any:
        """The cotangent tree: ``cts`` on the inexact leaves, float0 zeros on the others."""
        it = iter(cts)
        out = [
            jnp.asarray(next(it), dtype) if inexact else np.zeros(shape, dtype=jax.dtypes.float0)
            for shape, dtype, inexact in self.leaves
        ]
        return jax.tree.unflatten(self.treedef, out)

    def pick(self, out: Any) -> list:
        """The inexact leaves of an output tree."""
        return [o for o, (_, _, inexact) in zip(jax.tree.leaves(out), self.leaves) if inexact]


# XLA:CPU spends most of a check compiling programs that then run once on a few hundred
# numbers: they compile with jaxbp.xla_flags.fast_compile_options() (LLVM without its
# optimisation passes, the classic fusion emitters; IEEE semantics unchanged, no fast math).
# Other backends compile with their defaults. Read once: each reading looks jaxlib's version up.
_CPU_OPTIONS = fast_compile_options()


def _target_platform() -> str:
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return getattr(device, "platform", str(device))


def checker_jit(fun: Callable, static_argnums: Sequence[int]) -> Callable:
    """``jax.jit(fun)``, compiled with :func:`jaxbp.xla_flags.fast_compile_options` where the computation
    runs on a CPU."""
    fast = jax.jit(fun, static_argnums=static_argnums, compiler_options=_CPU_OPTIONS)
    plain = jax.jit(fun, static_argnums=static_argnums)

    @functools.wraps(fun)
    def call(*args):
        return (fast if _target_platform() == "cpu" else plain)(*args)

    return call


def pairing(out_layout: OutLayout, out: Any, cts: Sequence[Any]) -> Any:
    """``Re sum(ct * out)`` over the inexact output leaves: the scalar whose gradient is the VJP."""
    terms = [jnp.real(jnp.sum(c * o)) for o, c in zip(out_layout.pick(out), cts)]
    return sum(terms) if terms else jnp.zeros(())


def vjp_eager(fn: Callable, layout: Layout, out_layout: OutLayout, diff, rest, cts) -> tuple:
    """``(output, grads)``: the VJP of ``fn`` at these leaves for the cotangents ``cts``."""
    out, pullback = jax.vjp(lambda *d: fn(*layout.build(d, rest)), *diff)
    return out, list(pullback(out_layout.full(cts)))


vjp = checker_jit(vjp_eager, (0, 1, 2))


@functools.partial(checker_jit, static_argnums=(0, 1))
def primal(fn, layout, diff, rest):
    """``fn`` at these leaves, outside any differentiation (a custom_vjp runs its primal function)."""
    return fn(*layout.build(diff, rest))


@functools.partial(checker_jit, static_argnums=(0, 1, 2))
def vmapped_vjp(fn, layout, out_layout, stacked, rest, cts):
    """The VJP under ``jax.vmap`` over a leading batch axis of the leaves and cotangents."""
    return jax.vmap(lambda d, c: vjp_eager(fn, layout, out_layout, d, rest, c)[1])(stacked, cts)


@functools.partial(checker_jit, static_argnums=(0, 1, 2))
def pairing_batch(fn, layout, out_layout, stacked, rest, cts):
    """The pairing at a stack of points (finite differences): one program for every point."""
    return jax.vmap(lambda d: pairing(out_layout, fn(*layout.build(d, rest)), cts))(stacked)


def _pair(a: Sequence[Any], b: Sequence[Any]) -> Any:
    return sum(jnp.real(jnp.sum(x * y)) for x, y in zip(a, b))


@functools.partial(checker_jit, static_argnums=(0, 1, 2))
def grad_of_grad(fn, layout, out_layout, diff, rest, cts, us):
    """The gradient of ``<VJP(x, ct), u>`` with respect to the leaves and to the cotangent."""
    return jax.grad(lambda d, c: _pair(vjp_eager(fn, layout, out_layout, d, rest, c)[1], us), argnums=(0, 1))(diff, cts)


@functools.partial(checker_jit, static_argnums=(0, 1, 2, 3))
def alone_vjp(fn, layout, out_layout, k, diff, rest, ct):
    """The VJP of the ``k``-th inexact output alone: the others get symbolic-zero cotangents."""
    out, pullback = jax.vjp(lambda *d: out_layout.pick(fn(*layout.build(d, rest)))[k], *diff)
    return list(pullback(ct))


def jvp(fn, layout, diff, rest, tangents):
    """``jax.jvp`` of ``fn`` at these leaves (op by op: custom_vjp raises here, which is the finding)."""
    return jax.jvp(lambda *d: fn(*layout.build(d, rest)), tuple(diff), tuple(tangents))[1]


def _x64_blind_caches() -> list:
    """The ``cache_clear`` of JAX's staging caches whose keys miss the x64 flag (found by bisection
    on JAX 0.10: the traced jaxprs, the jit parameters, the lowered programs); empty where this
    JAX lacks one of them."""
    from jax._src import pjit
    from jax._src.interpreters import partial_eval

    fns = (partial_eval.trace_to_jaxpr, pjit._infer_params_cached, pjit._pjit_lower)
    clears = [getattr(f, "cache_clear", None) for f in fns]
    return clears if all(clears) else []


def _clear_x64_blind_caches() -> None:
    try:
        clears = _x64_blind_caches()
    except (ImportError, AttributeError):
        clears = []
    if not clears:  # another JAX: clear every cache rather than risk the mismatch
        jax.clear_caches()
    for clear in clears:
        clear()  # compiled executables stay in the C++ dispatch caches: repeats recompile nothing


@contextlib.contextmanager
def x64_scope(enabled: bool) -> Iterator[None]:
    """``jax.enable_x64(enabled)``, dropping JAX's lowering cache where the flag flips (module docstring)."""
    flips = bool(jax.config.jax_enable_x64) != enabled
    if flips:
        _clear_x64_blind_caches()
    try:
        with jax.enable_x64(enabled):
            yield
    finally:
        if flips:
            _clear_x64_blind_caches()
