"""A user's own layers and models: Custom (manual vs reference), Residual, GlobalAvgPool,
user models by MODULE:FUNCTION spec, and the resnet in training."""

from __future__ import annotations

import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbp import autodiff, data, loading, manual, models
from jaxbp.choices import MODELS
from jaxbp.train import make_train_step

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_layer.py"
swish = loading.load_function(f"{EXAMPLE}:swish")
swish_reference = loading.load_function(f"{EXAMPLE}:swish_reference")


# A parametric layer: a per-channel affine map y = a x + b, params a pytree (a tuple).
def affine_reference(params, x):
    a, b = params
    return a * x + b


@jax.custom_vjp
def affine(params, x):
    return affine_reference(params, x)


def _affine_fwd(params, x):
    return affine_reference(params, x), (params[0], x)


def _affine_bwd(res, dy):
    a, x = res
    return ((jnp.sum(dy * x, 0), jnp.sum(dy, 0)), dy * a)  # da = sum dy x, db = sum dy; dx = dy a


affine.defvjp(_affine_fwd, _affine_bwd)


def affine_init(key, input_shape):
    k = input_shape[-1]
    return tuple(input_shape), (1.0 + 0.1 * jax.random.normal(key, (k,)), jnp.zeros(k))


def custom_model(manual_act=swish) -> models.Model:
    return models.serial(
        models.Conv(4), models.Custom(manual=manual_act, reference=swish_reference, name="swish"), models.MaxPool(2),
        models.Flatten, models.Custom(manual=affine, reference=affine_reference, init=affine_init, name="affine"),
        models.Dense(10, init="glorot"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _train(model, digits, grad, steps, batch_size=32, optimizer=None):
    optimizer = optimizer or optax.sgd(0.05, momentum=0.9)
    _, params, state = model.init(0, digits.input_shape)
    opt_state = optimizer.init(params)
    step = make_train_step(model, optimizer, grad=grad)
    losses, metrics = [], []
    epoch = 0
    while len(losses) < steps:
        for xb, yb, n in data.batches(digits.x_train, digits.y_train, batch_size, seed=0, epoch=epoch, drop_last=True):
            params, opt_state, state, m = step(params, opt_state, state, xb, yb, jnp.int32(n), jax.random.key(0))
            losses.append(float(m["loss"]))
            metrics.append(m)
            if len(losses) == steps:
                break
        epoch += 1
    return np.array(losses), metrics, params


def test_custom_picks_manual_or_reference_by_the_ops_marker():
    layer = models.Custom(manual=lambda x: x + 1, reference=lambda x: x + 2, name="probe")
    x = jnp.zeros((1, 3))
    injected = types.SimpleNamespace(**{name: getattr(manual, name) for name in manual.__all__})  # no marker
    got = {label: float(layer.apply({}, x, ops=ops)[0][0, 0]) for label, ops in
           (("manual", manual), ("autodiff", autodiff), ("injected", injected))}  # fmt: skip
    assert got == {"manual": 1.0, "autodiff": 2.0, "injected": 1.0}
    assert models.gradients_of(autodiff) == "autodiff" and models.gradients_of(injected) == "manual"


def test_custom_layers_train_alike_with_manual_and_autodiff_gradients(digits):
    model = custom_model()
    out_shape, params, _ = model.init(0, digits.input_shape)
    assert out_shape == (10,) and list(params) == ["conv1", "affine1", "dense1"]  # named like the others
    assert isinstance(params["affine1"], tuple) and params["affine1"][0].shape == (64,)
    manual_losses, _, _ = _train(model, digits, "manual", 20)
    autodiff_losses, _, _ = _train(model, digits, "autodiff", 20)
    np.testing.assert_allclose(manual_losses, autodiff_losses, rtol=1e-5)
    assert manual_losses[-5:].mean() < manual_losses[:5].mean()  # it trains


def test_compare_mode_flags_a_wrong_backward_in_a_custom_layer(digits):
    @jax.custom_vjp
    def bad_swish(x):
        return swish_reference(x)

    s = jax.nn.sigmoid
    bad_swish.defvjp(lambda x: (bad_swish(x), x), lambda x, dy: (dy * s(x),))  # drops the x s (1 - s) term
    _, metrics, _ = _train(custom_model(bad_swish), digits, "compare", 1)
    rel_err = metrics[0]["rel_err"]
    assert float(rel_err["conv1"]["w"]) > 0.05  # far above compare_rtol (1e-4): the run would stop
    assert float(rel_err["dense1"]["w"]) < 1e-5  # after the wrong layer the gradients still agree


def test_custom_layer_whose_implementations_disagree_is_a_clear_error():
    bad_shape = models.serial(
        models.Flatten, models.Custom(manual=lambda x: x, reference=lambda x: x[:, 1:], name="cut")
    )
    with pytest.raises(
        models.ModelError, match=r"^Custom layer 'cut': manual gives \(1, 12\) float32 but reference gives \(1, 11\)"
    ):
        bad_shape.init(0, (3, 4))
    bad_dtype = models.Custom(manual=lambda x: x, reference=lambda x: x.astype(jnp.float16), name="half")
    with pytest.raises(models.ModelError, match="float32 but reference gives .* float16"):
        bad_dtype.init(0, (3,))
    wrong_init = models.Custom(
        manual=affine, reference=affine_reference, init=lambda k, s: ((7,), (1.0, 0.0)), name="a"
    )
    with pytest.raises(models.ModelError, match=r"'a': init declares output shape \(7,\), the layer gives \(3,\)"):
        wrong_init.init(0, (3,))
    raising = models.Custom(manual=lambda x: x @ jnp.ones((5, 2)), reference=lambda x: x, name="mm")
    with pytest.raises(models.ModelError, match="'mm': manual fails on input .*TypeError") as info:
        raising.init(0, (3,))
    assert "\n" not in str(info.value)
    with pytest.raises(models.ModelError, match="name must be a Python identifier"):
        models.Custom(manual=swish, reference=swish_reference, name="my layer")


def test_residual_identity_and_projection():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 2)), jnp.float32)
    same = models.Residual(models.Conv(2), models.Relu)
    shape, params, _ = same.init(0, (5, 5, 2))
    assert shape == (5, 5, 2) and list(params) == ["conv1"]  # no projection where the shape is kept
    branch = jax.nn.relu(autodiff.conv2d(x, params["conv1"]["w"], params["conv1"]["b"], padding="SAME"))
    np.testing.assert_allclose(same.apply(params, x, ops=manual)[0], x + branch, rtol=1e-6, atol=1e-6)

    down = models.Residual(models.Conv(4, stride=2), models.Relu)  # 5x5x2 -> 3x3x4
    shape, params, _ = down.init(0, (5, 5, 2))
    assert shape == (3, 3, 4) and params["proj"]["w"].shape == (1, 1, 2, 4)
    proj = autodiff.conv2d(x, params["proj"]["w"], params["proj"]["b"], stride=2, padding="SAME")
    branch = jax.nn.relu(autodiff.conv2d(x, params["conv1"]["w"], params["conv1"]["b"], stride=2, padding="SAME"))
    for ops in (manual, autodiff):
        np.testing.assert_allclose(down.apply(params, x, ops=ops)[0], proj + branch, rtol=1e-6, atol=1e-6)
    assert models.flops(models.serial(down), (5, 5, 2)) == 2 * 9 * (9 * 2 * 4) + 2 * 9 * (2 * 4)
    with pytest.raises(models.ModelError, match=r"Residual: a strided 1x1 conv cannot map the input \(5, 5, 2\)"):
        models.Residual(models.Flatten).init(0, (5, 5, 2))


