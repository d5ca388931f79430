"""jaxbp's layers inside a flax nnx module, trained with optax through ``nnx.Optimizer``.

The module holds its weights as ``nnx.Param`` and calls the layers of an ops namespace:
``jaxbp.manual`` (hand-derived VJPs, what it trains with) or ``jaxbp.autodiff`` (plain JAX
for ``jax.grad``). ``nnx.value_and_grad`` differentiates through the custom VJPs like any
JAX function; the first step's gradients are checked against autodiff's before training.

    pip install -e '.[frameworks]'   # equinox and flax
    python examples/flax_nnx_model.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxbp import autodiff, data as datasets, manual


# --8<-- [start:model]
class SmallCNN(nnx.Module):
    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.conv_w = nnx.Param(jax.random.normal(rngs.params(), (3, 3, 1, 8)) * 0.3)  # HWIO
        self.conv_b = nnx.Param(jnp.zeros(8))
        self.w1 = nnx.Param(jax.random.normal(rngs.params(), (8, num_classes)) * 0.3)
        self.b1 = nnx.Param(jnp.zeros(num_classes))

    def __call__(self, x, ops=manual):  # ops: jaxbp.manual or jaxbp.autodiff
        h = ops.relu(ops.conv2d(x, self.conv_w[...], self.conv_b[...], padding="SAME"))
        h = ops.global_avg_pool(ops.max_pool2d(h, 2))
        return ops.dense(h, self.w1[...], self.b1[...])


def loss_fn(model, x, labels, ops=manual):
    return ops.softmax_cross_entropy(model(x, ops), labels)


# --8<-- [end:model]


def main(steps: int = 30) -> dict:
    # --8<-- [start:train]
    data = datasets.load("digits")  # 8x8 images, NHWC
    model = SmallCNN(data.num_classes, rngs=nnx.Rngs(0))

    x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
    g_manual = nnx.grad(loss_fn)(model, x, y, manual)
    g_autodiff = nnx.grad(loss_fn)(model, x, y, autodiff)
    worst = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(g_manual), jax.tree.leaves(g_autodiff))
    )
    print(f"first step: manual vs autodiff gradients, worst relative error {worst:.1e}")
    assert worst < 1e-4  # float32; TrainConfig's compare_rtol, what `jaxbp train --grad compare` allows

    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)  # the hand-derived backward
        optimizer.update(model, grads)
        return loss

    losses = []
    for i in range(steps):
        batch = slice((i * 64) % 1280, (i * 64) % 1280 + 64)
        losses.append(float(step(model, optimizer, data.x_train[batch], data.y_train[batch])))
    print(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f} after {steps} adam steps")
    # --8<-- [end:train]
    return {"worst": worst, "losses": np.asarray(losses)}


if __name__ == "__main__":
    main()
