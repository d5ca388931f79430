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
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import autodiff, manual, models
from jaxbp.train.config import GRADS, TrainConfig

__all__ = [
    "AGREEMENT_FLOOR",
    "TRACE_COUNTS",
    "compiled",
    "init_state",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "masked_loss",
    "step_key",
]

# How often each step function was traced (a Python side effect that runs only while
# tracing): the tests assert one trace per run, not one per batch.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer of ``config``; the cosine schedule decays to 0 over ``total_steps``."""
    lr: Any = config.learning_rate
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(total_steps, 1))

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


# A parameter whose gradient is below this fraction of the model's largest gradient entry is
# measured against that floor: a conv bias right before batch norm has an exact gradient of 0
# (batch norm removes any per-channel shift), so both computed gradients are float32 noise
# (~1e-8) and their ratio says nothing.
AGREEMENT_FLOOR = 1e-2


def agreement(g_manual, g_autodiff):
    """Per parameter: ``max|g_m - g_a| / max(max|g_a|, AGREEMENT_FLOOR * max over the model |g_a|)``
    and the cosine similarity (1 for parameters under the floor); trees like the grads."""
    scales = jax.tree.map(lambda a: jnp.max(jnp.abs(a)), g_autodiff)
    floor = AGREEMENT_FLOOR * jnp.max(jnp.stack(jax.tree.leaves(scales)))

    def rel(m, a, scale):
        err, den = jnp.max(jnp.abs(m - a)), jnp.maximum(scale, floor)
        return jnp.where(den > 0, err / jnp.where(den > 0, den, 1), jnp.where(err > 0, jnp.inf, 0.0))

    def cos(m, a, scale):
        nm, na = jnp.linalg.norm(m), jnp.linalg.norm(a)
        c = jnp.vdot(m, a) / jnp.where(nm * na > 0, nm * na, 1)
        return jnp.where((scale < floor) | ((nm == 0) & (na == 0)), 1.0, c)

    return jax.tree.map(rel, g_manual, g_autodiff, scales), jax.tree.map(cos, g_manual, g_autodiff, scales)


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

    def loss_fn(params, model_state, xb, yb, n_valid, key, ops):
        valid = jnp.arange(xb.shape[0]) < n_valid
        logits, new_state = model.apply(params, xb, ops=ops, train=True, rng=key, state=model_state, mask=valid)
        loss, correct, _ = masked_loss(ops, logits, yb, n_valid, label_smoothing)
        return loss, (new_state, correct)

    def step(params, opt_state, model_state, xb, yb, n_valid, key):
        TRACE_COUNTS[f"train-{grad}"] += 1
        vg = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (new_state, correct)), grads = vg(params, model_state, xb, yb, n_valid, key, main_ops)
        # ReLU maps NaN to 0, so a NaN inside the network need not reach the loss: check the grads too.
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        metrics = {"loss": loss, "correct": correct, "grads_finite": finite}
        if grad == "compare":
            (loss_a, _), grads_a = vg(params, model_state, xb, yb, n_valid, key, autodiff)
            metrics["loss_autodiff"] = loss_a
            metrics["grads_finite_autodiff"] = jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads_a)])
            )
            metrics["rel_err"], metrics["cos"] = agreement(grads, grads_a)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, new_state, metrics

    return jax.jit(step)


def make_eval_step(model: models.Model, *, ops=None) -> Callable:
    """Jitted ``(params, model_state, xb, yb, n_valid) -> (loss_sum, correct)`` over the valid rows."""
    ops = ops or manual

    def step(params, model_state, xb, yb, n_valid):
        TRACE_COUNTS["eval"] += 1
        logits, _ = model.apply(params, xb, ops=ops, train=False, state=model_state)
        loss, correct, _ = masked_loss(ops, logits, yb, n_valid)
        return loss * n_valid.astype(loss.dtype), correct

    return jax.jit(step)


def compiled(key: tuple, num_classes: int, total_steps: int, ops) -> tuple[models.Model, Callable, Callable, Any]:
    """Model, train step, eval step and optimizer for a config, cached (reruns in one process,
    as in the tests and experiments, reuse the compiled steps) unless ``ops`` is an injected,
    unhashable namespace or the model is a user's (built anew from its module every run)."""
    try:
        hash(ops)
    except TypeError:
        return _build(key, num_classes, total_steps, ops)
    if dict(key)["model"] not in models.MODELS:  # a user's model file may change between two runs
        return _build(key, num_classes, total_steps, ops)
    return _build_cached(key, num_classes, total_steps, ops)


def _build(key: tuple, num_classes: int, total_steps: int, ops) -> tuple[models.Model, Callable, Callable, Any]:
    config = TrainConfig(**dict(key))
    model = models.get_model(config.model, num_classes, dropout=config.dropout, init=config.init)
    optimizer = make_optimizer(config, total_steps)
    train_ops = None if config.grad == "autodiff" else ops
    eval_ops = autodiff if config.grad == "autodiff" else (ops or manual)
    return (
        model,
        make_train_step(model, optimizer, grad=config.grad, ops=train_ops, label_smoothing=config.label_smoothing),
        make_eval_step(model, ops=eval_ops),
        optimizer,
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
