"""Correct functions that checkers have failed, and small real bugs they have passed (issue 24).

Shared by ``tests/test_verify_trust.py`` and ``experiments/checker_comparison.py``; each
maker returns ``(manual, reference)`` and takes ``bug`` where the case has a planted bug.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import autodiff, manual


def custom_vjp_of(forward, backward):
    f = jax.custom_vjp(forward)
    f.defvjp(lambda *a: (forward(*a), a), lambda res, g: backward(*res, g))
    return f


# ---- a small CNN loss at real digits images: ReLU kinks and max-pool ties everywhere


def cnn_loss(ops, bug: bool = False):
    """conv 3x3 -> ReLU -> 2x2 max pool -> dense -> softmax cross-entropy; params a dict."""

    def loss(params, x, y):
        h = ops.max_pool2d(ops.relu(ops.conv2d(x, params["w"], params["b"], stride=1, padding="SAME")), 2)
        logits = ops.dense(ops.flatten(h), params["wd"], params["bd"])
        return ops.softmax_cross_entropy(logits, y)

    if not bug:
        return loss

    @jax.custom_vjp
    def scaled(x):  # the planted bug: the gradient into the images 1 % too large
        return x

    scaled.defvjp(lambda x: (x, None), lambda _, g: (g * 1.01,))
    return lambda params, x, y: loss(params, scaled(x), y)


def digits_args():
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    params = {
        "w": rng.standard_normal((3, 3, 1, 4)) * 0.3,
        "b": np.zeros(4),
        "wd": rng.standard_normal((4 * 4 * 4, 10)) * 0.1,
        "bd": np.zeros(10),
    }
    return params, d.images[:4, :, :, None] / 16.0, d.target[:4]


def make_cnn(bug: bool = False):
    return cnn_loss(manual, bug), cnn_loss(autodiff)


# ---- large and small magnitudes


def sin_ref(a, theta):
    return a * jnp.sin(theta)


def make_a_sin(bug: bool = False):
    cos = (lambda t: jnp.cos(t) * 1.001) if bug else jnp.cos  # the bug: 0.1 % off
    return custom_vjp_of(sin_ref, lambda a, t, g: (g * jnp.sin(t), g * a * cos(t))), sin_ref


A_SIN_ARGS = (np.array([0.7, -1.3, 0.4, 2.0, -0.5]), np.array([-8000.0, -400.3, 0.3, 95.1, 8000.0]))


def entropy_ref(p):
    return -jnp.sum(p * jnp.log(p))


def make_entropy(bug: bool = False):
    one = 1.0001 if bug else 1.0  # the bug: 1e-4 off
    return custom_vjp_of(entropy_ref, lambda p, g: (-g * (jnp.log(p) + one),)), entropy_ref


ENTROPY_ARGS = (np.array([1e-5, 1e-3, 0.2, 0.3, 0.49899]),)


# ---- kinks: ReLU with the twin jnp.maximum (whose autodiff gives 0.5 at 0)


def relu_ref(x):
    return jnp.maximum(x, 0.0)


def make_relu(bug: bool = False):
    """``bug``: the gradient is wrong away from the kink too, but only at integer inputs."""

    def bwd(x, g):
        d = g * (x > 0)
        return (jnp.where(bug & (x == jnp.round(x)) & (x > 0), 2 * d, d),)

    return custom_vjp_of(relu_ref, bwd), relu_ref


def sin_at_zero_bug():
    """sin whose backward is 0 exactly at x = 0, where sin is smooth: a real bug, not a kink."""
    return custom_vjp_of(jnp.sin, lambda x, g: (jnp.where(x == 0, 0.0, g * jnp.cos(x)),)), jnp.sin


# ---- a gradient that is zero up to rounding: labels at logits 0


def xent_ref(logits, labels):
    n = logits.shape[-1]
    return jnp.sum(labels * (jax.nn.log_softmax(logits) + jnp.log(n)))


def make_xent(bug: bool = False):
    def bwd(logits, labels, g):
        n = logits.shape[-1]
        p = jax.nn.softmax(logits)
        dlogits = g * (labels - p * jnp.sum(labels, -1, keepdims=True))
        dlabels = g * (jnp.log(p) + jnp.log(n))  # the same value, rounded another way
        return (-dlogits if bug else dlogits), dlabels

    return custom_vjp_of(xent_ref, bwd), xent_ref


XENT_ARGS = (np.random.default_rng(3).standard_normal((2, 3)), np.eye(3)[[0, 2]])


# ---- a gradient bug beyond the examples (x > 4) must be reported as one, not as vmap


def gelu_ref(x):
    return jax.nn.gelu(x, approximate=False)


def make_gelu(bug: bool = False):
    def d(x):
        return 0.5 * (1 + jax.scipy.special.erf(x / jnp.sqrt(2.0))) + x * jnp.exp(-(x**2) / 2) / jnp.sqrt(2 * jnp.pi)

    return custom_vjp_of(gelu_ref, lambda x, g: (jnp.where(bug & (x > 4), 0.0, g * d(x)),)), gelu_ref


# ---- shape bugs


def mean_rows_ref(x):
    return jnp.mean(x, axis=1)


def make_mean_rows(bug: bool = False):
    f = jax.custom_vjp(mean_rows_ref)
    n_axis = 0 if bug else 1  # the bug: divides by the number of rows
    f.defvjp(lambda x: (mean_rows_ref(x), x.shape), lambda s, g: (jnp.broadcast_to(g[:, None] / s[n_axis], s),))
    return f, mean_rows_ref


def add_bias_ref(x, b):
    return x + b


def make_add_bias(bug: bool = False):
    return custom_vjp_of(add_bias_ref, lambda x, b, g: (g, g[0] if bug else g.sum(0))), add_bias_ref


def mean_rows_args(shape, seed):
    """``x`` of ``shape``."""
    return (np.random.default_rng(seed).standard_normal(shape),)


def add_bias_args(shape, seed):
    """``x`` of ``shape`` and ``b`` of its last side."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape[-1:])


# ---- float16: a backward that overflows in its own dtype


def square_ref(x):
    return x * x


def make_square(bug: bool = False):
    def bwd(x, g):
        return ((g * x * x * 4.0 / x) / 2.0 if bug else 2.0 * g * x,)  # x * x * 4 overflows float16 at 128

    return custom_vjp_of(square_ref, bwd), square_ref


SQUARE_ARGS = (np.array([200.0, -150.0, 3.0], np.float16),)
