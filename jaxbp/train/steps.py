"""The jitted steps of training: the loss of a padded batch, the optimizer, one train step
(manual, autodiff or both compared) and one evaluation step, compiled once per configuration.

The loss of a padded batch (``data.batches`` pads the last one to a fixed shape)
counts only the real rows, and still goes through the hand-derived fused
softmax-cross-entropy backward: padded rows get all-zero target rows, so they add
nothing to the loss or to ``dlogits = (p sum_c y_c - y)/N``, and the batch mean is
rescaled by ``N / n_valid``::

    loss = softmax_cross_entropy(logits, onehot(y) * valid[:, None]) * (N / n_valid)
         = (1 / n_valid) * sum over the valid rows of -log p[y]

Batch norm still computes its batch statistics over all N rows (the padded rows
repeat real ones), but its running statistics count only the real rows.

A model that reconstructs its input (``Model.objective == "reconstruct"``, the autoencoder)
is trained on ``ops.mse_loss`` instead, its padded rows zeroed in both the output and the
target (so their gradient is 0) and the mean rescaled the same way; it counts no correct
answers (the loop reports no accuracy for it).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import autodiff, manual, models
from jaxbp.choices import GRADS, MODELS
from jaxbp.train.config import ConfigError, TrainConfig

__all__ = [
    "AGREEMENT_FLOOR",
    "TRACE_COUNTS",
    "Steps",
    "agreement",
    "compiled",
    "dropout_key",
    "init_state",
    "learning_rate",
    "make_audit_step",
    "make_eval_step",
    "make_loss",
    "make_optimizer",
    "make_train_step",
    "masked_loss",
    "masked_mse",
    "model_loss",
    "step_key",
]

# How often each step function was traced (a Python side effect that runs only while
# tracing): the tests assert one trace per run, not one per batch.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def learning_rate(config: TrainConfig, total_steps: int) -> float | optax.Schedule:
    """The learning rate of ``config``: a float (``constant``), or the optax schedule of step
    ``count`` that decays from ``learning_rate`` to 0 over ``total_steps`` (``cosine``; an
    extended run rebuilds it over its new total)."""
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(total_steps, 1))
    return config.learning_rate


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer of ``config``; the cosine schedule decays to 0 over ``total_steps``."""
    lr: Any = learning_rate(config, total_steps)

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim > 1, params)

    if config.optimizer == "adam":
        if config.weight_decay > 0:
            return optax.adamw(lr, weight_decay=config.weight_decay, mask=decay_mask)
        return optax.adam(lr)
    momentum = config.momentum if config.optimizer == "momentum" else None
    sgd = optax.sgd(lr, momentum=momentum)
    if config.weight_decay > 0:
        return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask), sgd)
    return sgd


