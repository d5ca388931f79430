"""Behaviour of the losses, batch norm and dropout that the registry agreement does not cover.

The registry test proves manual == autodiff; these pin down what both compute:
integer labels, stability at huge logits, batch statistics, and dropout's mask.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import autodiff, manual
from jaxbp.layers.norm import batch_norm_stats

BOTH = pytest.mark.parametrize("ns", [manual, autodiff], ids=["manual", "autodiff"])


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ cross-entropy


def test_int_labels_get_no_gradient_and_grad_jit_vmap_work():
    rng = _rng()
    logits = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, 4), jnp.int32)
    ce, ref = manual.softmax_cross_entropy, autodiff.softmax_cross_entropy
    expected = jax.grad(ref)(logits, labels)

    # The labels' cotangent is the symbolic zero of an integer input (float0), not a number.
    _, pullback = jax.vjp(ce, logits, labels)
    dlogits, dlabels = pullback(jnp.float32(1.0))
    assert dlabels.dtype == jax.dtypes.float0
    np.testing.assert_allclose(dlogits, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="integer"):
        jax.grad(ce, argnums=1)(logits, labels)

    # grad, grad under jit (labels become tracers), and a vmap over a batch of problems.
    np.testing.assert_allclose(jax.grad(ce)(logits, labels), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.grad(ce))(logits, labels), expected, rtol=1e-6, atol=1e-7)
    many_logits = jnp.stack([logits, 2 * logits, -logits])
    many_labels = jnp.stack([labels, (labels + 1) % 5, labels[::-1]])
    batched = jax.vmap(jax.value_and_grad(ce))(many_logits, many_labels)
    for b in range(3):
        loss_b, grad_b = jax.value_and_grad(ref)(many_logits[b], many_labels[b])
        np.testing.assert_allclose(batched[0][b], loss_b, rtol=1e-6)
        np.testing.assert_allclose(batched[1][b], grad_b, rtol=1e-6, atol=1e-7)


@BOTH
def test_out_of_range_labels_raise_when_concrete_only(ns):
    logits = jnp.zeros((3, 4))
    bad = np.array([0, 4, 1], np.int32)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: .*\[0, 4\).*\[0, 4\]"):
        ns.softmax_cross_entropy(logits, bad)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ns.softmax_cross_entropy(logits, np.array([0, -1, 1], np.int32))
    # Under jit the labels are tracers: as documented, the bad row is an all-zero target (no loss).
    loss = jax.jit(ns.softmax_cross_entropy)(logits, bad)
    np.testing.assert_allclose(loss, 2 * math.log(4) / 3, rtol=1e-6)


@BOTH
def test_probability_labels_equal_one_hot_of_int_labels(ns):
    rng = _rng(1)
    logits = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 6), jnp.int32)
    one_hot = jax.nn.one_hot(labels, 4, dtype=jnp.float32)
    ce = ns.softmax_cross_entropy
    np.testing.assert_allclose(ce(logits, one_hot), ce(logits, labels), rtol=1e-7)
    np.testing.assert_allclose(jax.grad(ce)(logits, one_hot), jax.grad(ce)(logits, labels), rtol=1e-6, atol=1e-8)
    # And the labels' gradient, which only probability labels have, is -log_softmax / N.
    dlabels = jax.grad(ce, argnums=1)(logits, one_hot)
    np.testing.assert_allclose(dlabels, -jax.nn.log_softmax(logits) / 6, rtol=1e-6)


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    s = z - z.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


@BOTH
def test_cross_entropy_is_finite_and_exact_for_huge_logits(ns):
    rng = _rng(2)
    logits = (rng.standard_normal((4, 6)) + 1e4 * rng.choice([-1.0, 1.0], (4, 6))).astype(np.float32)
    targets = rng.dirichlet(np.ones(6), size=4).astype(np.float32)
    loss, (dlogits, dtargets) = jax.value_and_grad(ns.softmax_cross_entropy, argnums=(0, 1))(logits, targets)
    # The same quantities in float64 from the same float32 inputs.
    logp = _log_softmax64(logits)
    y = targets.astype(np.float64)
    want_loss = -(y * logp).sum() / 4
    want_dlogits = (np.exp(logp) * y.sum(axis=1, keepdims=True) - y) / 4
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits)) and np.all(np.isfinite(dtargets))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(dlogits, want_dlogits, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dtargets, -logp / 4, rtol=1e-6)


@BOTH
def test_binary_cross_entropy_is_finite_and_exact_for_huge_logits(ns):
    rng = _rng(3)
    z = (rng.standard_normal((3, 5)) + 200.0 * rng.choice([-1.0, 1.0], (3, 5))).astype(np.float32)
    t = rng.random((3, 5)).astype(np.float32)
    loss, (dz, dt) = jax.value_and_grad(ns.sigmoid_binary_cross_entropy, argnums=(0, 1))(z, t)
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    want_loss = np.mean(np.maximum(z64, 0) - z64 * t64 + np.log1p(np.exp(-np.abs(z64))))
    assert np.isfinite(loss) and np.all(np.isfinite(dz)) and np.all(np.isfinite(dt))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(dz, (1 / (1 + np.exp(-z64)) - t64) / 15, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dt, -z64 / 15, rtol=1e-6)
    # The value is the cross-entropy of sigmoid(z) where that is computable: z of moderate size.
    zm = np.array([-3.0, 0.5, 2.0])
    tm = np.array([0.2, 1.0, 0.0])
    s = 1 / (1 + np.exp(-zm))
    with jax.enable_x64(True):
        got = ns.sigmoid_binary_cross_entropy(jnp.asarray(zm), jnp.asarray(tm))
    np.testing.assert_allclose(got, np.mean(-tm * np.log(s) - (1 - tm) * np.log(1 - s)), rtol=1e-12)


# ------------------------------------------------------------------- batch norm


@BOTH
def test_batch_norm_standardises_each_channel(ns):
    # float64: the math, not float32 rounding (which grows like |mean| / std in a channel such as the first).
    rng = _rng(4)
    scale, shift = np.array([0.1, 1.0, 7.0]), np.array([-5.0, 0.0, 3.0])
    x64 = rng.standard_normal((4, 5, 5, 3)) * scale + shift
    var = np.var(x64, axis=(0, 1, 2))
    gamma, beta = np.array([2.0, -0.5, 1.0]), np.array([1.0, 2.0, -3.0])
    with jax.enable_x64(True):
        x = jnp.asarray(x64)
        y = ns.batch_norm(x, jnp.ones(3), jnp.zeros(3), eps=1e-5)
        np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-12)
        np.testing.assert_allclose(jnp.var(y, axis=(0, 1, 2)), var / (var + 1e-5), rtol=1e-12)  # ~1, eps aside
        # gamma and beta then set each channel's mean and standard deviation.
        y = ns.batch_norm(x, jnp.asarray(gamma), jnp.asarray(beta), eps=1e-5)
        np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), beta, rtol=1e-12)
        np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), np.abs(gamma) * np.sqrt(var / (var + 1e-5)), rtol=1e-12)
        # The statistics helper returns the batch mean and biased variance over the same axes.
        mean, variance = batch_norm_stats(x)
        np.testing.assert_allclose(mean, np.mean(x64, axis=(0, 1, 2)), rtol=1e-12)
        np.testing.assert_allclose(variance, var, rtol=1e-12)


@BOTH
def test_batch_norm_gradient_is_not_a_sum_of_per_example_gradients(ns):
    """Each example's output depends on the whole batch through mu and var.

    So the batch gradient differs from what per-example gradients (vmap over examples,
    each normalised on its own H x W) sum to: per-example gradient tricks (clipping,
    DP-SGD) do not apply to batch norm. The same construction on dense, a per-example
    layer, gives equal results: the comparison itself can come out equal.
    """
    rng = _rng(5)
    x = jnp.asarray(rng.standard_normal((3, 2, 2, 2)), jnp.float32)
    gamma, beta = jnp.asarray(rng.standard_normal(2), jnp.float32), jnp.asarray(rng.standard_normal(2), jnp.float32)
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def batch_loss(x, gamma):
        return jnp.sum(w * ns.batch_norm(x, gamma, beta))

    def example_loss(xi, wi, gamma):
        return jnp.sum(wi * ns.batch_norm(xi[None], gamma, beta))

    dx, dgamma = jax.grad(batch_loss, argnums=(0, 1))(x, gamma)
    dx_each, dgamma_each = jax.vmap(jax.grad(example_loss, argnums=(0, 2)), in_axes=(0, 0, None))(x, w, gamma)
    assert np.max(np.abs(dx - dx_each)) > 0.1 * np.max(np.abs(dx))
    assert np.max(np.abs(dgamma - dgamma_each.sum(0))) > 0.1 * np.max(np.abs(dgamma))

    # Control: for dense the per-example gradients do sum to the batch gradient.
    a, v = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)
    dv = jax.grad(lambda v: jnp.sum(ns.dense(a, v)))(v)
    dv_each = jax.vmap(jax.grad(lambda ai, v: jnp.sum(ns.dense(ai[None], v)), argnums=1), in_axes=(0, None))(a, v)
    np.testing.assert_allclose(dv_each.sum(0), dv, rtol=1e-5)


# ---------------------------------------------------------------------- dropout


@BOTH
def test_dropout_rate_zero_is_the_identity(ns):
    x = jnp.asarray(_rng(6).standard_normal((2, 3, 3, 4)), jnp.float32)
    assert ns.dropout(x, jax.random.key(0), 0.0) is x
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ns.dropout(x, jax.random.key(0), 0.0)))(x), 1.0)


@BOTH
def test_dropout_preserves_the_mean(ns):
    n, rate = 200_000, 0.3
    y = ns.dropout(jnp.ones(n, jnp.float32), jax.random.key(7), rate)
    # Each y is 0 or 1/(1-rate): mean 1, standard deviation sqrt(rate/(1-rate)); 5 sigma of the sample mean.
    assert abs(float(jnp.mean(y)) - 1.0) < 5 * math.sqrt(rate / (1 - rate) / n)
    assert abs(float(jnp.mean(y == 0)) - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, np.float32(1 / (1 - rate))}


def test_dropout_mask_is_the_same_in_manual_reference_and_fwd():
    x = jnp.asarray(_rng(8).standard_normal((4, 3, 3, 5)), jnp.float32)
    key = jax.random.key(8)
    y_ref = autodiff.dropout(x, key, 0.5)
    y_man = manual.dropout(x, key, 0.5)
    y_fwd, _ = jax.vjp(lambda x: manual.dropout(x, key, 0.5), x)  # through the custom_vjp forward rule
    y_jit = jax.jit(manual.dropout, static_argnums=2)(x, key, 0.5)
    assert 0.3 < float(jnp.mean(y_ref == 0)) < 0.7
    for y in (y_man, y_fwd, y_jit):
        np.testing.assert_array_equal(y, y_ref)


@BOTH
def test_dropout_same_key_same_mask(ns):
    x = jnp.asarray(_rng(9).standard_normal((3, 4, 4, 2)), jnp.float32)

    def dropped(key):
        return np.asarray(ns.dropout(x, key, 0.25) == 0)

    np.testing.assert_array_equal(dropped(jax.random.key(1)), dropped(jax.random.key(1)))
    assert np.any(dropped(jax.random.key(1)) != dropped(jax.random.key(2)))
    # A raw uint32 key is the same key as the typed one made from the same seed.
    np.testing.assert_array_equal(dropped(jax.random.PRNGKey(1)), dropped(jax.random.key(1)))
    # The mask does not depend on x's dtype (it is drawn in float32 for every dtype).
    with jax.enable_x64(True):
        mask64 = np.asarray(ns.dropout(jnp.asarray(x, jnp.float64), jax.random.key(1), 0.25) == 0)
    np.testing.assert_array_equal(mask64, dropped(jax.random.key(1)))


@BOTH
def test_dropout_gradient_is_zero_exactly_where_the_output_is(ns):
    rng = _rng(10)
    x = jnp.asarray(rng.standard_normal((2, 3, 3, 4)), jnp.float32)
    c = jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32)  # no zeros in x or in the cotangent
    key, rate = jax.random.key(10), 0.5
    y = ns.dropout(x, key, rate)
    g = jax.grad(lambda x: jnp.sum(c * ns.dropout(x, key, rate)))(x)
    dropped = np.asarray(y == 0)
    assert 0 < dropped.sum() < dropped.size
    np.testing.assert_array_equal(np.asarray(g == 0), dropped)
    np.testing.assert_array_equal(np.asarray(g)[~dropped], np.asarray(c * 2.0)[~dropped])  # dy / (1 - rate)


@BOTH
@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_rate_outside_unit_interval_raises(ns, rate):
    with pytest.raises(ValueError, match=rf"^dropout: rate must be in \[0, 1\), got {rate!r}"):
        ns.dropout(jnp.ones(3), jax.random.key(0), rate)
