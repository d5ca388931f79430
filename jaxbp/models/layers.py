"""The building blocks of jaxbp's models: :class:`Layer` and :class:`Model`, the layers, and their
composition (:func:`serial`, :func:`Residual`). See :mod:`jaxbp.models` for the conventions."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.choices import OBJECTIVES

__all__ = [
    "MAX_LAYER_PARAMS",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
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
    "Params",
    "Relu",
    "Residual",
    "Shape",
    "check_weights",
    "constant",
    "flops",
    "gradients_of",
    "init_weights",
    "key_rng",
    "positive_int",
    "serial",
]

Shape = tuple[int, ...]
Params = dict[str, Any]


class ModelError(ValueError):
    """A model that cannot be built: a user's model spec that does not load or returns the
    wrong thing, or a :func:`Custom` layer whose two implementations disagree. The message
    is one line naming the spec or the layer (the CLI prints it and exits with status 2)."""


def key_rng(key: Any) -> np.random.Generator:
    """A NumPy generator from a jax PRNG key (typed or raw uint32), an int seed or a generator."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def init_weights(rng: np.random.Generator, shape: tuple[int, ...], init: str) -> jax.Array:
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


def constant(value: float, n: int) -> jax.Array:
    return jnp.asarray(np.full((n,), value, np.float32))  # from NumPy: no XLA program to compile


# The most values one layer's weights may hold: 2**28, 1 GiB of float32 (the built-in models' largest
# layer holds 0.4 million). A layer asking for more is refused at init, before anything is allocated.
MAX_LAYER_PARAMS = 1 << 28


