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
padded rows out of its running statistics. :func:`serial` composes layers and
names their parameters by kind and position (``conv1``, ``bn1``, ``dense2``), so
params and state are plain dicts of ``jnp`` arrays::

    model = get_model("cnn-bn", num_classes=10)
    _, params, state = model.init(jax.random.key(0), (28, 28, 1))
    logits, state = model.apply(params, x, ops=jaxbp.manual, train=True, rng=key, state=state)

Initialisation (``init`` of :func:`get_model`, one of :data:`INITS`): ``"he"`` (the
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

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]
Params = dict[str, Any]


def _rng(key: Any) -> np.random.Generator:
    """A NumPy generator from a jax PRNG key (typed or raw uint32), an int seed or a generator."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _weights(rng: np.random.Generator, shape: tuple[int, ...], init: str) -> jax.Array:
    """He normal, Glorot uniform or U(+-1/sqrt(fan_in)) ("uniform"); fan_in = prod(shape[:-1])
    (HWIO and [in, out] alike)."""
    fan_in, fan_out = math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]
    if init == "he":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, shape)
    elif init == "uniform":
        limit = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-limit, limit, shape)
    else:
        raise ValueError(f"unknown init {init!r}; choose 'he', 'glorot' or 'uniform'")
    return jnp.asarray(w, jnp.float32)


def _const(value: float, n: int) -> jax.Array:
    return jnp.asarray(np.full((n,), value, np.float32))  # from NumPy: no XLA program to compile


class Layer(NamedTuple):
    """One layer. ``kind`` names its parameters in a model ("conv" -> conv1, conv2...);
    layers without parameters or state have ``kind=None``. ``flops(in_shape, out_shape)``
    counts the forward multiply-adds (x2) per example."""

    kind: str | None
    init: Callable[[jax.Array, Shape], tuple[Shape, Params, Params]]
    apply: Callable[..., tuple[jax.Array, Params]]
    flops: Callable[[Shape, Shape], int] = lambda in_shape, out_shape: 0


class Model(NamedTuple):
    """A composed model: ``init``/``apply`` as for a layer, plus its named layers."""

    init: Callable[[jax.Array, Shape], tuple[Shape, Params, Params]]
    apply: Callable[..., tuple[jax.Array, Params]]
    layers: tuple[tuple[str, Layer], ...]


def _stateless(fn: Callable[..., jax.Array], shape_fn: Callable[[Shape], Shape] = lambda s: s) -> Layer:
    """A layer without parameters: ``fn(ops, x)``."""

    def init(key, input_shape):
        return shape_fn(tuple(input_shape)), {}, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return fn(ops, x), {}

    return Layer(None, init, apply)


# ------------------------------------------------------------------ layers


def Conv(features: int, kernel: int = 3, *, stride: int = 1, padding: str = "SAME", init: str = "he") -> Layer:
    """2-D convolution, NHWC input, HWIO kernel ``w`` [k, k, Cin, features], bias ``b``."""
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Conv: padding must be 'SAME' or 'VALID', got {padding!r}")

    def init_fn(key, input_shape):
        h, w, cin = input_shape
        if padding == "SAME":
            ho, wo = -(-h // stride), -(-w // stride)
        else:
            ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        params = {
            "w": _weights(_rng(key), (kernel, kernel, cin, features), init),
            "b": _const(0.0, features),
        }
        return (ho, wo, features), params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return ops.conv2d(x, params["w"], params["b"], stride=stride, padding=padding), {}

    def flops(in_shape, out_shape):
        return 2 * out_shape[0] * out_shape[1] * kernel * kernel * in_shape[-1] * features

    return Layer("conv", init_fn, apply, flops)


def Dense(features: int, *, init: str = "he") -> Layer:
    """Fully connected layer: ``w`` [in, features], ``b`` [features]."""

    def init_fn(key, input_shape):
        params = {
            "w": _weights(_rng(key), (input_shape[-1], features), init),
            "b": _const(0.0, features),
        }
        return tuple(input_shape[:-1]) + (features,), params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return ops.dense(x, params["w"], params["b"]), {}

    return Layer("dense", init_fn, apply, lambda i, o: 2 * i[-1] * features)


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch norm over every axis but the channels (the last).

    Train mode normalises with the batch statistics (``ops.batch_norm``) and moves the
    running statistics towards them: ``running = momentum * running + (1 - momentum) * batch``,
    counting only the rows that ``mask`` marks real. Eval mode normalises with the running
    statistics.
    """

    def init_fn(key, input_shape):
        c = input_shape[-1]
        params = {"gamma": _const(1.0, c), "beta": _const(0.0, c)}
        state = {"mean": _const(0.0, c), "var": _const(1.0, c)}
        return tuple(input_shape), params, state

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        if not train:
            inv = jax.lax.rsqrt(state["var"] + eps)
            return (x - state["mean"]) * inv * params["gamma"] + params["beta"], state
        y = ops.batch_norm(x, params["gamma"], params["beta"], eps=eps)
        mean, var = _masked_moments(jax.lax.stop_gradient(x), mask)
        new = {
            "mean": momentum * state["mean"] + (1 - momentum) * mean,
            "var": momentum * state["var"] + (1 - momentum) * var,
        }
        return y, new

    return Layer("bn", init_fn, apply)