def masked_loss(ops, logits, labels, n_valid, label_smoothing: float = 0.0):
    """Mean cross-entropy over the first ``n_valid`` rows, through ``ops.softmax_cross_entropy``;
    with ``label_smoothing`` e the targets are ``(1 - e) onehot + e / K`` (still summing to 1)."""
    n, k = logits.shape
    valid = jnp.arange(n) < n_valid
    targets = jax.nn.one_hot(labels, k, dtype=logits.dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / k
    targets = targets * valid[:, None].astype(logits.dtype)
    loss = ops.softmax_cross_entropy(logits, targets) * (n / n_valid.astype(logits.dtype))
    correct = jnp.sum(jnp.where(valid, jnp.argmax(logits, axis=-1) == labels, False))
    return loss, correct, valid


def masked_mse(ops, out, target, n_valid):
    """Mean squared error over the first ``n_valid`` rows, through ``ops.mse_loss``: the other
    rows are zeroed in both arrays (their error and gradient are 0) and the mean over all rows
    rescaled by ``N / n_valid``."""
    n = out.shape[0]
    valid = (jnp.arange(n) < n_valid).reshape((n,) + (1,) * (out.ndim - 1)).astype(out.dtype)
    return ops.mse_loss(out * valid, target * valid) * (n / n_valid.astype(out.dtype))


def model_loss(ops, model: models.Model, out, xb, yb, n_valid, label_smoothing: float = 0.0):
    """``(loss, correct)`` of a batch by the model's objective: :func:`masked_loss` of the class
    scores ``out`` against ``yb``, or :func:`masked_mse` of ``out`` against the input ``xb``
    (``correct`` 0: a reconstruction has no accuracy)."""
    if model.objective == "reconstruct":
        return masked_mse(ops, out, xb, n_valid), jnp.zeros((), jnp.int32)
    loss, correct, _ = masked_loss(ops, out, yb, n_valid, label_smoothing)
    return loss, correct


# The float32 guard measures each parameter's error against ``max(max|g_a|, AGREEMENT_FLOOR * G)``,
# G the largest |g_autodiff| entry over the whole model. A bare relative error explodes where
# a gradient is ~0: a conv bias right before batch norm has an exact gradient of 0 (batch norm
# removes any per-channel shift), so both computed gradients are float32 noise whose size is
# set by the terms they sum (comparable to the model's largest gradients), not by their own
# value. Measured over 300-step runs on digits (examples/custom_layer.py, cnn-bn, cnn, mlp;
# resnet 100 steps; AMD EPYC AVX2, under jaxbp's XLA flags and XLA's defaults), the error
# against this scale stayed below 1.6e-5, 134 float32 ulps (2^-23), for every parameter and
# step; with a floor of 1 % instead of 10 % a bias before batch norm reached 1.1e-4. The
# default ``compare_rtol`` 1e-4 (840 ulps) leaves a margin of 6 for other machines (AVX-512
# sums in another order) and still fails, on the step it happens, a backward off by 1e-4 of
# the scale; the float64 audit (:func:`make_audit_step`) decides everything smaller.
AGREEMENT_FLOOR = 0.1


def agreement(g_manual, g_autodiff) -> dict[str, Any]:
    """Per parameter (trees like the grads): ``rel_err = abs_err / scale`` with ``abs_err =
    max|g_m - g_a|`` and ``scale = max(max|g_a|, AGREEMENT_FLOOR * max over the model |g_a|)``,
    and the cosine similarity ``cos`` (1 for parameters under the floor). The same measure
    serves the float32 guard and the float64 audit."""
    own = jax.tree.map(lambda a: jnp.max(jnp.abs(a)), g_autodiff)
    floor = AGREEMENT_FLOOR * jnp.max(jnp.stack(jax.tree.leaves(own)))
    scale = jax.tree.map(lambda s: jnp.maximum(s, floor), own)
    abs_err = jax.tree.map(lambda m, a: jnp.max(jnp.abs(m - a)), g_manual, g_autodiff)

    def rel(err, den):
        return jnp.where(den > 0, err / jnp.where(den > 0, den, 1), jnp.where(err > 0, jnp.inf, 0.0))

    def cos(m, a, s):
        nm, na = jnp.linalg.norm(m), jnp.linalg.norm(a)
        c = jnp.vdot(m, a) / jnp.where(nm * na > 0, nm * na, 1)
        return jnp.where((s < floor) | ((nm == 0) & (na == 0)), 1.0, c)

    return {
        "rel_err": jax.tree.map(rel, abs_err, scale),
        "cos": jax.tree.map(cos, g_manual, g_autodiff, own),
        "abs_err": abs_err,
        "scale": scale,
    }


def make_loss(model: models.Model, label_smoothing: float = 0.0) -> Callable:
    """``loss_fn(params, model_state, xb, yb, n_valid, key, ops) -> (loss, (new_state, correct))``
    of a training step, for ``jax.value_and_grad(..., has_aux=True)``."""

    def loss_fn(params, model_state, xb, yb, n_valid, key, ops):
        valid = jnp.arange(xb.shape[0]) < n_valid
        out, new_state = model.apply(params, xb, ops=ops, train=True, rng=key, state=model_state, mask=valid)
        loss, correct = model_loss(ops, model, out, xb, yb, n_valid, label_smoothing)
        return loss, (new_state, correct)

    return loss_fn


def dropout_key(rng, step: int):
    """The dropout key of the step numbered ``step`` (0-based): the train step and the audit share it."""
    return jax.random.fold_in(rng, step)


def make_train_step(
    model: models.Model,
    optimizer: optax.GradientTransformation,
    *,
    grad: str = "manual",
    ops=None,
    label_smoothing: float = 0.0,
) -> Callable:
    """One jitted step ``(params, opt_state, model_state, xb, yb, n_valid, key) ->
    (params, opt_state, model_state, metrics)``.

    ``ops`` replaces :mod:`jaxbp.manual` as the namespace under test ("manual" and
    "compare"); the tests inject a deliberately wrong backward this way. ``metrics``
    holds ``loss``, ``correct`` and, in compare mode, ``loss_autodiff``, ``rel_err``
    and ``cos`` (trees like the params).
    """
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    main_ops = autodiff if grad == "autodiff" else (ops or manual)
    vg = jax.value_and_grad(make_loss(model, label_smoothing), has_aux=True)

    def step(params, opt_state, model_state, xb, yb, n_valid, key):
        TRACE_COUNTS[f"train-{grad}"] += 1
        (loss, (new_state, correct)), grads = vg(params, model_state, xb, yb, n_valid, key, main_ops)
        metrics = {"loss": loss, "correct": correct, "grads_finite": _all_finite(grads)}
        if grad == "compare":
            (loss_a, _), grads_a = vg(params, model_state, xb, yb, n_valid, key, autodiff)
            metrics["loss_autodiff"] = loss_a
            metrics["grads_finite_autodiff"] = _all_finite(grads_a)
            agree = agreement(grads, grads_a)
            metrics["rel_err"], metrics["cos"] = agree["rel_err"], agree["cos"]
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, new_state, metrics

    return jax.jit(step)


def _all_finite(grads) -> jax.Array:
    # ReLU maps NaN to 0, so a NaN inside the network need not reach the loss: check the grads too.
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))