def positive_int(layer: str, what: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer; :class:`ModelError` naming the layer otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ModelError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


def check_weights(layer: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` if its weights fit :data:`MAX_LAYER_PARAMS`; :class:`ModelError` naming the layer otherwise."""
    size = math.prod(shape)
    if size > MAX_LAYER_PARAMS:
        raise ModelError(
            f"{layer}: its weights {list(shape)} would hold {size} values, more than the limit of "
            f"{MAX_LAYER_PARAMS} (1 GiB of float32)"
        )
    return shape


class Layer(NamedTuple):
    """One layer. ``kind`` names it in a model: :func:`serial` calls the n-th layer of a
    kind ``<kind><n>`` (conv1, relu2, res1) and files its parameters and state under that
    name. ``flops(in_shape, out_shape)`` counts the forward multiply-adds (x2) per example;
    ``None`` for the layers :func:`flops` does not count (element-wise ones). ``branch``: the
    layers a composite layer runs (a :func:`Residual`'s ``f``), for tools that walk a model."""

    kind: str | None
    init: Callable[[jax.Array, Shape], tuple[Shape, Params, Params]]
    apply: Callable[..., tuple[jax.Array, Params]]
    flops: Callable[[Shape, Shape], int] | None = None
    branch: Model | None = None


class Model(NamedTuple):
    """A composed model: ``init``/``apply`` as for a layer, its named layers, and what it is
    trained for (one of :data:`jaxbp.choices.OBJECTIVES`): ``"classify"``, an output of class
    scores per example under softmax cross-entropy, or ``"reconstruct"``, an output of the
    input's shape under mean squared error against the input (an autoencoder)."""

    init: Callable[[jax.Array, Shape], tuple[Shape, Params, Params]]
    apply: Callable[..., tuple[jax.Array, Params]]
    layers: tuple[tuple[str, Layer], ...]
    objective: str = "classify"


def _stateless(kind: str, fn: Callable[..., jax.Array], shape_fn: Callable[[Shape], Shape] = lambda s: s) -> Layer:
    """A layer without parameters: ``fn(ops, x)``."""

    def init(key, input_shape):
        return shape_fn(tuple(input_shape)), {}, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return fn(ops, x), {}

    return Layer(kind, init, apply)


def gradients_of(ops: Any) -> str:
    """``"autodiff"`` for :mod:`jaxbp.autodiff` (its ``GRADIENTS`` marker), else ``"manual"``.

    A namespace without the marker (a test's namespace with a planted wrong op, a
    user's own) counts as hand-derived: it is the one under test, as ``ops=`` of
    ``make_train_step`` is.
    """
    return "autodiff" if getattr(ops, "GRADIENTS", "manual") == "autodiff" else "manual"


# ------------------------------------------------------------------ layers


def Conv(
    features: int, kernel: int = 3, *, stride: int = 1, padding: str = "SAME", groups: int = 1, init: str = "he"
) -> Layer:
    """2-D convolution, NHWC input, HWIO kernel ``w`` [k, k, Cin/groups, features], bias ``b``.

    ``groups`` splits the channels into groups convolved separately; ``groups = Cin = features``
    is a depthwise convolution (one k x k filter per channel, as in MobileNet and ConvNeXt).
    """
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Conv: padding must be 'SAME' or 'VALID', got {padding!r}")
    features, kernel, stride, groups = (positive_int("Conv", k, v) for k, v in (("features", features),
                                        ("kernel", kernel), ("stride", stride), ("groups", groups)))  # fmt: skip
    label = f"Conv({features}, kernel={kernel}" + (f", groups={groups})" if groups > 1 else ")")

    def init_fn(key, input_shape):
        h, w, cin = input_shape
        if cin % groups or features % groups:
            raise ModelError(f"{label}: groups must divide the input channels ({cin}) and the features ({features})")
        if padding == "SAME":
            ho, wo = -(-h // stride), -(-w // stride)
        else:
            ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        params = {
            "w": init_weights(key_rng(key), check_weights(label, (kernel, kernel, cin // groups, features)), init),
            "b": constant(0.0, features),
        }
        return (ho, wo, features), params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return ops.conv2d(x, params["w"], params["b"], stride=stride, padding=padding, groups=groups), {}

    def flops(in_shape, out_shape):
        return 2 * out_shape[0] * out_shape[1] * kernel * kernel * (in_shape[-1] // groups) * features

    return Layer("conv", init_fn, apply, flops)


def ConvTranspose(features: int, kernel: int = 4, *, stride: int = 2, padding: int = 1, init: str = "he") -> Layer:
    """Transposed convolution (``ops.conv_transpose2d``, PyTorch ``ConvTranspose2d`` semantics):
    ``w`` [k, k, Cin, features], bias ``b``; output ``(H - 1) stride - 2 padding + kernel`` per axis
    (kernel 4, stride 2, padding 1 doubles H and W)."""
    features, kernel, stride = (positive_int("ConvTranspose", k, v) for k, v in (("features", features),
                                ("kernel", kernel), ("stride", stride)))  # fmt: skip
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ModelError(f"ConvTranspose: padding must be an integer >= 0, got {padding!r}")
    label = f"ConvTranspose({features}, kernel={kernel})"

    def out_size(n: int) -> int:
        return (n - 1) * stride - 2 * padding + kernel

    def init_fn(key, input_shape):
        h, w, cin = input_shape
        if min(out_size(h), out_size(w)) < 1:
            raise ModelError(f"{label}: an input of {h}x{w} gives an empty output")
        shape = check_weights(label, (kernel, kernel, cin, features))
        params = {"w": init_weights(key_rng(key), shape, init), "b": constant(0.0, features)}
        return (out_size(h), out_size(w), features), params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return ops.conv_transpose2d(x, params["w"], params["b"], stride=stride, padding=padding), {}

    def flops(in_shape, out_shape):
        return 2 * in_shape[0] * in_shape[1] * kernel * kernel * in_shape[-1] * features

    return Layer("convT", init_fn, apply, flops)


def Dense(features: int, *, init: str = "he") -> Layer:
    """Fully connected layer: ``w`` [in, features], ``b`` [features]."""
    features = positive_int("Dense", "features", features)

    def init_fn(key, input_shape):
        params = {
            "w": init_weights(key_rng(key), check_weights(f"Dense({features})", (input_shape[-1], features)), init),
            "b": constant(0.0, features),
        }
        return tuple(input_shape[:-1]) + (features,), params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return ops.dense(x, params["w"], params["b"]), {}

    return Layer("dense", init_fn, apply, lambda i, o: 2 * math.prod(i) * features)  # per position of [..., in]


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch norm over every axis but the channels (the last).

    Train mode normalises with the batch statistics (``ops.batch_norm``) and moves the
    running statistics towards them: ``running = momentum * running + (1 - momentum) * batch``,
    counting only the rows that ``mask`` marks real. Eval mode normalises with the running
    statistics.
    """

    def init_fn(key, input_shape):
        c = input_shape[-1]
        params = {"gamma": constant(1.0, c), "beta": constant(0.0, c)}
        state = {"mean": constant(0.0, c), "var": constant(1.0, c)}
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
    w = mask.astype(x.dtype)[:, None]  # [N, 1]
    count = jnp.maximum(jnp.sum(w), 1.0) * math.prod(x.shape[1:-1])

    def masked_sum(v):
        # Each example's rows first, then the [N, C] sums weighted by the mask: weighting v
        # itself made XLA materialise the mask broadcast to v's shape for each reduction.
        # (A sum, not a matmul: a matmul would run in bfloat16 under TPUs' default precision.)
        return jnp.sum(w * jnp.sum(v, axes[1:]).reshape(x.shape[0], -1), 0)

    mean = masked_sum(x) / count
    var = masked_sum(jnp.square(x - mean)) / count
    return mean, var


def LayerNorm(*, eps: float = 1e-6) -> Layer:
    """Layer norm over the channels (the last axis) of each position, ``ops.layer_norm``:
    ``gamma`` [C] and ``beta`` [C]; the same in train and eval mode (no running statistics)."""

    def init_fn(key, input_shape):
        c = input_shape[-1]
        return tuple(input_shape), {"gamma": constant(1.0, c), "beta": constant(0.0, c)}, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        return ops.layer_norm(x, params["gamma"], params["beta"], eps=eps), {}

    return Layer("ln", init_fn, apply)


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

    return Layer("dropout", init, apply)


Relu = _stateless("relu", lambda ops, x: ops.relu(x))
Gelu = _stateless("gelu", lambda ops, x: ops.gelu(x))
"""GELU, the exact (erf) form: ``x Phi(x)`` (``ops.gelu``)."""
Flatten = _stateless("flatten", lambda ops, x: ops.flatten(x), lambda s: (math.prod(s),))
GlobalAvgPool = _stateless("global_avg_pool", lambda ops, x: ops.global_avg_pool(x), lambda s: (s[-1],))
"""The mean of each channel over H and W: [H, W, C] -> [C] (``ops.global_avg_pool``)."""


def MaxPool(window: int = 2) -> Layer:
    """Max pooling with stride = window, VALID padding: 28 -> 14 -> 7, 8 -> 4 -> 2."""
    window = positive_int("MaxPool", "window", window)
    return _stateless(
        "max_pool2d",
        lambda ops, x: ops.max_pool2d(x, window=window),
        lambda s: (s[0] // window, s[1] // window, s[2]),
    )


# ------------------------------------------------------------------ composition


def serial(*layers: Layer, objective: str = "classify") -> Model:
    """Compose layers; name the n-th layer of each kind ``<kind><n>`` (conv1, bn1, relu2, dense2).
    ``objective`` (see :class:`Model`): ``"reconstruct"`` for a model trained to give back its input."""
    if objective not in OBJECTIVES:
        raise ModelError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    counts: dict[str, int] = {}
    named = []
    for layer in layers:
        kind = layer.kind or "layer"
        counts[kind] = counts.get(kind, 0) + 1
        named.append((f"{kind}{counts[kind]}", layer))

    def init(key, input_shape):
        params, state, shape = {}, {}, tuple(input_shape)
        for (name, layer), k in zip(named, key_rng(key).spawn(len(named))):
            shape, p, s = layer.init(k, shape)
            if jax.tree.leaves(p):  # any pytree (a Custom layer's); {} for layers without parameters
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

    return Model(init, apply, tuple(named), objective)


def Residual(*layers: Layer, init: str = "he") -> Layer:
    """A residual block: ``y = x + f(x)`` with ``f = serial(*layers)``, added by
    ``ops.residual_add`` (its backward, the fan-out of ``dy`` to both paths, is hand-derived).

    Where ``f`` changes the shape (more channels, or a stride), the skip path is a 1x1
    convolution ``proj`` with the stride that maps ``x`` onto ``f(x)``'s shape (``init``
    initialises it): ``y = proj(x) + f(x)``. Params and state are ``f``'s, named as
    :func:`serial` names them (``conv1``, ``bn1``...), plus ``proj``.
    """
    branch = serial(*layers)

    def projection(in_shape: Shape, out_shape: Shape) -> Layer | None:
        if tuple(in_shape) == tuple(out_shape):
            return None
        if len(in_shape) == 3 and len(out_shape) == 3 and min(out_shape[:2]) >= 1:
            stride = max(1, round(in_shape[0] / out_shape[0]))
            if all(-(-n // stride) == m for n, m in zip(in_shape[:2], out_shape[:2])):
                return Conv(out_shape[2], 1, stride=stride, init=init)
        raise ModelError(
            f"Residual: a strided 1x1 conv cannot map the input {in_shape} onto the branch's output {out_shape}"
        )

    def init_fn(key, input_shape):
        branch_key, proj_key = key_rng(key).spawn(2)
        out_shape, params, state = branch.init(branch_key, input_shape)
        proj = projection(tuple(input_shape), out_shape)
        if proj is not None:
            params = {**params, "proj": proj.init(proj_key, input_shape)[1]}
        return out_shape, params, state

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        branch_params = {k: v for k, v in params.items() if k != "proj"}
        fx, new_state = branch.apply(branch_params, x, ops=ops, train=train, rng=rng, state=state, mask=mask)
        proj = projection(x.shape[1:], fx.shape[1:])
        skip = x if proj is None else proj.apply(params["proj"], x, ops=ops)[0]
        return ops.residual_add(skip, fx), new_state

    def count(in_shape, out_shape):
        proj = projection(tuple(in_shape), tuple(out_shape))
        return flops(branch, in_shape) + (0 if proj is None else proj.flops(in_shape, out_shape))

    return Layer("res", init_fn, apply, count, branch)


def flops(model: Model, input_shape: Shape, *, by_layer: bool = False) -> int | dict[str, int]:
    """Forward FLOPs per example: conv ``2*Ho*Wo*KH*KW*Cin*Cout``, dense ``2*in*out``; the
    element-wise layers (ReLU, pooling, batch norm, the residual add) and Custom layers
    are not counted; a Residual counts its branch and projection. ``by_layer`` gives the
    count per named layer instead of the total."""
    counts, shape = {}, tuple(input_shape)
    for name, layer in model.layers:
        out_shape = _output_shape(layer, shape)
        if layer.flops is not None:
            counts[name] = int(layer.flops(shape, out_shape))
        shape = out_shape
    return counts if by_layer else sum(counts.values())


def _output_shape(layer: Layer, input_shape: Shape) -> Shape:
    return layer.init(np.random.default_rng(0), input_shape)[0]
