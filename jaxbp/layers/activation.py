r"""Element-wise activations and the softmax family.

Forward and backward (``dy`` is the upstream cotangent, ``dx`` what we return):

    relu:        y = x if x > 0 else 0                dx = dy * [x > 0]        (0 at x == 0, as jax.nn.relu)
    leaky_relu:  y = x if x >= 0 else a x             dx = dy * (1 if x >= 0 else a)
    sigmoid:     y = 1 / (1 + exp(-x))                dx = dy * y (1 - y)
    tanh:        y = tanh(x)                          dx = dy * (1 - y^2)
    softmax:     y_i = exp(x_i) / sum_j exp(x_j)      dx = y * (dy - sum_j dy_j y_j)
    log_softmax: y_i = x_i - logsumexp(x)             dx = dy - softmax(x) * sum_j dy_j
    gelu:        y = x Phi(x)                         dx = dy * (Phi(x) + x phi(x))
                 (Phi, phi: the standard normal cdf and pdf; Phi(x) = (1 + erf(x / sqrt 2)) / 2)
    gelu, tanh:  y = x/2 (1 + t), t = tanh(u),        dx = dy * (1/2 (1 + t) + x/2 (1 - t^2) u')
                 u = sqrt(2/pi) (x + 0.044715 x^3),   u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    silu:        y = x s, s = sigmoid(x)              dx = dy * s (1 + x (1 - s))

The sigmoid, tanh and softmax backwards are written in terms of the *output*
``y``, so the forward saves ``y`` and nothing else: no second exp in the backward.
GELU and SiLU save ``x`` (their derivatives are not functions of ``y``) and recompute
``Phi``/``t``/``s`` from it in the backward.
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

# --------------------------------------------------------------------------- gelu

_SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi)
_GELU_CUBIC = 0.044715


def _check_approximate(approximate) -> bool:
    if not isinstance(approximate, bool):
        _checks.fail("gelu", f"approximate must be a Python bool (False: erf, True: tanh), got {approximate!r}")
    return approximate


def _gelu_tanh_inner(x):
    """``u = sqrt(2/pi) (x + 0.044715 x^3)``, the argument of the tanh form."""
    return _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)


def gelu_reference(x: jax.Array, approximate: bool = False) -> jax.Array:
    """GELU, any shape: ``x Phi(x)`` (``approximate=False``, the erf form) or its tanh approximation.

    As PyTorch ``F.gelu(x, approximate='none' | 'tanh')``.
    """
    if _check_approximate(approximate):
        return 0.5 * x * (1 + jnp.tanh(_gelu_tanh_inner(x)))
    return 0.5 * x * (1 + lax.erf(x * _SQRT_HALF))


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """GELU with a hand-derived VJP. ``x``: any shape; ``approximate`` a Python bool.

    erf form: ``y = x Phi(x)``, ``dx = dy (Phi(x) + x phi(x))``; tanh form:
    ``y = x/2 (1 + t)``, ``t = tanh(u)``, ``dx = dy (1/2 (1 + t) + x/2 (1 - t^2) u'(x))``.
    """
    return _gelu(x, _check_approximate(approximate))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gelu(x, approximate):
    return gelu_reference(x, approximate)


def _gelu_fwd(x, approximate):
    return gelu_reference(x, approximate), (x,)  # the derivative needs x itself, not y


def _gelu_bwd(approximate, res, dy):
    (x,) = res
    if approximate:
        t = jnp.tanh(_gelu_tanh_inner(x))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)  # u'(x)
        return (dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du),)  # dx = dy (1/2 (1+t) + x/2 (1-t^2) u')
    cdf = 0.5 * (1 + lax.erf(x * _SQRT_HALF))  # Phi(x)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)  # phi(x)
    return (dy * (cdf + x * pdf),)  # dx = dy (Phi(x) + x phi(x))


_gelu.defvjp(_gelu_fwd, _gelu_bwd)

# --------------------------------------------------------------------------- silu


def silu_reference(x: jax.Array) -> jax.Array:
    """SiLU (swish), ``x sigmoid(x)``, any shape (PyTorch ``F.silu``)."""
    return x * lax.logistic(x)


@jax.custom_vjp
def silu(x: jax.Array) -> jax.Array:
    """SiLU with a hand-derived VJP. Forward ``y = x s``, ``s = sigmoid(x)``; backward ``dx = dy s (1 + x (1 - s))``."""
    return silu_reference(x)


def _silu_fwd(x):
    return silu_reference(x), (x,)  # s is recomputed from x: one array saved, not two


def _silu_bwd(res, dy):
    (x,) = res
    s = lax.logistic(x)
    return (dy * s * (1 + x * (1 - s)),)  # dx = dy (s + x s (1 - s))


silu.defvjp(_silu_fwd, _silu_bwd)
