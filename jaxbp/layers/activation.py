r"""Element-wise activations and the softmax family.

Forward and backward (``dy`` is the upstream cotangent, ``dx`` what we return):

    relu:        y = x if x > 0 else 0                dx = dy * [x > 0]        (0 at x == 0, as jax.nn.relu)
    leaky_relu:  y = x if x >= 0 else a x             dx = dy * (1 if x >= 0 else a)
    sigmoid:     y = 1 / (1 + exp(-x))                dx = dy * y (1 - y)
    tanh:        y = tanh(x)                          dx = dy * (1 - y^2)
    softmax:     y_i = exp(x_i) / sum_j exp(x_j)      dx = y * (dy - sum_j dy_j y_j)
    log_softmax: y_i = x_i - logsumexp(x)             dx = dy - softmax(x) * sum_j dy_j

The sigmoid, tanh and softmax backwards are written in terms of the *output*
``y``, so the forward saves ``y`` and nothing else: no second exp in the backward.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers import _checks

# --------------------------------------------------------------------------- relu


def relu_reference(x: jax.Array) -> jax.Array:
    """ReLU, ``max(x, 0)``, any shape. Gradient 0 at exactly 0 (``where`` picks the 0 branch)."""
    return jnp.where(x > 0, x, jnp.zeros_like(x))


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """ReLU with a hand-derived VJP. ``x``: any shape; returns the same shape.

    Forward ``y = max(x, 0)``; backward ``dx = dy * [x > 0]``.
    """
    return relu_reference(x)


def _relu_fwd(x):
    y = relu_reference(x)
    return y, (y,)  # y > 0 exactly where x > 0: the output is the mask


def _relu_bwd(res, dy):
    (y,) = res
    return (jnp.where(y > 0, dy, jnp.zeros_like(dy)),)  # dx = dy * [x > 0]


relu.defvjp(_relu_fwd, _relu_bwd)

# --------------------------------------------------------------------- leaky_relu


def _check_slope(negative_slope) -> float:
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        _checks.fail("leaky_relu", f"negative_slope must be a Python float, got {negative_slope!r}")
    return float(negative_slope)


def leaky_relu_reference(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """Leaky ReLU, ``x if x >= 0 else negative_slope * x`` (as jax.nn.leaky_relu)."""
    negative_slope = _check_slope(negative_slope)
    return jnp.where(x >= 0, x, negative_slope * x)


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """Leaky ReLU with a hand-derived VJP. ``x``: any shape; ``negative_slope`` a Python float.

    Forward ``y = x if x >= 0 else a x``; backward ``dx = dy * (1 if x >= 0 else a)``.
    """
    return _leaky_relu(x, _check_slope(negative_slope))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _leaky_relu(x, negative_slope):
    return leaky_relu_reference(x, negative_slope)


def _leaky_relu_fwd(x, negative_slope):
    return leaky_relu_reference(x, negative_slope), (x >= 0,)


def _leaky_relu_bwd(negative_slope, res, dy):
    (positive,) = res
    return (jnp.where(positive, dy, negative_slope * dy),)  # dx = dy * (1 | a)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)

# ------------------------------------------------------------------------ sigmoid


def sigmoid_reference(x: jax.Array) -> jax.Array:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, any shape."""
    return lax.logistic(x)


@jax.custom_vjp
def sigmoid(x: jax.Array) -> jax.Array:
    """Sigmoid with a hand-derived VJP. Forward ``y = 1/(1+exp(-x))``; backward ``dx = dy y (1-y)``."""
    return sigmoid_reference(x)


def _sigmoid_fwd(x):
    y = sigmoid_reference(x)
    return y, (y,)


def _sigmoid_bwd(res, dy):
    (y,) = res
    return (dy * y * (1 - y),)  # dx = dy * y (1 - y)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)

# --------------------------------------------------------------------------- tanh


def tanh_reference(x: jax.Array) -> jax.Array:
    """Hyperbolic tangent, any shape."""
    return jnp.tanh(x)


@jax.custom_vjp
def tanh(x: jax.Array) -> jax.Array:
    """Tanh with a hand-derived VJP. Forward ``y = tanh(x)``; backward ``dx = dy (1 - y^2)``."""
    return tanh_reference(x)


def _tanh_fwd(x):
    y = tanh_reference(x)
    return y, (y,)


def _tanh_bwd(res, dy):
    (y,) = res
    return (dy * (1 - y * y),)  # dx = dy * (1 - y^2)


tanh.defvjp(_tanh_fwd, _tanh_bwd)

# ------------------------------------------------------------------------ softmax


def _axis(layer: str, x, axis: int) -> int:
    if jnp.ndim(x) == 0:
        _checks.fail(layer, "x must have rank >= 1, got a scalar")
    return _checks.check_axis(layer, axis, jnp.ndim(x))


def softmax_reference(x: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax along ``axis``; the max is subtracted first for stability."""
    axis = _axis("softmax", x, axis)
    shifted = x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    e = jnp.exp(shifted)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax along ``axis`` with a hand-derived VJP. ``x``: any shape of rank >= 1.

    Forward ``y_i = exp(x_i) / sum_j exp(x_j)``; backward ``dx = y * (dy - sum_j dy_j y_j)``
    (the Jacobian ``diag(y) - y y^T`` applied to ``dy`` without forming it).
    """
    return _softmax(x, _axis("softmax", x, axis))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax(x, axis):
    return softmax_reference(x, axis)


def _softmax_fwd(x, axis):
    y = softmax_reference(x, axis)
    return y, (y,)


def _softmax_bwd(axis, res, dy):
    (y,) = res
    return (y * (dy - jnp.sum(dy * y, axis=axis, keepdims=True)),)  # dx = y (dy - <dy, y>)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)

# -------------------------------------------------------------------- log_softmax


def log_softmax_reference(x: jax.Array, axis: int = -1) -> jax.Array:
    """Log-softmax along ``axis``: ``x - logsumexp(x)``, computed stably."""
    axis = _axis("log_softmax", x, axis)
    shifted = x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Log-softmax along ``axis`` with a hand-derived VJP. ``x``: any shape of rank >= 1.

    Forward ``y = x - logsumexp(x)``; backward ``dx = dy - softmax(x) * sum_j dy_j``.
    """
    return _log_softmax(x, _axis("log_softmax", x, axis))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_softmax(x, axis):
    return log_softmax_reference(x, axis)


def _log_softmax_fwd(x, axis):
    y = log_softmax_reference(x, axis)
    return y, (y,)


def _log_softmax_bwd(axis, res, dy):
    (y,) = res
    return (dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True),)  # dx = dy - p sum(dy)


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)
