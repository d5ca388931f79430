"""A user's own layer in a jaxbp model: :func:`Custom`, a hand-derived function next to its plain-JAX twin."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.loading import first_line
from jaxbp.models.layers import Layer, ModelError, Shape, gradients_of, key_rng

__all__ = ["Custom"]


def Custom(
    manual: Callable,
    reference: Callable,
    *,
    init: Callable[[jax.Array, Shape], tuple[Shape, Any]] | None = None,
    name: str = "custom",
) -> Layer:
    """A user's own layer: ``manual`` (usually a ``jax.custom_vjp`` function) when the model
    runs on hand-derived ops, ``reference`` (plain JAX) when it runs on :mod:`jaxbp.autodiff`.

    Which one runs is decided per call by :func:`gradients_of` of the ``ops`` the model is
    applied with: :mod:`jaxbp.autodiff` carries ``GRADIENTS = "autodiff"`` and gets
    ``reference``; :mod:`jaxbp.manual` (and any namespace without the marker, such as a
    test's) gets ``manual``. So ``grad="compare"`` compares the user's backward with
    ``jax.grad`` of the reference.

    Without ``init`` the layer has no parameters: ``fn(x)``, x [N, ...]; the output shape
    comes from ``jax.eval_shape``. With ``init(key, input_shape) -> (output_shape, params)``
    (``key`` a ``jax.random.key``, shapes per example) it is parametric: ``fn(params, x)``,
    ``params`` any pytree of arrays, filed in the model's params under ``<name><n>``.
    ``init`` of the model evaluates both functions' output shapes (no compilation): a
    shape or dtype that differs between them, or from what ``init`` declares, is a
    :class:`ModelError` naming the layer.
    """
    if not (isinstance(name, str) and name.isidentifier()):
        raise ModelError(f"Custom: name must be a Python identifier (it names the parameters), got {name!r}")
    for label, fn in (("manual", manual), ("reference", reference), ("init", init)):
        if fn is not None and not callable(fn):
            raise ModelError(f"Custom layer {name!r}: {label} must be callable, got a {type(fn).__name__}")

    def call(fn, params, x):
        return fn(params, x) if init is not None else fn(x)

    def init_fn(key, input_shape):
        input_shape = tuple(input_shape)
        declared, params = (None, {}) if init is None else _custom_init(name, init, key, input_shape)
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        out = {}
        for label, fn in (("manual", manual), ("reference", reference)):
            try:
                out[label] = jax.eval_shape(partial(call, fn), params, x)
            except (Exception, SystemExit) as e:  # the user's function may raise anything
                raise ModelError(
                    f"Custom layer {name!r}: {label} fails on input {x.shape} {x.dtype}: "
                    f"{type(e).__name__}: {first_line(e)}"
                ) from e
            if not isinstance(out[label], jax.ShapeDtypeStruct):
                raise ModelError(f"Custom layer {name!r}: {label} must return one array, got {out[label]}")
        m, r = out["manual"], out["reference"]
        if (m.shape, m.dtype) != (r.shape, r.dtype):
            raise ModelError(
                f"Custom layer {name!r}: manual gives {m.shape} {m.dtype} but reference gives "
                f"{r.shape} {r.dtype} for input {x.shape} {x.dtype}"
            )
        if declared is not None and tuple(declared) != m.shape[1:]:
            raise ModelError(
                f"Custom layer {name!r}: init declares output shape {tuple(declared)}, the layer gives {m.shape[1:]}"
            )
        return m.shape[1:], params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        fn = reference if gradients_of(ops) == "autodiff" else manual
        return call(fn, params, x), {}

    return Layer(name, init_fn, apply)


def _custom_init(name: str, init: Callable, key: Any, input_shape: Shape) -> tuple[Shape, Any]:
    """``(declared output shape, params)`` from a :func:`Custom` layer's ``init``, checked."""
    try:
        result = init(jax.random.key(key_rng(key).integers(2**31)), input_shape)
    except (Exception, SystemExit) as e:  # the user's function may raise anything
        raise ModelError(
            f"Custom layer {name!r}: init raised {type(e).__name__}: {first_line(e)} (input shape {input_shape})"
        ) from e
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelError(f"Custom layer {name!r}: init must return (output_shape, params), got {reprlib.repr(result)}")
    declared, params = result
    if not (isinstance(declared, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in declared)):
        raise ModelError(
            f"Custom layer {name!r}: init's output_shape must be a tuple of ints, got {reprlib.repr(declared)}"
        )
    return tuple(int(d) for d in declared), params
