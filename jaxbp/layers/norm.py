r"""Batch normalisation in training mode, channels last.

``x`` [N, C] or [N, H, W, C] (any rank >= 2), ``gamma`` and ``beta`` [C]; every sum and
mean runs over all axes but the last, M = the number of elements per channel:

    forward:   mu = mean(x),  var = mean((x - mu)^2)       (batch statistics, biased variance)
               inv_std = 1 / sqrt(var + eps),  xhat = (x - mu) inv_std
               y = gamma xhat + beta
    backward:  dxhat  = dy gamma
               dx     = inv_std / M * (M dxhat - sum(dxhat) - xhat sum(dxhat xhat))
               dgamma = sum(dy xhat)
               dbeta  = sum(dy)

``dx`` is the three-term closed form: the direct path through ``xhat``, minus the
paths through ``mu`` and ``var``, which every element of a channel shares. So the
gradient of one example depends on the whole batch: it is not a sum of per-example
gradients. The forward saves only ``xhat``, ``inv_std`` and ``gamma``.

``gamma`` is constant within a channel, so it leaves the sums: ``sum(dxhat) = gamma dbeta``
and ``sum(dxhat xhat) = gamma dgamma``. The backward therefore makes two reductions, the
parameter gradients, and reuses them in

               dx     = gamma inv_std / M * (M dy - dbeta - xhat dgamma)

(four reductions otherwise, each over an [N, ..., C] product with a broadcast ``gamma``).

Running statistics for evaluation are the caller's business: :func:`batch_norm_stats`
returns the batch mean and biased variance that the forward normalises with.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers import _checks


def _reduce_axes(x) -> tuple[int, ...]:
    return tuple(range(jnp.ndim(x) - 1))  # every axis but the channels


def _check_input(layer: str, x):
    if jnp.ndim(x) < 2:
        _checks.fail(layer, f"x must have rank >= 2 (channels last), got shape {tuple(jnp.shape(x))}")
    _checks.require_float(layer, "x", x)


def batch_norm_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel batch mean and biased variance of ``x`` [N, ..., C]; each returned array is [C].

    The statistics :func:`batch_norm` normalises with (bit for bit), for updating
    running averages: ``running = momentum * running + (1 - momentum) * stat``.
    A plain function, differentiable by ``jax.grad``; wrap it in ``lax.stop_gradient``
    when the statistics must not carry gradients.
    """
    _check_input("batch_norm_stats", x)
    axes = _reduce_axes(x)
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)  # two passes: no cancellation of E[x^2] - E[x]^2
    return mean, var


def _check_eps(eps) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        _checks.fail("batch_norm", f"eps must be a Python float, got {eps!r}")
    if not (eps > 0 and math.isfinite(eps)):
        _checks.fail("batch_norm", f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _check_batch_norm(x, gamma, beta, eps) -> float:
    _check_input("batch_norm", x)
    c = jnp.shape(x)[-1]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if tuple(jnp.shape(p)) != (c,):
            _checks.fail(
                "batch_norm",
                f"{name} must have shape ({c},) to match x of shape {tuple(jnp.shape(x))} (channels last), "
                f"got {tuple(jnp.shape(p))}",
            )
    if jnp.result_type(gamma) != jnp.result_type(beta):
        _checks.fail(
            "batch_norm",
            f"gamma and beta must have the same dtype, got {jnp.result_type(gamma)} and {jnp.result_type(beta)}",
        )
    return _check_eps(eps)


def _batch_norm_parts(x, gamma, beta, eps):
    """The output and the residuals of the backward: ``xhat`` and ``inv_std``."""
    mean, var = batch_norm_stats(x)
    inv_std = lax.rsqrt(var + eps)
    xhat = (x - mean) * inv_std
    return gamma * xhat + beta, xhat, inv_std


def batch_norm_reference(x: jax.Array, gamma: jax.Array, beta: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """Training-mode batch norm over every axis but the last. ``x`` [N, ..., C]; ``gamma``, ``beta`` [C].

    ``y = gamma (x - mean) / sqrt(var + eps) + beta`` with the batch mean and biased
    variance of each channel; returns ``y``, the shape of ``x``.
    """
    eps = _check_batch_norm(x, gamma, beta, eps)
    return _batch_norm_parts(x, gamma, beta, eps)[0]


def batch_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """Training-mode batch norm with a hand-derived VJP. Shapes as :func:`batch_norm_reference`.

    Forward ``y = gamma xhat + beta``, ``xhat = (x - mu) / sqrt(var + eps)``; backward
    ``dx = inv_std/M (M dxhat - sum(dxhat) - xhat sum(dxhat xhat))`` with ``dxhat = dy gamma``,
    ``dgamma = sum(dy xhat)``, ``dbeta = sum(dy)``.
    """
    return _batch_norm(x, gamma, beta, _check_batch_norm(x, gamma, beta, eps))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x, gamma, beta, eps):
    return batch_norm_reference(x, gamma, beta, eps=eps)


def _batch_norm_fwd(x, gamma, beta, eps):
    y, xhat, inv_std = _batch_norm_parts(x, gamma, beta, eps)  # the reference's own computation
    return y, (xhat, inv_std, gamma)


def _batch_norm_bwd(eps, res, dy):
    xhat, inv_std, gamma = res
    axes = _reduce_axes(xhat)
    m = math.prod(xhat.shape[:-1])
    dgamma = jnp.sum(dy * xhat, axis=axes)  # dgamma = sum(dy xhat)
    dbeta = jnp.sum(dy, axis=axes)  # dbeta = sum(dy)
    # dx = inv_std/M (M dxhat - sum(dxhat) - xhat sum(dxhat xhat)) with dxhat = dy gamma,
    # sum(dxhat) = gamma dbeta (path through the mean), sum(dxhat xhat) = gamma dgamma (the variance)
    dx = (gamma * inv_std / m) * (m * dy - dbeta - xhat * dgamma)
    # dy has the promoted dtype of x, gamma and beta; each gradient takes its input's (beta's is gamma's).
    return dx.astype(xhat.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)
