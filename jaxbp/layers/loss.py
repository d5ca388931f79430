r"""Losses: softmax cross-entropy, sigmoid binary cross-entropy and mean squared error, as means.

softmax_cross_entropy, ``logits`` z [N, K], targets y [N, K] (probabilities, or the
one-hot rows of integer labels [N]), ``p = softmax(z)``, ``log p = log_softmax(z)``:

    forward:   L = -(1/N) sum_n sum_c y_nc log p_nc        (log p with the row max subtracted)
    backward:  dlogits = dy/N * (p sum_c y_c - y)           ((p - y)/N for targets summing to 1)
               dlabels = -dy/N * log p                      (probability labels; integer labels: None)

The forward saves ``log p``, so the backward gets ``p = exp(log p)`` without a second
logsumexp. The general ``p sum_c y_c`` keeps the rule exact for targets that do not
sum to 1 (smoothed or scaled labels).

sigmoid_binary_cross_entropy, logits z and targets t of any (equal) shape with M elements:

    forward:   L = (1/M) sum (max(z, 0) - z t + log1p(exp(-|z|)))   (no overflow for large |z|)
    backward:  dlogits  = dy/M * (sigmoid(z) - t)
               dtargets = -dy/M * z

mse_loss, predictions pred and targets t of any (equal) shape with M elements:

    forward:   L = (1/M) sum (pred - t)^2
    backward:  dpred   = 2 dy/M * (pred - t)
               dtarget = -dpred
"""

from __future__ import annotations

from math import prod

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp.layers import _checks
from jaxbp.layers.activation import log_softmax_reference

# ---------------------------------------------------------- softmax_cross_entropy


def _is_int(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.integer)


def _check_cross_entropy(logits, labels):
    layer = "softmax_cross_entropy"
    _checks.require_rank(layer, "logits", logits, 2)
    _checks.require_float(layer, "logits", logits)
    n, k = jnp.shape(logits)
    if n == 0 or k == 0:
        _checks.fail(layer, f"logits must have at least one row and one class, got shape {(n, k)}")
    shapes = f"logits have shape {(n, k)}, labels have shape {tuple(jnp.shape(labels))}"
    if _is_int(labels):
        if tuple(jnp.shape(labels)) != (n,):
            _checks.fail(layer, f"integer labels must have shape ({n},), one class id per row; {shapes}")
        # Only concrete labels can be range-checked; under jit/vmap they are tracers (see the docstring).
        if not isinstance(labels, jax.core.Tracer):
            values = np.asarray(labels)
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= k:
                _checks.fail(layer, f"integer labels must lie in [0, {k}), got values in [{lo}, {hi}]; {shapes}")
    elif jnp.issubdtype(jnp.result_type(labels), jnp.floating):
        if tuple(jnp.shape(labels)) != (n, k):
            _checks.fail(layer, f"probability labels must have the logits' shape {(n, k)}; {shapes}")
    else:
        _checks.fail(
            layer,
            f"labels must be integer class ids or floating-point probabilities, got dtype {jnp.result_type(labels)}",
        )


def _targets(labels, logp):
    """The target rows ``y`` [N, K]: one-hot rows for integer labels, the labels themselves otherwise."""
    if _is_int(labels):
        return jax.nn.one_hot(labels, logp.shape[-1], dtype=logp.dtype)  # out-of-range id -> zero row
    return labels


def _cross_entropy_parts(logits, labels):
    """The loss and the log-softmax it was computed from (the residual of the backward)."""
    logp = log_softmax_reference(logits, axis=-1)  # z - max - log(sum(exp(z - max)))
    nll = -jnp.sum(_targets(labels, logp) * logp, axis=-1)
    return jnp.mean(nll), logp


def softmax_cross_entropy_reference(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. ``logits`` [N, K]; ``labels`` int class ids [N] or probabilities [N, K].

    Returns a scalar. Integer labels are range-checked when they are concrete (eager
    calls, or closed over by ``jax.grad``); under ``jit``/``vmap`` they are tracers and
    cannot be: an out-of-range id there counts as an all-zero target row (no loss, no
    gradient) instead of raising.
    """
    _check_cross_entropy(logits, labels)
    return _cross_entropy_parts(logits, labels)[0]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with a hand-derived VJP. Shapes as :func:`softmax_cross_entropy_reference`.

    Forward ``L = -(1/N) sum y log softmax(z)``; backward ``dlogits = dy/N (p sum_c y_c - y)``,
    ``dlabels = -dy/N log p`` (probability labels; integer labels get no gradient).
    Integer labels are range-checked only when concrete (not under ``jit``/``vmap``).
    """
    _check_cross_entropy(logits, labels)
    return _softmax_cross_entropy(logits, labels)


@jax.custom_vjp
def _softmax_cross_entropy(logits, labels):
    return softmax_cross_entropy_reference(logits, labels)


def _softmax_cross_entropy_fwd(logits, labels):
    loss, logp = _cross_entropy_parts(logits, labels)  # the reference's own computation
    return loss, (logp, labels)


def _softmax_cross_entropy_bwd(res, dy):
    logp, labels = res
    scale = dy / logp.shape[0]
    y = _targets(labels, logp)
    p = jnp.exp(logp)  # softmax from the saved log-softmax: no second logsumexp
    dlogits = scale * (p * jnp.sum(y, axis=-1, keepdims=True) - y)  # dlogits = dy/N (p sum_c y_c - y)
    dlogits = dlogits.astype(logp.dtype)
    if _is_int(labels):
        return dlogits, None  # class ids are not differentiable
    dlabels = -scale * logp  # dlabels = -dy/N log p
    return dlogits, dlabels.astype(labels.dtype)


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)