def test_global_avg_pool_layer():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4, 5)), jnp.float32)
    shape, params, _ = models.GlobalAvgPool.init(0, (3, 4, 5))
    assert shape == (5,) and params == {}
    for ops in (manual, autodiff):
        np.testing.assert_allclose(models.GlobalAvgPool.apply({}, x, ops=ops)[0], x.mean(axis=(1, 2)), rtol=1e-6)


def test_resnet_trains(digits):
    model = models.get_model("resnet", digits.num_classes)
    losses, _, _ = _train(model, digits, "manual", 12, optimizer=optax.adam(3e-3))
    assert np.all(np.isfinite(losses)) and losses[-4:].mean() < losses[:4].mean() - 0.1


# ------------------------------------------------------------------ user models by spec

BUILD = """
from jaxbp import models

def build(num_classes):
    return models.serial(models.Flatten, models.Dense(num_classes))

def not_a_model(num_classes):
    return [models.Flatten, models.Dense(num_classes)]

def raises(num_classes):
    raise RuntimeError("no GPU here\\nsecond line")
"""


def test_a_model_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "user_model_file.py").write_text(BUILD)
    model = models.get_model(f"{tmp_path}/user_model_file.py:build", 3)
    shape, params, _ = model.init(0, (4, 4, 1))
    assert shape == (3,) and params["dense1"]["w"].shape == (16, 3)
    (tmp_path / "user_model_mod.py").write_text(BUILD)
    monkeypatch.chdir(tmp_path)
    assert models.check_model_name("user_model_mod:build") == "user_model_mod:build"
    assert models.get_model("user_model_mod:build", 5).init(0, (2, 2, 1))[0] == (5,)
    loaded = models.get_model(f"{EXAMPLE}:make_model", 10)  # the example users copy
    assert "swish1" in [name for name, _ in loaded.layers]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("{d}/user_model_bad.py:not_a_model", r"returned a list, not a jaxbp.models.Model"),
        ("{d}/user_model_bad.py:raises", r"calling it with num_classes=10 raised RuntimeError: no GPU here$"),
        ("{d}/user_model_bad.py:missing", r"has no attribute 'missing'"),
        ("{d}/user_model_broken.py:build", r"importing .* raised ZeroDivisionError"),
        ("{d}/absent.py:build", r"no such file"),
        ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz'"),
        ("{d}/user_model_bad.py:", r"not of the form MODULE:FUNCTION"),
    ],
)
def test_bad_user_models_are_one_line_errors_naming_the_spec(tmp_path, spec, match):
    (tmp_path / "user_model_bad.py").write_text(BUILD)
    (tmp_path / "user_model_broken.py").write_text("1 / 0\n")
    spec = spec.format(d=tmp_path)
    with pytest.raises(models.ModelError, match=match) as info:
        models.get_model(spec, 10)
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)


def test_model_names_and_built_in_only_options(tmp_path):
    assert [models.check_model_name(n) for n in MODELS] == list(MODELS)
    with pytest.raises(models.ModelError, match="unknown model 'resnet50'; choose one of cnn, cnn-bn, mlp, resnet"):
        models.check_model_name("resnet50")
    with pytest.raises(models.ModelError, match="is not a dotted Python name"):
        models.check_model_name("mod:1fn")
    (tmp_path / "user_model_opts.py").write_text(BUILD)
    with pytest.raises(models.ModelError, match="dropout and init apply to the built-in models only"):
        models.get_model(f"{tmp_path}/user_model_opts.py:build", 10, dropout=0.5)
