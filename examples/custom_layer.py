"""Your own layer in a jaxbp model: a custom_vjp activation, verified, then trained.

    swish(x) = x * s,          s = sigmoid(x)
    dx       = dy * (s + x s (1 - s))      (product rule; sigmoid' = s (1 - s))

Run ``python examples/custom_layer.py`` to verify the backward against ``jax.grad`` and
finite differences and train a few steps with both gradients side by side; then train
the model with the command line:

    jaxbp train --model examples/custom_layer.py:make_model --grad compare

``models.Custom`` runs ``swish`` (the hand-derived backward) when the model runs on
``jaxbp.manual`` and ``swish_reference`` (differentiated by ``jax.grad``) on
``jaxbp.autodiff``; ``--grad compare`` computes both gradients every step and stops the
run if they disagree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from jaxbp import data, models
from jaxbp.train import make_train_step


def swish_reference(x):
    return x * jax.nn.sigmoid(x)


@jax.custom_vjp
def swish(x):
    return swish_reference(x)


def swish_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)  # save what the backward reads


def swish_bwd(res, dy):
    x, s = res
    return (dy * (s + x * s * (1 - s)),)  # dx = dy (s + x s (1 - s))


swish.defvjp(swish_fwd, swish_bwd)


def make_model(num_classes: int) -> models.Model:
    """A small CNN with swish activations (any input size: H and W are pooled away)."""
    act = models.Custom(manual=swish, reference=swish_reference, name="swish")
    return models.serial(
        models.Conv(16), models.BatchNorm(), act, models.MaxPool(2),
        models.Conv(32), models.BatchNorm(), act,
        models.GlobalAvgPool, models.Dense(num_classes, init="glorot"),
    )  # fmt: skip


if __name__ == "__main__":
    report = jaxbp.verify_vjp(swish, swish_reference, np.random.default_rng(0).standard_normal((4, 5)), name="swish")
    print(report)
    assert report.passed, "fix swish_bwd before training with it"

    ds = data.load("digits")
    model = make_model(ds.num_classes)
    _, params, state = model.init(0, ds.input_shape)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    step = make_train_step(model, optimizer, grad="compare")  # manual gradients, checked against autodiff
    batches = data.batches(ds.x_train, ds.y_train, 64, seed=0, epoch=0)
    for i, (xb, yb, n_valid) in zip(range(10), batches):
        params, opt_state, state, m = step(params, opt_state, state, xb, yb, jnp.int32(n_valid), jax.random.key(i))
        worst = max(float(e) for e in jax.tree.leaves(m["rel_err"]))
        print(
            f"step {i}: loss {m['loss']:.4f} (autodiff {m['loss_autodiff']:.4f}), worst gradient rel. error {worst:.1e}"
        )