# --------------------------------------------------- sigmoid_binary_cross_entropy


def _check_binary_cross_entropy(logits, targets):
    layer = "sigmoid_binary_cross_entropy"
    _checks.require_float(layer, "logits", logits)
    _checks.require_float(layer, "targets", targets)
    if jnp.shape(logits) != jnp.shape(targets):
        _checks.fail(
            layer,
            f"targets must have the logits' shape; logits have shape {tuple(jnp.shape(logits))}, "
            f"targets have shape {tuple(jnp.shape(targets))}",
        )
    if prod(jnp.shape(logits)) == 0:
        _checks.fail(layer, f"logits must be non-empty, got shape {tuple(jnp.shape(logits))}")


def sigmoid_binary_cross_entropy_reference(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``targets`` in [0, 1]; any equal shapes.

    ``mean(max(z, 0) - z t + log1p(exp(-|z|)))``: equal to ``-t log s - (1-t) log(1-s)``
    with ``s = sigmoid(z)``, and finite for any finite ``z``. Returns a scalar.
    """
    _check_binary_cross_entropy(logits, targets)
    z, t = logits, targets
    return jnp.mean(jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z))))


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean sigmoid binary cross-entropy with a hand-derived VJP; any equal shapes, returns a scalar.

    Forward ``L = mean(max(z,0) - z t + log1p(exp(-|z|)))``; backward
    ``dlogits = dy/M (sigmoid(z) - t)``, ``dtargets = -dy/M z``.
    """
    _check_binary_cross_entropy(logits, targets)
    return _sigmoid_binary_cross_entropy(logits, targets)


@jax.custom_vjp
def _sigmoid_binary_cross_entropy(logits, targets):
    return sigmoid_binary_cross_entropy_reference(logits, targets)


def _sigmoid_binary_cross_entropy_fwd(logits, targets):
    return sigmoid_binary_cross_entropy_reference(logits, targets), (logits, targets)


def _sigmoid_binary_cross_entropy_bwd(res, dy):
    z, t = res
    scale = dy / z.size
    dlogits = scale * (lax.logistic(z) - t)  # dlogits = dy/M (sigmoid(z) - t)
    dtargets = -scale * z  # dtargets = -dy/M z
    return dlogits.astype(z.dtype), dtargets.astype(t.dtype)


_sigmoid_binary_cross_entropy.defvjp(_sigmoid_binary_cross_entropy_fwd, _sigmoid_binary_cross_entropy_bwd)

# ---------------------------------------------------------------------- mse_loss


def _check_mse(pred, target):
    layer = "mse_loss"
    _checks.require_float(layer, "pred", pred)
    _checks.require_float(layer, "target", target)
    if jnp.shape(pred) != jnp.shape(target):
        _checks.fail(
            layer,
            f"target must have pred's shape; pred has shape {tuple(jnp.shape(pred))}, "
            f"target has shape {tuple(jnp.shape(target))}",
        )
    if prod(jnp.shape(pred)) == 0:
        _checks.fail(layer, f"pred must be non-empty, got shape {tuple(jnp.shape(pred))}")
    if jnp.result_type(pred) != jnp.result_type(target):
        _checks.fail(
            layer, f"pred and target must have one dtype, got {jnp.result_type(pred)} and {jnp.result_type(target)}"
        )


def mse_loss_reference(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error ``mean((pred - target)^2)`` over every element; any equal shapes, returns a scalar.

    As PyTorch ``F.mse_loss(pred, target)`` (``reduction='mean'``).
    """
    _check_mse(pred, target)
    return jnp.mean(jnp.square(pred - target))


def mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error with a hand-derived VJP; any equal shapes, returns a scalar.

    Forward ``L = (1/M) sum (pred - target)^2``; backward ``dpred = 2 dy (pred - target) / M``,
    ``dtarget = -dpred``.
    """
    _check_mse(pred, target)
    return _mse_loss(pred, target)


@jax.custom_vjp
def _mse_loss(pred, target):
    return mse_loss_reference(pred, target)


def _mse_loss_fwd(pred, target):
    return mse_loss_reference(pred, target), (pred - target,)  # the residual r = pred - target


def _mse_loss_bwd(res, dy):
    (r,) = res
    dpred = (2 * dy / r.size) * r  # dpred = 2 dy (pred - target) / M
    dtarget = -dpred  # dtarget = -dpred: the loss depends on the difference only
    return dpred.astype(r.dtype), dtarget.astype(r.dtype)


_mse_loss.defvjp(_mse_loss_fwd, _mse_loss_bwd)
