"""models: shapes, names, seeded initialisation, one definition over both ops namespaces,
batch-norm running statistics, dropout, FLOPs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import autodiff, manual, models
from jaxbp.choices import MODELS


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1)])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_readable_names(name, shape):
    model = models.get_model(name, 10)
    out_shape, params, state = model.init(0, shape)
    assert out_shape == ((10,) if name != "autoencoder" else shape)  # the autoencoder gives back its input
    assert model.objective == ("reconstruct" if name == "autoencoder" else "classify")
    expected = {"cnn": ["conv1", "conv2", "dense1", "dense2"], "mlp": ["dense1", "dense2"]}
    expected["cnn-bn"] = ["conv1", "bn1", "conv2", "bn2", "dense1", "dense2"]
    expected["resnet"] = ["conv1", "bn1", "res1", "res2", "dense1"]
    expected["convnext"] = ["conv1", "ln1", "res1", "ln2", "conv2", "res2", "ln3", "dense1"]
    expected["autoencoder"] = ["conv1", "conv2", "convT1", "convT2"]
    assert list(params) == expected[name]
    assert list(state) == {"cnn-bn": ["bn1", "bn2"], "resnet": ["bn1", "res1", "res2"]}.get(name, [])
    if name == "resnet":  # stride-2 blocks with a 1x1 projection: 28 -> 14 -> 7, 8 -> 4 -> 2
        assert list(params["res2"]) == ["conv1", "bn1", "conv2", "bn2", "proj"]
        assert params["res1"]["conv1"]["w"].shape == (3, 3, 8, 32)
        assert params["res2"]["proj"]["w"].shape == (1, 1, 32, 64)
        assert params["dense1"]["w"].shape == (64, 10)
    elif name == "convnext":  # 2x2 stride-2 stem and downsampling: 28 -> 14 -> 7, 8 -> 4 -> 2
        assert params["conv1"]["w"].shape == (2, 2, 1, 32) and params["conv2"]["w"].shape == (2, 2, 32, 64)
        block = params["res2"]  # depthwise 7x7, layer norm, a 4x bottleneck of pointwise dense layers
        assert list(block) == ["conv1", "ln1", "dense1", "dense2"]
        assert block["conv1"]["w"].shape == (7, 7, 1, 64) and block["dense1"]["w"].shape == (64, 256)
        assert block["dense2"]["w"].shape == (256, 64) and params["ln3"]["gamma"].shape == (64,)
    elif name == "autoencoder":  # stride-2 3x3 convs down (16, 32 channels), 4x4 stride-2 transposed ones up
        assert params["conv2"]["w"].shape == (3, 3, 16, 32) and params["convT1"]["w"].shape == (4, 4, 32, 16)
        assert params["convT2"]["w"].shape == (4, 4, 16, 1)
    elif name != "mlp":  # SAME convs, 2x2 pools: 28 -> 14 -> 7, 8 -> 4 -> 2
        side = shape[0] // 4
        assert params["conv1"]["w"].shape == (3, 3, 1, 32)
        assert params["dense1"]["w"].shape == (side * side * 64, 128)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((params, state)))


def test_init_is_seeded_he_and_glorot():
    model = models.get_model("cnn-bn", 10)
    _, a, _ = model.init(3, (28, 28, 1))
    _, b, _ = model.init(np.random.default_rng(3), (28, 28, 1))  # an int seed or a generator
    _, c, _ = model.init(4, (28, 28, 1))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not np.array_equal(a["conv2"]["w"], c["conv2"]["w"])
    # He normal where a ReLU follows: std = sqrt(2 / fan_in); Glorot uniform for the last dense.
    assert np.std(a["conv2"]["w"]) == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.05)
    assert np.std(a["dense1"]["w"]) == pytest.approx(math.sqrt(2 / 3136), rel=0.05)
    limit = math.sqrt(6 / (128 + 10))
    assert np.max(np.abs(a["dense2"]["w"])) <= limit
    assert np.std(a["dense2"]["w"]) == pytest.approx(limit / math.sqrt(3), rel=0.1)
    assert all(not np.any(a[k]["b"]) for k in ("conv1", "conv2", "dense1", "dense2"))
    assert np.all(a["bn1"]["gamma"] == 1) and not np.any(a["bn1"]["beta"])


@pytest.mark.parametrize("name", ["cnn-bn", "mlp"])
def test_uniform_init_is_fan_in_uniform_on_every_layer(name):
    """init="uniform": U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight, the last dense
    included (std = limit / sqrt(3)); biases zero; and a different draw from "he"."""
    model = models.get_model(name, 10, init="uniform")
    _, params, _ = model.init(3, (28, 28, 1))
    _, he, _ = models.get_model(name, 10).init(3, (28, 28, 1))
    dense = [k for k in params if k.startswith(("conv", "dense"))]
    assert dense == [k for k in he if k.startswith(("conv", "dense"))] and len(dense) >= 2
    for k in dense:
        w = np.asarray(params[k]["w"])
        limit = 1 / math.sqrt(math.prod(w.shape[:-1]))
        assert np.max(np.abs(w)) <= limit and np.max(np.abs(w)) > 0.95 * limit, k
        assert np.std(w) == pytest.approx(limit / math.sqrt(3), rel=0.1), k
        assert not np.any(params[k]["b"]), k
        assert np.std(he[k]["w"]) > 1.5 * np.std(w), k  # He (and Glorot for the last dense) is wider
    with pytest.raises(ValueError, match="unknown init 'lecun'; choose one of he, uniform"):
        models.get_model(name, 10, init="lecun")


@pytest.mark.parametrize("name", ["cnn-bn", "mlp"])
def test_one_definition_runs_on_both_namespaces(name):
    model = models.get_model(name, 10, dropout=0.5)
    _, params, state = model.init(0, (8, 8, 1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8, 8, 1)), jnp.float32)
    key = jax.random.key(1)

    @jax.jit
    def run(params, state, x):
        out = {}
        for label, ops in (("manual", manual), ("autodiff", autodiff)):
            out[label] = model.apply(params, x, ops=ops, train=True, rng=key, state=state)
        return out

    out = run(params, state, x)
    # The two namespaces may sum in another order (the conv routes differ from autodiff's), and batch
    # norm divides by a batch's spread: a bound that holds on every CPU is norm-wise, a few float32
    # ulps of the largest entry per layer, not element-wise (2 of 160 logits were off by 7.4e-6 on AVX2).
    ulps = 64 * np.finfo(np.float32).eps
    for a, b in zip(jax.tree.leaves(out["manual"]), jax.tree.leaves(out["autodiff"])):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.max(np.abs(a - b)) <= ulps * np.max(np.abs(b)), (np.max(np.abs(a - b)), np.max(np.abs(b)))


def test_batch_norm_running_stats_count_real_rows_only_and_eval_uses_them():
    layer = models.BatchNorm(momentum=0.9)
    _, params, state = layer.init(None, (4, 4, 3))
    rng = np.random.default_rng(0)
    real = rng.normal(2.0, 3.0, size=(6, 4, 4, 3)).astype(np.float32)
    padded = np.concatenate([real, np.full((2, 4, 4, 3), 1e3, np.float32)])  # junk rows

    @jax.jit
    def run(padded, real):
        mask = jnp.arange(8) < 6
        _, masked = layer.apply(params, padded, ops=manual, train=True, state=state, mask=mask)
        _, unmasked = layer.apply(params, real, ops=manual, train=True, state=state)
        y_eval, same = layer.apply(params, real, ops=manual, train=False, state=masked)
        return masked, unmasked, y_eval, same

    new, unmasked, y_eval, same = run(padded, real)
    np.testing.assert_allclose(new["mean"], 0.1 * real.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * real.var(axis=(0, 1, 2)), rtol=1e-5)
    # Without a mask, the running statistics move towards the batch_norm_stats of the batch.
    np.testing.assert_allclose(unmasked["mean"], new["mean"], rtol=1e-5)
    np.testing.assert_allclose(unmasked["var"], new["var"], rtol=1e-5)
    # Eval mode normalises with the running statistics, and leaves them alone.
    expected = (real - new["mean"]) / np.sqrt(new["var"] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(same["mean"], new["mean"])


def test_dropout_only_in_train_mode():
    model = models.get_model("mlp", 10, dropout=0.5)
    _, params, _ = model.init(0, (8, 8, 1))

    @jax.jit
    def run(x, key):
        a, _ = model.apply(params, x, ops=autodiff, train=False)
        b, _ = model.apply(params, x, ops=autodiff, train=False, rng=key)
        c, _ = model.apply(params, x, ops=autodiff, train=True, rng=key)
        return a, b, c

    a, b, c = run(jnp.ones((4, 8, 8, 1)), jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="rng"):
        jax.eval_shape(lambda x: model.apply(params, x, ops=autodiff, train=True), jnp.ones((4, 8, 8, 1)))


def test_flops_per_example():
    cnn = models.get_model("cnn", 10)
    by_layer = models.flops(cnn, (28, 28, 1), by_layer=True)
    assert [name for name, _ in cnn.layers][:4] == ["conv1", "relu1", "max_pool2d1", "conv2"]  # every layer named
    assert by_layer == {
        "conv1": 2 * 28 * 28 * 9 * 1 * 32,
        "conv2": 2 * 14 * 14 * 9 * 32 * 64,
        "dense1": 2 * 7 * 7 * 64 * 128,
        "dense2": 2 * 128 * 10,
    }
    assert models.flops(cnn, (28, 28, 1)) == sum(by_layer.values())
    assert models.flops(models.get_model("mlp", 10), (8, 8, 1)) == 2 * 64 * 256 + 2 * 256 * 10


def test_convnext_counts_depthwise_flops_per_group_and_the_autoencoder_keeps_the_shape():
    by_layer = models.flops(models.get_model("convnext", 10), (28, 28, 1), by_layer=True)
    # the depthwise 7x7 conv: 49 taps per output, one input channel each; the bottleneck's 1x1s as dense layers
    dw, expand, project = 2 * 14 * 14 * 49 * 32, 2 * 14 * 14 * 32 * 128, 2 * 14 * 14 * 128 * 32
    assert by_layer["conv1"] == 2 * 14 * 14 * 4 * 32 and by_layer["res1"] == dw + expand + project
    ae = models.autoencoder(channels=1, width=4)
    out_shape, params, _ = ae.init(0, (12, 8, 1))
    assert out_shape == (12, 8, 1) and params["convT1"]["w"].shape == (4, 4, 8, 4)
    with pytest.raises(models.ModelError, match=r"Conv\(4, kernel=3, groups=3\): groups must divide"):
        models.Conv(4, 3, groups=3).init(0, (8, 8, 6))


def test_new_models_backward_agrees_with_autodiff_in_float64():
    """convnext (depthwise conv, layer norm, GELU, residual) and the autoencoder (transposed convs,
    mse_loss), hand-derived against jax.grad of the same model on the plain-JAX ops. convnext's
    layers at 4 channels: its own 32 and 64 take a minute to compile in float64."""
    rng = np.random.default_rng(0)
    tiny_convnext = models.serial(
        models.Conv(4, 2, stride=2, padding="VALID"), models.LayerNorm(), models.convnext_block(4),
        models.GlobalAvgPool, models.LayerNorm(), models.Dense(3),
    )  # fmt: skip
    with jax.enable_x64(True):
        for model, loss in (
            (tiny_convnext, lambda ops, out, x: ops.softmax_cross_entropy(out, jnp.arange(2) % 3)),
            (models.autoencoder(channels=1, width=4), lambda ops, out, x: ops.mse_loss(out, x)),
        ):
            _, params, _ = model.init(0, (8, 8, 1))
            params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
            x = jnp.asarray(rng.standard_normal((2, 8, 8, 1)))

            def objective(p, ops, model=model, loss=loss):
                return loss(ops, model.apply(p, x, ops=ops)[0], x)

            grad = jax.jit(jax.grad(objective), static_argnums=1)  # one program each, not op by op
            got, want = (grad(params, ops) for ops in (manual, autodiff))
            scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                assert float(jnp.max(jnp.abs(a - b))) <= 1e-10 * scale


def test_unknown_model_is_a_clear_error():
    with pytest.raises(models.ModelError, match="unknown model 'resnet2'.*cnn, cnn-bn, mlp, resnet, convnext"):
        models.get_model("resnet2", 10)
