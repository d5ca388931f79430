"""resnet vs cnn-bn: train-step throughput (manual gradients, batch 128, 28x28x1), one process.

Both jitted steps are compiled first, then timed round by round, interleaved (a noisy
neighbour slows both alike); medians over the rounds. Run under the XLA flags that
``jaxbp train`` sets to time what training pays:

    XLA_FLAGS="$(python -c 'from jaxbp.xla_flags import CPU_XLA_FLAGS; print(CPU_XLA_FLAGS)')" \\
        python experiments/resnet_step_time.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import models
from jaxbp.train import make_train_step

NAMES, BATCH, ROUNDS = ("cnn-bn", "resnet"), 128, 15

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(BATCH, 28, 28, 1)), jnp.float32)
y = jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)
args = (x, y, jnp.int32(BATCH), jax.random.key(0))
steps, carry = {}, {}
for name in NAMES:
    model, optimizer = models.get_model(name, 10), optax.adam(1e-3)
    _, params, state = model.init(0, (28, 28, 1))
    steps[name] = make_train_step(model, optimizer, grad="manual")
    carry[name] = jax.block_until_ready(steps[name](params, optimizer.init(params), state, *args))[:3]
    print(f"{name}: {sum(leaf.size for leaf in jax.tree.leaves(params))} parameters")
times = {name: [] for name in NAMES}
for _ in range(ROUNDS):
    for name in NAMES:
        start = time.perf_counter()
        carry[name] = jax.block_until_ready(steps[name](*carry[name], *args))[:3]
        times[name].append(time.perf_counter() - start)
for name in NAMES:
    print(f"{name}: median {BATCH / np.median(times[name]):.0f} examples/s")
