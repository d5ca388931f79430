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

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.choices import INITS, MODELS
from jaxbp.loading import LoadError, first_line, load_function, split_spec, user_code

Shape = tuple[int, ...]
Params = dict[str, Any]


class ModelError(ValueError):
    """A model that cannot be built: a user's model spec that does not load or returns the
    wrong thing, or a :func:`Custom` layer whose two implementations disagree. The message
    is one line naming the spec or the layer (the CLI prints it and exits with status 2)."""


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


# The most values one layer's weights may hold: 2**28, 1 GiB of float32 (the built-in models' largest
# layer holds 0.4 million). A layer asking for more is refused at init, before anything is allocated.
MAX_LAYER_PARAMS = 1 << 28


def _positive_int(layer: str, what: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer; :class:`ModelError` naming the layer otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ModelError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _check_weights(layer: str, shape: tuple[int, ...]) -> tuple[int, ...]:
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
    ``None`` for the layers :func:`flops` does not count (element-wise ones)."""

    kind: str | None
    init: Callable[[jax.Array, Shape], tuple[Shape, Params, Params]]
    apply: Callable[..., tuple[jax.Array, Params]]
    flops: Callable[[Shape, Shape], int] | None = None


class Model(NamedTuple):
    """A composed model: ``init``/``apply`` as for a layer, plus its named layers."""

    init: Callable[[jax.Array, Shape], tuple[Shape, Params, Params]]
    apply: Callable[..., tuple[jax.Array, Params]]
    layers: tuple[tuple[str, Layer], ...]


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


def Conv(features: int, kernel: int = 3, *, stride: int = 1, padding: str = "SAME", init: str = "he") -> Layer:
    """2-D convolution, NHWC input, HWIO kernel ``w`` [k, k, Cin, features], bias ``b``."""
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Conv: padding must be 'SAME' or 'VALID', got {padding!r}")
    features, kernel, stride = (_positive_int("Conv", k, v) for k, v in (("features", features),
                                ("kernel", kernel), ("stride", stride)))  # fmt: skip
    label = f"Conv({features}, kernel={kernel})"

    def init_fn(key, input_shape):
        h, w, cin = input_shape
        if padding == "SAME":
            ho, wo = -(-h // stride), -(-w // stride)
        else:
            ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        params = {
            "w": _weights(_rng(key), _check_weights(label, (kernel, kernel, cin, features)), init),
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
    features = _positive_int("Dense", "features", features)

    def init_fn(key, input_shape):
        params = {
            "w": _weights(_rng(key), _check_weights(f"Dense({features})", (input_shape[-1], features)), init),
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
Flatten = _stateless("flatten", lambda ops, x: ops.flatten(x), lambda s: (math.prod(s),))
GlobalAvgPool = _stateless("global_avg_pool", lambda ops, x: ops.global_avg_pool(x), lambda s: (s[-1],))
"""The mean of each channel over H and W: [H, W, C] -> [C] (``ops.global_avg_pool``)."""


def MaxPool(window: int = 2) -> Layer:
    """Max pooling with stride = window, VALID padding: 28 -> 14 -> 7, 8 -> 4 -> 2."""
    window = _positive_int("MaxPool", "window", window)
    return _stateless(
        "max_pool2d",
        lambda ops, x: ops.max_pool2d(x, window=window),
        lambda s: (s[0] // window, s[1] // window, s[2]),
    )


# ------------------------------------------------------------------ a user's own layer


def Custom(
    manual: Callable,
    reference: Callable,
    *,
    init: Callable[[jax.Array, Shape], tuple[Shape, Any]] | None = None,
    name: str = "custom",
) -> Layer:
    """A user's own layer: ``manual`` (usually a ``jax.custom_vjp`` function) when the model
    runs on hand-derived ops, ``reference`` (plain JAX) when it runs on :mod:`jaxbp.autodiff`.

    Which one runs is decided per call by :func:`gradients_of` of the ``ops`` the model is
    applied with: :mod:`jaxbp.autodiff` carries ``GRADIENTS = "autodiff"`` and gets
    ``reference``; :mod:`jaxbp.manual` (and any namespace without the marker, such as a
    test's) gets ``manual``. So ``grad="compare"`` compares the user's backward with
    ``jax.grad`` of the reference.

    Without ``init`` the layer has no parameters: ``fn(x)``, x [N, ...]; the output shape
    comes from ``jax.eval_shape``. With ``init(key, input_shape) -> (output_shape, params)``
    (``key`` a ``jax.random.key``, shapes per example) it is parametric: ``fn(params, x)``,
    ``params`` any pytree of arrays, filed in the model's params under ``<name><n>``.
    ``init`` of the model evaluates both functions' output shapes (no compilation): a
    shape or dtype that differs between them, or from what ``init`` declares, is a
    :class:`ModelError` naming the layer.
    """
    if not (isinstance(name, str) and name.isidentifier()):
        raise ModelError(f"Custom: name must be a Python identifier (it names the parameters), got {name!r}")
    for label, fn in (("manual", manual), ("reference", reference), ("init", init)):
        if fn is not None and not callable(fn):
            raise ModelError(f"Custom layer {name!r}: {label} must be callable, got a {type(fn).__name__}")

    def call(fn, params, x):
        return fn(params, x) if init is not None else fn(x)

    def init_fn(key, input_shape):
        input_shape = tuple(input_shape)
        declared, params = (None, {}) if init is None else _custom_init(name, init, key, input_shape)
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        out = {}
        for label, fn in (("manual", manual), ("reference", reference)):
            try:
                out[label] = jax.eval_shape(partial(call, fn), params, x)
            except (Exception, SystemExit) as e:  # the user's function may raise anything
                raise ModelError(
                    f"Custom layer {name!r}: {label} fails on input {x.shape} {x.dtype}: "
                    f"{type(e).__name__}: {first_line(e)}"
                ) from e
            if not isinstance(out[label], jax.ShapeDtypeStruct):
                raise ModelError(f"Custom layer {name!r}: {label} must return one array, got {out[label]}")
        m, r = out["manual"], out["reference"]
        if (m.shape, m.dtype) != (r.shape, r.dtype):
            raise ModelError(
                f"Custom layer {name!r}: manual gives {m.shape} {m.dtype} but reference gives "
                f"{r.shape} {r.dtype} for input {x.shape} {x.dtype}"
            )
        if declared is not None and tuple(declared) != m.shape[1:]:
            raise ModelError(
                f"Custom layer {name!r}: init declares output shape {tuple(declared)}, the layer gives {m.shape[1:]}"
            )
        return m.shape[1:], params, {}

    def apply(params, x, *, ops, train=False, rng=None, state=None, mask=None):
        fn = reference if gradients_of(ops) == "autodiff" else manual
        return call(fn, params, x), {}

    return Layer(name, init_fn, apply)


def _custom_init(name: str, init: Callable, key: Any, input_shape: Shape) -> tuple[Shape, Any]:
    """``(declared output shape, params)`` from a :func:`Custom` layer's ``init``, checked."""
    try:
        result = init(jax.random.key(_rng(key).integers(2**31)), input_shape)
    except (Exception, SystemExit) as e:  # the user's function may raise anything
        raise ModelError(
            f"Custom layer {name!r}: init raised {type(e).__name__}: {first_line(e)} (input shape {input_shape})"
        ) from e
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelError(f"Custom layer {name!r}: init must return (output_shape, params), got {reprlib.repr(result)}")
    declared, params = result
    if not (isinstance(declared, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in declared)):
        raise ModelError(
            f"Custom layer {name!r}: init's output_shape must be a tuple of ints, got {reprlib.repr(declared)}"
        )
    return tuple(int(d) for d in declared), params


# ------------------------------------------------------------------ composition


def serial(*layers: Layer) -> Model:
    """Compose layers; name the n-th layer of each kind ``<kind><n>`` (conv1, bn1, relu2, dense2)."""
    counts: dict[str, int] = {}
    named = []
    for layer in layers:
        kind = layer.kind or "layer"
        counts[kind] = counts.get(kind, 0) + 1
        named.append((f"{kind}{counts[kind]}", layer))

    def init(key, input_shape):
        params, state, shape = {}, {}, tuple(input_shape)
        for (name, layer), k in zip(named, _rng(key).spawn(len(named))):
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

    return Model(init, apply, tuple(named))


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
        branch_key, proj_key = _rng(key).spawn(2)
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

    return Layer("res", init_fn, apply, count)


# ------------------------------------------------------------------ built-in models


def get_model(name: str, num_classes: int, *, dropout: float = 0.0, init: str = "he") -> Model:
    """A built-in model by name (see :data:`jaxbp.choices.MODELS`), or a user's model by spec (see
    :func:`load_model`). ``dropout`` before the last dense; ``init`` one of :data:`jaxbp.choices.INITS`.

    ``dropout`` and ``init`` shape the built-in models only: a user's model is built by
    its own code, so for a spec anything but their defaults (0 and "he") is a
    :class:`ModelError` rather than an option silently ignored.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if check_model_name(name) not in MODELS:
        if dropout != 0.0 or init != "he":
            raise ModelError(
                f"{name!r}: dropout and init apply to the built-in models only; "
                "put Dropout or your own initialisation into the model itself"
            )
        return load_model(name, num_classes)
    last = "glorot" if init == "he" else init
    head = ([Dropout(dropout)] if dropout > 0 else []) + [Dense(num_classes, init=last)]
    if name == "mlp":
        return serial(Flatten, Dense(256, init=init), Relu, *head)
    if name == "resnet":
        return serial(Conv(8, init=init), BatchNorm(), Relu, *_block(32, init), *_block(64, init), GlobalAvgPool, *head)
    bn = [BatchNorm()] if name == "cnn-bn" else []
    return serial(
        Conv(32, init=init), *bn, Relu, MaxPool(2),
        Conv(64, init=init), *bn, Relu, MaxPool(2),
        Flatten, Dense(128, init=init), Relu, *head,
    )  # fmt: skip


def _block(features: int, init: str) -> list[Layer]:
    """resnet's stage: a stride-2 residual block (conv-bn-relu-conv-bn, 1x1 projection), then ReLU."""
    branch = (Conv(features, stride=2, init=init), BatchNorm(), Relu, Conv(features, init=init), BatchNorm())
    return [Residual(*branch, init=init), Relu]


# ------------------------------------------------------------------ a user's model by name


def check_model_name(name: str) -> str:
    """``name`` if it is a built-in model or a well-formed ``MODULE:FUNCTION`` /
    ``path/to/file.py:FUNCTION`` spec (nothing is imported); :class:`ModelError` otherwise."""
    if name in MODELS:
        return name
    if isinstance(name, str) and ":" in name:
        try:
            split_spec(name)
        except LoadError as e:
            raise ModelError(str(e)) from None
        return name
    raise ModelError(
        f"unknown model {name!r}; choose one of {', '.join(MODELS)}, "
        "or give MODULE:FUNCTION or path/to/file.py:FUNCTION"
    )


def short_name(name: str) -> str:
    """A file-name-safe name of a model: a built-in name as it is, a spec as
    ``<module>.<function>`` (``examples/custom_layer.py:make_model`` -> ``custom_layer.make_model``)."""
    if name in MODELS:
        return name
    module_part, attr_path = split_spec(check_model_name(name))
    module = Path(module_part).stem if module_part.endswith(".py") else module_part.rsplit(".", 1)[-1]
    return f"{module}.{attr_path}"


def load_model(spec: str, num_classes: int) -> Model:
    """The model ``FUNCTION(num_classes)`` of a ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``
    spec (loaded by :func:`jaxbp.loading.load_function`); it must return a :class:`Model`
    built with :func:`serial`. Any failure is a one-line :class:`ModelError` naming the spec."""
    check_model_name(spec)
    try:
        fn = load_function(spec)
        with user_code(spec, f"calling it with num_classes={num_classes}"):
            model = fn(num_classes)
    except LoadError as e:
        raise ModelError(str(e)) from None
    except Exception as e:  # the user's code may raise anything
        raise ModelError(
            f"{spec!r}: calling it with num_classes={num_classes} raised {type(e).__name__}: {first_line(e)}"
        ) from e
    if not isinstance(model, Model):
        raise ModelError(
            f"{spec!r} returned a {type(model).__name__}, not a jaxbp.models.Model (build it with jaxbp.models.serial)"
        )
    return _with_classes(model, num_classes)


def _with_classes(model: Model, num_classes: int) -> Model:
    """``model`` whose ``init`` refuses an output other than ``(num_classes,)`` per example: a user's
    model with fewer outputs than classes would train on, silently, to chance accuracy."""

    def init(key, input_shape):
        out_shape, params, state = model.init(key, input_shape)
        if tuple(out_shape) != (num_classes,):
            raise ModelError(
                f"its output has shape {tuple(out_shape)} per example, but the data set has {num_classes} classes "
                f"(num_classes={num_classes}): end the model with Dense(num_classes)"
            )
        return out_shape, params, state

    return model._replace(init=init)


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