def make_audit_step(model: models.Model, *, ops=None, label_smoothing: float = 0.0) -> Callable:
    """Compare mode's exact audit: jitted ``(params, model_state, xb, yb, n_valid, key) ->``
    :func:`agreement` of the manual (``ops``, default :mod:`jaxbp.manual`) and the autodiff
    gradient of one train step, nothing updated.

    Call it under ``jax.enable_x64(True)`` with float64 arrays: the audit recomputes a float32
    step in float64, where rounding is 2^-29 of float32's, so any disagreement left is the
    backward's. One function per run: it compiles once (the batches share one padded shape).
    """
    vg = jax.value_and_grad(make_loss(model, label_smoothing), has_aux=True)
    manual_ops = ops or manual

    def audit(params, model_state, xb, yb, n_valid, key):
        TRACE_COUNTS["audit"] += 1
        _, grads = vg(params, model_state, xb, yb, n_valid, key, manual_ops)
        _, grads_a = vg(params, model_state, xb, yb, n_valid, key, autodiff)
        return {**agreement(grads, grads_a), "finite": _all_finite(grads), "finite_autodiff": _all_finite(grads_a)}

    return jax.jit(audit)


def make_eval_step(model: models.Model, *, ops=None) -> Callable:
    """Jitted ``(params, model_state, xb, yb, n_valid) -> (loss_sum, correct)`` over the valid rows."""
    ops = ops or manual

    def step(params, model_state, xb, yb, n_valid):
        TRACE_COUNTS["eval"] += 1
        out, _ = model.apply(params, xb, ops=ops, train=False, state=model_state)
        loss, correct = model_loss(ops, model, out, xb, yb, n_valid)
        return loss * n_valid.astype(loss.dtype), correct

    return jax.jit(step)


class Steps(NamedTuple):
    """What a configuration compiles: the model, its jitted steps and the optimizer;
    ``audit_step`` (:func:`make_audit_step`) in compare mode, else None."""

    model: models.Model
    train_step: Callable
    eval_step: Callable
    optimizer: Any
    audit_step: Callable | None = None


def compiled(key: tuple, num_classes: int, total_steps: int, ops) -> Steps:
    """The :class:`Steps` of a config, cached (reruns in one process, as in the tests and
    experiments, reuse the compiled steps) unless ``ops`` is an injected, unhashable
    namespace or the model is a user's (built anew from its module every run)."""
    try:
        hash(ops)
    except TypeError:
        return _build(key, num_classes, total_steps, ops)
    if dict(key)["model"] not in MODELS:  # a user's model file may change between two runs
        return _build(key, num_classes, total_steps, ops)
    return _build_cached(key, num_classes, total_steps, ops)


def _build(key: tuple, num_classes: int, total_steps: int, ops) -> Steps:
    config = TrainConfig(**dict(key))
    model = models.get_model(config.model, num_classes, dropout=config.dropout, init=config.init)
    if model.objective != "classify" and config.label_smoothing:
        raise ConfigError(
            "label_smoothing",
            f"is {config.label_smoothing}, but {config.model} reconstructs its input: it has no labels",
        )
    optimizer = make_optimizer(config, total_steps)
    train_ops = None if config.grad == "autodiff" else ops
    eval_ops = autodiff if config.grad == "autodiff" else (ops or manual)
    smoothing = config.label_smoothing
    return Steps(
        model,
        make_train_step(model, optimizer, grad=config.grad, ops=train_ops, label_smoothing=smoothing),
        make_eval_step(model, ops=eval_ops),
        optimizer,
        make_audit_step(model, ops=ops, label_smoothing=smoothing) if config.grad == "compare" else None,
    )


_build_cached = functools.lru_cache(maxsize=8)(_build)


def init_state(model: models.Model, optimizer, input_shape: tuple, dtype: str, seed: int) -> dict[str, Any]:
    """``{"params", "opt_state", "model_state", "rng"}`` of a fresh run. Parameters come
    from NumPy (seeded), the optimizer state from one small jitted ``optimizer.init``."""
    _, params, model_state = model.init(np.random.default_rng(seed), input_shape)
    params, model_state = jax.tree.map(lambda p: jnp.asarray(p, dtype), (params, model_state))
    opt_init = _jitted_opt_init(optimizer)
    return {"params": params, "opt_state": opt_init(params), "model_state": model_state, "rng": jax.random.key(seed)}


@functools.lru_cache(maxsize=8)
def _jitted_opt_init(optimizer) -> Callable:
    return jax.jit(optimizer.init)


def step_key(config: TrainConfig) -> tuple:
    """The config fields the compiled steps depend on."""
    fields = ("model", "dropout", "grad", "optimizer", "learning_rate", "momentum", "schedule", "weight_decay")
    fields += ("label_smoothing", "init")
    return tuple((f, getattr(config, f)) for f in fields)
