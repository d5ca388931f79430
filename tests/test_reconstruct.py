"""A model that reconstructs its input (``objective="reconstruct"``, the built-in autoencoder):
the masked mean squared error of a padded batch, training by `jaxbp train` in compare mode
with no accuracy anywhere, a planted bug in its loss backward caught, and its shape checks."""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import autodiff, manual, models, train
from jaxbp.train import steps
from tests.cli_helpers import assert_one_line_error, run_cli

# digits (8x8x1): 1437 training images, 90 % of them after val_split 0.1, in batches of 64.
AE = train.TrainConfig(
    dataset="digits", model="autoencoder", grad="compare", epochs=2, batch_size=64, val_split=0.1, log_every=5
)


def test_masked_mse_counts_only_the_valid_rows():
    """In float64, against rounding bounds that hold in any summation order (AVX2 or AVX-512): the
    losses are sums of at most M = 128 non-negative squares, each within (M - 1) u of exact
    (u = eps / 2), plus a few roundings for the squares, the division and the N / n_valid rescale,
    so (M + 4) eps covers both sides; each gradient entry is a few roundings of its own
    (2 (z - t) / M, the rescale): 8 eps. Junk in the padded rows or a wrong rescale is off by 1/8
    and more."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        out = jnp.asarray(rng.standard_normal((8, 4, 4, 1)))
        target = rng.standard_normal((8, 4, 4, 1))
        target[5:] = 100.0  # junk in the padded rows must not matter
        target = jnp.asarray(target)
        want, want_grad = jax.value_and_grad(lambda z: jnp.mean((z[:5] - target[:5]) ** 2))(out)
        eps = np.finfo(np.float64).eps
        for ops in (manual, autodiff):
            loss = lambda z, ops=ops: steps.masked_mse(ops, z, target, jnp.int32(5))  # noqa: E731
            got, grad = jax.value_and_grad(loss)(out)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=(out.size + 4) * eps)
            np.testing.assert_allclose(grad[:5], want_grad[:5], rtol=8 * eps)
            assert not np.any(grad[5:])  # padded rows get exactly zero gradient


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return train.fit(dataclasses.replace(AE, out=str(out)), progress=False), out


def test_the_autoencoder_trains_in_compare_mode_and_reports_losses_not_accuracies(trained):
    result, out = trained
    assert result.status == "completed" and result.steps == 2 * 21
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not [k for r in records for k in r if k.endswith("accuracy")]  # a reconstruction has none
    evals = [r for r in records if r["kind"] == "eval"]
    first_train = next(r for r in records if r["kind"] == "train")
    # it learns: the reconstruction error falls from the first logged steps, epoch after epoch
    assert evals[1]["val_loss"] < evals[0]["val_loss"] < first_train["loss"]
    assert evals[1]["test_loss"] < evals[0]["test_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] is None and summary["val_accuracy"] is None
    assert np.isnan(result.test_accuracy) and result.test_loss == pytest.approx(evals[-1]["test_loss"])
    # manual and autodiff agree on every step, and the float64 audits found float64 rounding only
    assert result.worst_agreement["max_rel_err"] < AE.compare_rtol
    assert summary["audits"]["count"] >= 2 and summary["audits"]["worst"]["error"] < 1e-12


def _ops_with_mse_off_by_one_element():
    """``mse_loss`` whose backward divides by M - 1 instead of M: every gradient 1/(M - 1) too
    large (1.6e-4 of it for a batch of 64 digits, M = 64 * 8 * 8)."""

    @jax.custom_vjp
    def mse(pred, target):
        return manual.mse_loss(pred, target)

    def fwd(pred, target):
        return manual.mse_loss(pred, target), pred - target

    def bwd(r, dy):
        dpred = 2 * dy * r / (r.size - 1)  # the bug: M - 1
        return dpred, -dpred

    mse.defvjp(fwd, bwd)
    ops = types.SimpleNamespace(**{name: getattr(manual, name) for name in manual.__all__})
    ops.mse_loss = mse
    return ops


def test_compare_mode_fails_on_a_planted_bug_in_the_reconstruction_loss(tmp_path):
    config = dataclasses.replace(AE, max_steps=3, out=str(tmp_path))
    with pytest.raises(train.GradientMismatchError, match=r"at step 1 .*float64 audit") as info:
        train.fit(config, progress=False, ops=_ops_with_mse_off_by_one_element())
    assert "convT2" in str(info.value) or "conv1" in str(info.value)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "gradient_mismatch"


def test_the_command_says_test_loss_and_refuses_what_needs_labels(trained, tmp_path, capsys):
    _, out = trained
    code, stdout, _ = run_cli(["train", "--resume", out, "--quiet"], capsys)  # already done: says so
    assert code == 0 and "already completed 2 of 2 epochs" in stdout
    code, _, err = run_cli(["train", "--model", "autoencoder", "--label-smoothing", "0.1", "--out", tmp_path / "a",
                            "--quiet"], capsys)  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "--label-smoothing is 0.1", "autoencoder reconstructs its input")
    code, _, err = run_cli(["train", "--model", "autoencoder", "--dropout", "0.2", "--out", tmp_path / "b"], capsys)
    assert code == 2
    assert_one_line_error(err, "dropout 0.2", "autoencoder")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


MISSHAPEN = """
from jaxbp import models


def make_model(num_classes):
    return models.serial(models.Conv(2, 3), objective="reconstruct")  # two channels out of one
"""


def test_a_model_that_reconstructs_must_give_back_its_input_shape(tmp_path):
    path = tmp_path / "misshapen.py"
    path.write_text(MISSHAPEN)
    model = models.get_model(f"{path}:make_model", 10)
    assert model.objective == "reconstruct"
    with pytest.raises(models.ModelError, match=r"reconstructs its input, but its output has shape \(8, 8, 2\)"):
        model.init(0, (8, 8, 1))
    with pytest.raises(models.ModelError, match="objective 'regress': choose one of classify, reconstruct"):
        models.serial(models.Relu, objective="regress")
    out_shape, params, _ = models.get_model("autoencoder", 10).init(0, (28, 28, 1))
    assert out_shape == (28, 28, 1) and list(params) == ["conv1", "conv2", "convT1", "convT2"]
