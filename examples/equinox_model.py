"""jaxbp's layers inside an equinox module: its gradients verified leaf by leaf, then trained with optax.

An ``eqx.Module`` is a pytree, so ``jaxbp.verify_vjp`` takes the whole module as one argument
and names each of its leaves by attribute (``m.conv_w``, ``m.w1``, ...). The module runs on
either namespace: ``jaxbp.manual`` (hand-derived VJPs) or ``jaxbp.autodiff`` (``jax.grad``),
so the manual model and its twin are the same object called two ways.

    pip install -e '.[frameworks]'   # equinox and flax
    python examples/equinox_model.py
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from jaxbp import autodiff, data as datasets, manual


# --8<-- [start:model]
class SmallCNN(eqx.Module):
    conv_w: jax.Array  # [3, 3, 1, 8], HWIO
    conv_b: jax.Array
    w1: jax.Array  # [8, num_classes]
    b1: jax.Array

    def __init__(self, key, num_classes=10):
        k1, k2 = jax.random.split(key)
        self.conv_w = jax.random.normal(k1, (3, 3, 1, 8)) * 0.3
        self.conv_b = jnp.zeros(8)
        self.w1 = jax.random.normal(k2, (8, num_classes)) * 0.3
        self.b1 = jnp.zeros(num_classes)

    def __call__(self, x, ops=manual):  # ops: jaxbp.manual or jaxbp.autodiff
        h = ops.relu(ops.conv2d(x, self.conv_w, self.conv_b, padding="SAME"))
        h = ops.global_avg_pool(ops.max_pool2d(h, 2))
        return ops.dense(h, self.w1, self.b1)


def loss_manual(m, x, labels):
    return manual.softmax_cross_entropy(m(x, manual), labels)


def loss_autodiff(m, x, labels):
    return autodiff.softmax_cross_entropy(m(x, autodiff), labels)


# --8<-- [end:model]


def main(steps: int = 30) -> dict:
    # --8<-- [start:verify]
    data = datasets.load("digits")  # 8x8 images, NHWC
    x, y = jnp.asarray(data.x_train[:16]), jnp.asarray(data.y_train[:16])
    model = SmallCNN(jax.random.key(0))

    # Every leaf of the module (m.conv_w, m.conv_b, m.w1, m.b1) and the images x are checked;
    # the integer labels pass through, listed as skipped.
    report = jaxbp.verify_vjp(loss_manual, loss_autodiff, model, x, y, dtypes=("float64",), explore=False)
    print(report)
    assert report.passed
    # --8<-- [end:verify]

    # --8<-- [start:train]
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_manual)(model, x, y)  # the hand-derived backward
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for i in range(steps):
        batch = slice((i * 64) % 1280, (i * 64) % 1280 + 64)
        model, opt_state, loss = step(model, opt_state, data.x_train[batch], data.y_train[batch])
        losses.append(float(loss))
    print(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f} after {steps} adam steps")
    # --8<-- [end:train]
    return {"report": report, "losses": np.asarray(losses)}


if __name__ == "__main__":
    main()
