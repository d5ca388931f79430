"""Stax-style models whose layers come from an ops namespace.

A layer is an ``(init, apply)`` pair, as in ``jax.example_libraries.stax``, with
two additions: the ops namespace is an argument of ``apply`` (so one model runs
with ``ops=jaxbp.manual`` or ``ops=jaxbp.autodiff``), and a layer may carry
non-trainable state (batch norm's running statistics)::

    init(key, input_shape) -> (output_shape, params, state)
    apply(params, x, *, ops, train, rng, state, mask) -> (y, new_state)

``key`` is a jax PRNG key, an int seed or a ``np.random.Generator``: initial values
are drawn with NumPy (seeded from the key), which costs no XLA compilation; jax's
initializers compile one program per op, seconds each on a busy CPU.

Shapes are per example, without the batch axis: ``(28, 28, 1)``. ``mask`` ([N]
bool, optional) marks the real rows of a padded batch; batch norm leaves the
padded rows out of its running statistics. Every layer carries its ``kind``;
:func:`serial` composes layers and names each by kind and position (``conv1``,
``relu1``, ``bn1``, ``dense2``), so params and state are plain dicts of ``jnp``
arrays (nested for a :func:`Residual`, any pytree for a :func:`Custom` layer)::

    model = get_model("cnn-bn", num_classes=10)
    _, params, state = model.init(jax.random.key(0), (28, 28, 1))
    logits, state = model.apply(params, x, ops=jaxbp.manual, train=True, rng=key, state=state)

Beyond the stacks: :func:`Residual` (``x + f(x)`` through ``ops.residual_add``, a
strided 1x1 projection where ``f`` changes the shape), :data:`GlobalAvgPool` and
:func:`Custom`, a user's own ``custom_vjp`` layer next to its plain-JAX reference.
:func:`get_model` also builds a user's model from ``MODULE:FUNCTION`` or
``path/to/file.py:FUNCTION`` (:func:`load_model`).

Initialisation (``init`` of :func:`get_model`, one of :data:`jaxbp.choices.INITS`): ``"he"`` (the
default) is He normal (``std = sqrt(2 / fan_in)``) for a conv or dense followed by ReLU
and Glorot uniform (``limit = sqrt(6 / (fan_in + fan_out))``) for the last dense;
``"uniform"`` is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for every conv and dense, the
weight scale of PyTorch's default ``nn.Conv2d``/``nn.Linear`` initialisation, about 2.4x
smaller than He's. Behind batch norm the scale of a conv's weights does not change the
forward pass, but it does change how far a step of Adam (whose step size does not
depend on the weights' scale) turns them: with ``"uniform"`` cnn-bn fits Fashion-MNIST
faster (see ``experiments/fashion_mnist.py``). Biases and ``beta`` start at zero,
``gamma`` at one, in both.
"""

from jaxbp.choices import INITS, MODELS
from jaxbp.models.custom import Custom
from jaxbp.models.layers import (
    MAX_LAYER_PARAMS,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Flatten,
    Gelu,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    MaxPool,
    Model,
    ModelError,
    Relu,
    Residual,
    flops,
    gradients_of,
    serial,
)
from jaxbp.models.user import check_model_name, load_model, short_name
from jaxbp.models.zoo import autoencoder, convnext_block, get_model

__all__ = [
    "INITS",
    "MAX_LAYER_PARAMS",
    "MODELS",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Custom",
    "Dense",
    "Dropout",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "Layer",
    "LayerNorm",
    "MaxPool",
    "Model",
    "ModelError",
    "Relu",
    "Residual",
    "autoencoder",
    "check_model_name",
    "convnext_block",
    "flops",
    "get_model",
    "gradients_of",
    "load_model",
    "serial",
    "short_name",
]
