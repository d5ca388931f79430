r"""Normalisation layers, channels last: batch norm (training mode), layer norm, group norm.

All three standardise ``x`` over a set of axes S and apply a per-channel affine map;
they differ only in S. With M the number of elements a statistic runs over:

    batch_norm:  S = every axis but the channels      (one mu, var per channel)
    layer_norm:  S = the channel axis                 (one mu, var per position; M = C)
    group_norm:  S = the spatial axes and the C/G channels of a group   (one per example and group)

and the same closed-form backward, each mean over S, ``dxhat = dy gamma``:

    dx     = inv_std (dxhat - mean_S(dxhat) - xhat mean_S(dxhat xhat))
    dgamma = sum(dy xhat),  dbeta = sum(dy)      (over every axis but the channels)

Each forward saves ``xhat``, ``inv_std`` and ``gamma``. Batch norm in detail:

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
Layer and group norm cannot take that shortcut: their statistics run across channels, where
``gamma`` varies, so their ``dx`` makes the two means of ``dxhat`` and ``dxhat xhat`` directly.
Group norm takes every mean over S in two stages, channels kept last: over the spatial axes
per channel, then over each group's C/G channels (the mean of equal-sized means is the mean).
XLA:CPU vectorises the first along the channels; one reduction over a grouped [N, ..., G, C/G]
view made the forward and backward 2x slower (64x14x14x128, 32 groups: 18 against 9 ms on a
2-core AMD EPYC, AVX2).

Running statistics for evaluation are the caller's business: :func:`batch_norm_stats`
returns the batch mean and biased variance that the forward normalises with.

For few channels batch norm may read x as rows of ``lanes`` values (``lanes / C`` positions a
row, the per-channel vectors tiled to match, each sum over the rows then over a row's copies of
a channel): the same sums in another order, chosen for speed by
:func:`jaxbp.kernels.norm.batch_norm_lanes` (``lanes = 0``: the channels as they are, the
reference's own ops).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.kernels import norm as kernels
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
    lanes = kernels.batch_norm_lanes(jnp.shape(x))
    return _view_stats(lane_view(x, lanes), jnp.shape(x)[-1], lanes)


def lane_view(v, lanes: int):
    """``v`` [N, ..., C] as rows of ``lanes`` values; itself when ``lanes`` is 0."""
    return v.reshape(-1, lanes) if lanes else v


def along(vec, lanes: int):
    """A per-channel vector [C] laid along the view's rows: tiled to ``lanes``, or itself."""
    return jnp.tile(vec, lanes // vec.shape[0]) if lanes else vec


def channel_sum(v, c: int, lanes: int):
    """Each channel's sum over every axis but the channels, of ``v`` in the view of ``lanes``: [C]."""
    if lanes:
        return jnp.sum(jnp.sum(v, axis=0).reshape(lanes // c, c), axis=0)  # rows, then a row's copies
    return jnp.sum(v, axis=_reduce_axes(v))


def channel_mean(v, c: int, lanes: int):
    """Each channel's mean (``jnp.mean``'s accumulation) of ``v`` in the view of ``lanes``: [C]."""
    if lanes:
        return jnp.mean(jnp.mean(v, axis=0).reshape(lanes // c, c), axis=0)  # equal-sized groups: mean of means
    return jnp.mean(v, axis=_reduce_axes(v))


def _view_stats(v, c: int, lanes: int):
    """Mean and biased variance per channel of ``v`` in the view of ``lanes``."""
    mean = channel_mean(v, c, lanes)
    var = channel_mean(jnp.square(v - along(mean, lanes)), c, lanes)  # two passes: no E[x^2] - E[x]^2
    return mean, var


def _check_eps(layer: str, eps) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        _checks.fail(layer, f"eps must be a Python float, got {eps!r}")
    if not (eps > 0 and math.isfinite(eps)):
        _checks.fail(layer, f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _check_affine(layer: str, x, gamma, beta, eps) -> float:
    """``gamma`` and ``beta`` of shape [C] (x's last axis) and one dtype; returns ``eps`` as a float."""
    _check_input(layer, x)
    c = jnp.shape(x)[-1]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if tuple(jnp.shape(p)) != (c,):
            _checks.fail(
                layer,
                f"{name} must have shape ({c},) to match x of shape {tuple(jnp.shape(x))} (channels last), "
                f"got {tuple(jnp.shape(p))}",
            )
    if jnp.result_type(gamma) != jnp.result_type(beta):
        _checks.fail(
            layer,
            f"gamma and beta must have the same dtype, got {jnp.result_type(gamma)} and {jnp.result_type(beta)}",
        )
    return _check_eps(layer, eps)


def _check_batch_norm(x, gamma, beta, eps) -> float:
    return _check_affine("batch_norm", x, gamma, beta, eps)


def _batch_norm_parts(x, gamma, beta, eps, lanes: int = 0):
    """The output and the residuals of the backward: ``xhat`` (in the view of ``lanes``) and ``inv_std``."""
    v = lane_view(x, lanes)
    mean, var = _view_stats(v, x.shape[-1], lanes)
    inv_std = lax.rsqrt(var + eps)
    xhat = (v - along(mean, lanes)) * along(inv_std, lanes)
    y = along(gamma, lanes) * xhat + along(beta, lanes)
    return y.reshape(x.shape), xhat, inv_std


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
    eps = _check_batch_norm(x, gamma, beta, eps)
    return _batch_norm(x, gamma, beta, eps, kernels.batch_norm_lanes(jnp.shape(x)))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x, gamma, beta, eps, lanes):
    return _batch_norm_parts(x, gamma, beta, eps, lanes)[0]


def _batch_norm_fwd(x, gamma, beta, eps, lanes):
    y, xhat, inv_std = _batch_norm_parts(x, gamma, beta, eps, lanes)  # the reference's ops when lanes is 0
    return y, (xhat, inv_std, gamma)


def _batch_norm_bwd(eps, lanes, res, dy):
    xhat, inv_std, gamma = res  # xhat in the view of lanes
    c = gamma.shape[0]
    m = xhat.size // c
    g = lane_view(dy, lanes)
    dgamma = channel_sum(g * xhat, c, lanes)  # dgamma = sum(dy xhat)
    dbeta = channel_sum(g, c, lanes)  # dbeta = sum(dy)
    # dx = inv_std/M (M dxhat - sum(dxhat) - xhat sum(dxhat xhat)) with dxhat = dy gamma,
    # sum(dxhat) = gamma dbeta (path through the mean), sum(dxhat xhat) = gamma dgamma (the variance)
    dx = along(gamma * inv_std / m, lanes) * (m * g - along(dbeta, lanes) - xhat * along(dgamma, lanes))
    # dy has the promoted dtype of x, gamma and beta; each gradient takes its input's (beta's is gamma's).
    return dx.reshape(dy.shape).astype(xhat.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)

# ------------------------------------------------------------ layer and group norm
# The same standardisation as batch norm over other axes: per position over the channels
# (layer norm), per example and group over the spatial axes and the group's channels (group norm).


def _standardize(x, axes, eps):
    """``xhat`` and ``inv_std`` of ``x`` over ``axes``; ``inv_std`` keeps them as size-1 axes."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)  # biased, two passes
    inv_std = lax.rsqrt(var + eps)
    return (x - mean) * inv_std, inv_std


def _standardize_bwd(xhat, inv_std, dxhat, axes):
    """``dx = inv_std (dxhat - mean(dxhat) - xhat mean(dxhat xhat))``, the means over ``axes``.

    Batch norm's three-term closed form divided through by M: the direct path, the path
    through the mean, the path through the variance.
    """
    mean_dxhat = jnp.mean(dxhat, axis=axes, keepdims=True)  # path through mu
    mean_dxhat_xhat = jnp.mean(dxhat * xhat, axis=axes, keepdims=True)  # path through var
    return inv_std * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)


def _check_layer_norm(x, gamma, beta, eps) -> float:
    return _check_affine("layer_norm", x, gamma, beta, eps)


def _layer_norm_parts(x, gamma, beta, eps):
    """The output and the residuals of the backward: ``xhat`` [..., C] and ``inv_std`` [..., 1]."""
    xhat, inv_std = _standardize(x, (-1,), eps)
    return gamma * xhat + beta, xhat, inv_std


def layer_norm_reference(x: jax.Array, gamma: jax.Array, beta: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    """Layer norm over the last (channel) axis. ``x`` [..., C] (rank >= 2); ``gamma``, ``beta`` [C].

    ``y = gamma (x - mean) / sqrt(var + eps) + beta`` with the mean and biased variance
    of each position's C channels (PyTorch ``F.layer_norm(x, (C,), gamma, beta, eps)``);
    returns ``y``, the shape of ``x``.
    """
    eps = _check_layer_norm(x, gamma, beta, eps)
    return _layer_norm_parts(x, gamma, beta, eps)[0]


def layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    """Layer norm with a hand-derived VJP. Shapes as :func:`layer_norm_reference`.

    Backward, means over the channels: ``dx = inv_std (g - mean(g) - xhat mean(g xhat))``
    with ``g = dy gamma``; ``dgamma = sum(dy xhat)``, ``dbeta = sum(dy)`` over the other axes.
    """
    return _layer_norm(x, gamma, beta, _check_layer_norm(x, gamma, beta, eps))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, gamma, beta, eps):
    return layer_norm_reference(x, gamma, beta, eps=eps)


def _layer_norm_fwd(x, gamma, beta, eps):
    y, xhat, inv_std = _layer_norm_parts(x, gamma, beta, eps)  # the reference's own computation
    return y, (xhat, inv_std, gamma)


def _layer_norm_bwd(eps, res, dy):
    xhat, inv_std, gamma = res
    axes = _reduce_axes(xhat)
    dgamma = jnp.sum(dy * xhat, axis=axes)  # dgamma = sum(dy xhat) over every position
    dbeta = jnp.sum(dy, axis=axes)  # dbeta = sum(dy)
    dx = _standardize_bwd(xhat, inv_std, dy * gamma, (-1,))  # dx = inv_std (g - mean_c g - xhat mean_c(g xhat))
    return dx.astype(xhat.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def _check_group_norm(x, gamma, beta, groups, eps) -> float:
    eps = _check_affine("group_norm", x, gamma, beta, eps)
    c = jnp.shape(x)[-1]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        _checks.fail("group_norm", f"groups must be an int >= 1, got {groups!r}")
    if c % groups:
        _checks.fail(
            "group_norm",
            f"the channels of x (shape {tuple(jnp.shape(x))}, C = {c}) must be divisible by groups ({groups})",
        )
    return eps


def _group_mean(v, groups):
    """mean_S(v) for each example and group of ``v`` [N, ..., C], on every channel of the group:
    [N, 1.., C]. First over the spatial axes, per channel; then over each group's C/G channels."""
    n, c = v.shape[0], v.shape[-1]
    per_channel = jnp.mean(v, axis=tuple(range(1, v.ndim - 1)))  # [N, C]
    per_group = jnp.mean(jnp.reshape(per_channel, (n, groups, c // groups)), axis=-1)  # [N, G]
    return jnp.reshape(jnp.repeat(per_group, c // groups, axis=-1), (n, *(1,) * (v.ndim - 2), c))


def _group_norm_parts(x, gamma, beta, groups, eps):
    """The output and the residuals: ``xhat`` (the shape of x) and ``inv_std`` [N, 1.., C] (each
    channel holds its group's)."""
    xc = x - _group_mean(x, groups)  # x - mu, mu = mean_S(x)
    inv_std = lax.rsqrt(_group_mean(jnp.square(xc), groups) + eps)  # var = mean_S((x - mu)^2), biased
    xhat = xc * inv_std
    return gamma * xhat + beta, xhat, inv_std


def group_norm_reference(
    x: jax.Array, gamma: jax.Array, beta: jax.Array, *, groups: int, eps: float = 1e-5
) -> jax.Array:
    """Group norm. ``x`` [N, ..., C] with C divisible by ``groups``; ``gamma``, ``beta`` [C].

    The C channels split into ``groups`` runs of C/G consecutive channels; each example
    and group is standardised over its spatial positions and its C/G channels (PyTorch
    ``F.group_norm`` on the NCHW view), then ``y = gamma xhat + beta`` per channel.
    """
    eps = _check_group_norm(x, gamma, beta, groups, eps)
    return _group_norm_parts(x, gamma, beta, groups, eps)[0]


def group_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, *, groups: int, eps: float = 1e-5) -> jax.Array:
    """Group norm with a hand-derived VJP. Shapes as :func:`group_norm_reference`.

    Backward, means over each example's group: ``dx = inv_std (g - mean(g) - xhat mean(g xhat))``
    with ``g = dy gamma``; ``dgamma = sum(dy xhat)``, ``dbeta = sum(dy)`` over all but the channels.
    """
    return _group_norm(x, gamma, beta, groups, _check_group_norm(x, gamma, beta, groups, eps))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, gamma, beta, groups, eps):
    return group_norm_reference(x, gamma, beta, groups=groups, eps=eps)


def _group_norm_fwd(x, gamma, beta, groups, eps):
    y, xhat, inv_std = _group_norm_parts(x, gamma, beta, groups, eps)  # the reference's own computation
    return y, (xhat, inv_std, gamma)


def _group_norm_bwd(groups, eps, res, dy):
    xhat, inv_std, gamma = res
    axes = _reduce_axes(xhat)
    dgamma = jnp.sum(dy * xhat, axis=axes)  # dgamma = sum(dy xhat)
    dbeta = jnp.sum(dy, axis=axes)  # dbeta = sum(dy)
    g = dy * gamma  # dxhat = dy gamma
    # dx = inv_std (g - mean_S(g) - xhat mean_S(g xhat)): the direct path, through mu, through var
    dx = inv_std * (g - _group_mean(g, groups) - xhat * _group_mean(g * xhat, groups))
    return dx.astype(xhat.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
