"""The same checks at other shapes: backwards that only work at the example's shape.

A backward that divides by ``shape[0]`` where it means ``shape[1]`` passes at a square
example; one that takes ``db = dy[0]`` instead of ``dy.sum(0)`` passes at batch 1. Neither
``jax.test_util.check_grads`` nor ``torch.autograd.gradcheck`` varies shapes: they check the
inputs they are given. :func:`verify_shapes` asks the user's factory for arguments at
several shapes and runs :func:`jaxbp.verify_vjp` at each:

.. code-block:: python

    def make_args(shape, seed):
        rng = np.random.default_rng(seed)
        return rng.standard_normal(shape), rng.standard_normal(shape[-1:])

    jaxbp.verify.verify_shapes(add_bias, add_bias_reference, make_args, rank=2)

The default shapes (:func:`default_shapes`) put a batch of 1 first, then sides that all
differ (so no axis can stand in for another) and odd sizes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jaxbp.verify.api import verify_vjp
from jaxbp.verify.report import Report

__all__ = ["ShapesReport", "default_shapes", "verify_shapes"]

_SIDES = (2, 3, 5, 7, 4, 6)


def default_shapes(rank: int) -> list[tuple[int, ...]]:
    """Shapes of ``rank`` axes that expose shape bugs: batch 1, then every side distinct, then the
    sides rotated (each axis takes another's size), all small."""
    if rank < 0:
        raise ValueError(f"verify_shapes: rank must be >= 0, got {rank}")
    if rank == 0:
        return [()]
    sides = _SIDES[:rank] if rank <= len(_SIDES) else tuple(2 + (i % 5) for i in range(rank))
    distinct = tuple(sides)
    rotated = distinct[1:] + distinct[:1]
    batch1 = (1, *distinct[1:]) if rank > 1 else (1,)
    return list(dict.fromkeys([batch1, distinct, rotated]))


@dataclass
class ShapesReport:
    """One :class:`Report` per shape; ``passed`` when every shape passes."""

    name: str
    reports: list[tuple[tuple[int, ...], Report]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors and bool(self.reports) and all(r.passed for _, r in self.reports)

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"{self.name} at other shapes: {status} ({len(self.reports)} shapes checked)"]
        for shape, r in self.reports:
            lines.append(f"  shape {shape}: {'ok' if r.passed else 'FAIL ' + r.headline()}")
        lines += [f"  ERROR {e}" for e in self.errors]
        for shape, r in self.reports:
            if not r.passed:
                lines += ["", f"at shape {shape}:", r.render(derivation=False)]
        return "\n".join(lines)

    def raise_if_failed(self) -> ShapesReport:
        """``AssertionError`` naming the first failing shape and check, then the whole report."""
        if not self.passed:
            first = next(((s, r) for s, r in self.reports if not r.passed), None)
            head = self.errors[0] if first is None else f"at shape {first[0]}: {first[1].headline()}"
            raise AssertionError(f"{self.name}: FAIL {head}\n{self}")
        return self


def verify_shapes(
    manual_fn: Callable,
    reference_fn: Callable | None,
    make_args: Callable[..., Any],
    shapes: Sequence[Sequence[int]] | None = None,
    *,
    rank: int = 2,
    seed: int = 0,
    **options: Any,
) -> ShapesReport:
    """:func:`jaxbp.verify_vjp` at every shape of ``shapes`` (default :func:`default_shapes` of ``rank``).

    ``make_args(shape, seed)`` returns the arguments at that shape (a tuple, or one argument);
    a factory with one parameter is called with the shape alone. ``options`` go to
    ``verify_vjp``; ``transforms`` and ``explore`` default to off here (first order at each
    shape is what shapes change; each shape compiles anew).
    """
    options.setdefault("transforms", False)
    options.setdefault("explore", False)
    name = options.get("name") or getattr(manual_fn, "__name__", "function")
    report = ShapesReport(name)
    try:
        takes_seed = len(inspect.signature(make_args).parameters) >= 2
    except (TypeError, ValueError):
        takes_seed = True
    for shape in shapes if shapes is not None else default_shapes(rank):
        shape = tuple(int(s) for s in shape)
        try:
            args = make_args(shape, seed) if takes_seed else make_args(shape)
        except Exception as e:  # noqa: BLE001 - a user's factory may raise anything
            report.errors.append(f"make_args{shape} raised {type(e).__name__}: {e}")
            continue
        args = args if isinstance(args, tuple) else (args,)
        report.reports.append((shape, verify_vjp(manual_fn, reference_fn, *args, seed=seed, **options)))
    return report