def _masked_moments(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance over the rows that ``mask`` marks real."""
    axes = tuple(range(x.ndim - 1))
    if mask is None:
        from jaxbp.layers.norm import batch_norm_stats

        return batch_norm_stats(x)
    w = mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    count = jnp.maximum(jnp.sum(w), 1.0) * math.prod(x.shape[1:-1])
    mean = jnp.sum(x * w, axes) / count
    var = jnp.sum(jnp.square(x - mean) * w, axes) / count
    return mean, var


def Dropout(rate: float) -> Layer:
    """Inverted dropout in train mode (``ops.dropout(x, rng, rate)``), identity in eval mode."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")

    def init(key, input_shape):
        return tuple(input_shape), {}, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        if not train or rate == 0.0:
            return x, {}
        if rng is None:
            raise ValueError("Dropout: train mode needs an rng key")
        return ops.dropout(x, rng, rate), {}

    return Layer(None, init, apply)


Relu = _stateless(lambda ops, x: ops.relu(x))
Flatten = _stateless(lambda ops, x: ops.flatten(x), lambda s: (math.prod(s),))


def MaxPool(window: int = 2) -> Layer:
    """Max pooling with stride = window, VALID padding: 28 -> 14 -> 7, 8 -> 4 -> 2."""
    return _stateless(
        lambda ops, x: ops.max_pool2d(x, window=window),
        lambda s: (s[0] // window, s[1] // window, s[2]),
    )


# ------------------------------------------------------------------ composition


def serial(*layers: Layer) -> Model:
    """Compose layers; name those with parameters ``<kind><n>`` (conv1, bn1, dense2)."""
    counts: dict[str, int] = {}
    named = []
    for i, layer in enumerate(layers):
        if layer.kind is None:
            named.append((f"_{i}", layer))
        else:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
            named.append((f"{layer.kind}{counts[layer.kind]}", layer))

    def init(key, input_shape):
        params, state, shape = {}, {}, tuple(input_shape)
        for (name, layer), k in zip(named, _rng(key).spawn(len(named))):
            shape, p, s = layer.init(k, shape)
            if p:
                params[name] = p
            if s:
                state[name] = s
        return shape, params, state

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        state = state or {}
        new_state = {}
        for i, (name, layer) in enumerate(named):
            key = None if rng is None else jax.random.fold_in(rng, i)
            x, s = layer.apply(params.get(name, {}), x, ops=ops, train=train, rng=key, state=state.get(name), mask=mask)
            if name in state:
                new_state[name] = s
        return x, new_state

    return Model(init, apply, tuple(named))


# ------------------------------------------------------------------ built-in models

MODELS = ("cnn", "cnn-bn", "mlp")
INITS = ("he", "uniform")  # initialisation schemes of the built-in models (see the module docstring)


def get_model(name: str, num_classes: int, *, dropout: float = 0.0, init: str = "he") -> Model:
    """A built-in model by name (see :data:`MODELS`); ``dropout`` before the last dense;
    ``init`` one of :data:`INITS`."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    last = "glorot" if init == "he" else init
    head = ([Dropout(dropout)] if dropout > 0 else []) + [Dense(num_classes, init=last)]
    if name == "mlp":
        return serial(Flatten, Dense(256, init=init), Relu, *head)
    if name in ("cnn", "cnn-bn"):
        bn = [BatchNorm()] if name == "cnn-bn" else []
        return serial(
            Conv(32, init=init), *bn, Relu, MaxPool(2),
            Conv(64, init=init), *bn, Relu, MaxPool(2),
            Flatten, Dense(128, init=init), Relu, *head,
        )  # fmt: skip
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def flops(model: Model, input_shape: Shape, *, by_layer: bool = False) -> int | dict[str, int]:
    """Forward FLOPs per example: conv ``2*Ho*Wo*KH*KW*Cin*Cout``, dense ``2*in*out``; the
    element-wise layers (ReLU, pooling, batch norm) are not counted. ``by_layer`` gives the
    count per named layer instead of the total."""
    counts, shape = {}, tuple(input_shape)
    for name, layer in model.layers:
        out_shape = _output_shape(layer, shape)
        if layer.kind is not None:
            counts[name] = int(layer.flops(shape, out_shape))
        shape = out_shape
    return counts if by_layer else sum(counts.values())


def _output_shape(layer: Layer, input_shape: Shape) -> Shape:
    return layer.init(np.random.default_rng(0), input_shape)[0]
