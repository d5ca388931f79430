"""`jaxbp train --model path.py:FUNCTION`: a user's model (with its own custom_vjp layer) trained
with manual, autodiff and compare gradients like a built-in one, and the validation split.

The user's model is tiny (a dense layer, the user's swish, a dense head) so each run compiles
in about a second; every run goes through ``cli.main`` in this process.
"""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from jaxbp import data
from jaxbp.train import TrainConfig, fit
from tests.cli_helpers import run_cli

USER_MODEL = """
import jax
import jax.numpy as jnp
from jaxbp import models


def swish_reference(x):
    return x * jax.nn.sigmoid(x)


@jax.custom_vjp
def swish(x):
    return swish_reference(x)


def swish_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)


def swish_bwd(res, dy):
    x, s = res
    return (dy * (s + x * s * (1 - s)) * SCALE,)  # SCALE = 1 is the correct derivative


swish.defvjp(swish_fwd, swish_bwd)
SCALE = 1.0


def make_model(num_classes):
    act = models.Custom(manual=swish, reference=swish_reference, name="swish")
    return models.serial(models.Flatten, models.Dense(16), act, models.Dense(num_classes, init="glorot"))


def wrong_shape(num_classes):
    act = models.Custom(manual=lambda x: x[:, :3], reference=lambda x: x, name="cut")
    return models.serial(models.Flatten, act, models.Dense(num_classes))


def not_a_model(num_classes):
    return [models.Flatten]


def bad_backward(num_classes):
    @jax.custom_vjp
    def ident(x):
        return x

    ident.defvjp(lambda x: (x, None), lambda res, dy: (dy, dy))  # two cotangents for one input
    layer = models.Custom(manual=ident, reference=lambda x: x)
    return models.serial(models.Flatten, models.Dense(8), layer, models.Dense(num_classes))
"""

SPLIT = data.load("digits", val_split=0.2)  # what the runs below train and validate on
STEPS = -(-len(SPLIT.x_train) // 64)  # one epoch in batches of 64
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_layer.py"


@pytest.fixture
def user_file(tmp_path):
    def write(name, scale=1.0):
        path = tmp_path / f"{name}.py"
        path.write_text(USER_MODEL.replace("SCALE = 1.0", f"SCALE = {scale}"))
        return path

    return write


def _records(folder, kind):
    return [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_a_user_model_trains_in_compare_mode_with_a_validation_split_and_resumes(tmp_path, user_file, capsys):
    spec = f"{user_file('user_model_ok')}:make_model"
    out = tmp_path / "run"
    base = ["train", "--model", spec, "--grad", "compare", "--epochs", "1", "--val-split", "0.2", "--quiet"]
    code, _, err = run_cli([*base, "--max-steps", "7", "--out", out], capsys)
    assert code == 0, err
    code, _, err = run_cli(["train", "--resume", out, "--quiet"], capsys)  # a file alone never names code to import
    assert code == 2 and f"add --model {spec}" in err
    code, stdout, err = run_cli(["train", "--resume", out, "--model", spec, "--quiet"], capsys)
    assert code == 0, err
    assert "validation accuracy" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert summary["config"]["model"] == spec and summary["dataset"]["val"] == len(SPLIT.x_val)
    assert summary["worst_agreement"]["max_rel_err"] <= 1e-4  # the user's backward agreed every step
    # Audited in float64 at the first step of each process and at the end of the epoch.
    audits = [(a["step"], a["reason"], a["passed"]) for a in _records(out, "audit")]
    assert audits == [(1, "first step", True), (8, "first step after resume", True), (STEPS, "interval", True)]
    assert summary["audits"]["count"] == 3 and summary["audits"]["last_step"] == STEPS
    (epoch,) = _records(out, "eval")
    assert 0.0 < epoch["val_accuracy"] <= 1.0 and np.isfinite(epoch["val_loss"])
    assert summary["val_accuracy"] == epoch["val_accuracy"] and summary["test_accuracy"] == epoch["test_accuracy"]
    assert "swish1" not in json.dumps(summary["worst_agreement"])  # a parameter-free layer has no gradient


def test_a_run_of_a_relative_model_file_resumes_from_another_directory(tmp_path, user_file, capsys, monkeypatch):
    user_file("user_model_relative")
    monkeypatch.chdir(tmp_path)
    spec = "user_model_relative.py:make_model"  # relative to where the run starts
    code, stdout, err = run_cli(["train", "--model", spec, "--epochs", "1", "--max-steps", "3", "--quiet",
                                 "--out", "run"], capsys)  # fmt: skip
    assert code == 0, err
    recorded = f"{tmp_path / 'user_model_relative.py'}:make_model"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == recorded
    hint = shlex.split(stdout.split("continue to the end with: ")[1].split(" (")[0])
    assert hint == ["jaxbp", "train", "--resume", str(tmp_path / "run"), "--model", recorded]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(["train", "--resume", "../run", "--model", spec, "--quiet"], capsys)
    assert code == 2 and f"add --model {recorded}" in err  # the relative spec names no file from here
    code, _, err = run_cli([*hint[1:], "--quiet"], capsys)  # the printed command, as printed
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["model"] == recorded


def test_a_user_model_trains_alike_with_manual_and_autodiff_gradients(tmp_path, user_file):
    spec = f"{user_file('user_model_twins')}:make_model"
    losses = {}
    for grad in ("manual", "autodiff"):
        config = TrainConfig(model=spec, grad=grad, epochs=1, max_steps=15, log_every=1, out=str(tmp_path / grad))
        result = fit(config, progress=False)
        assert result.status == "stopped"
        losses[grad] = np.array([r["loss"] for r in _records(tmp_path / grad, "train")])
    assert len(losses["manual"]) == 15
    np.testing.assert_allclose(losses["manual"], losses["autodiff"], rtol=1e-5)


def test_compare_mode_fails_the_run_on_a_wrong_backward_in_the_users_layer(tmp_path, user_file, capsys):
    spec = f"{user_file('user_model_wrong', scale=1.5)}:make_model"
    code, _, err = run_cli(["train", "--model", spec, "--grad", "compare", "--epochs", "1", "--quiet",
                          "--out", tmp_path / "run"], capsys)  # fmt: skip
    assert code == 1
    assert "GradientMismatchError: gradient mismatch at step 1 " in err and "parameter 'dense1." in err
    # A gross bug: the float32 guard of the step sees it, the float64 audit of the step confirms it.
    assert "found by the float64 audit because the float32 guard failed" in err and "--compare-rtol" in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "gradient_mismatch"


@pytest.mark.long
def test_the_readmes_custom_layer_command_passes(tmp_path, capsys):
    # `jaxbp train --model examples/custom_layer.py:make_model --grad compare --val-split 0.1`, cut
    # to 135 of its 315 steps: at step 131 the float32 comparison of jaxbp 0.x (rel. error against a
    # 1 % floor) failed this correct layer on AVX2 (conv1.b, whose gradient batch norm makes ~0).
    out = tmp_path / "run"
    argv = ["train", "--model", f"{EXAMPLE}:make_model", "--grad", "compare", "--val-split", "0.1"]
    code, _, err = run_cli([*argv, "--max-steps", "135", "--audit-every", "45", "--quiet", "--out", out], capsys)
    assert code == 0, err
    assert "warning" not in err  # the guard never tripped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 135
    assert summary["worst_agreement"]["max_rel_err"] < summary["compare_rtol"] / 3
    audits = _records(out, "audit")
    assert [(a["step"], a["passed"]) for a in audits] == [(1, True), (45, True), (90, True), (135, True)]
    assert max(a["error"] for a in audits) < 1e-12 and summary["audits"]["count"] == 4


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("wrong_shape", "Custom layer 'cut': manual gives (1, 3) float32 but reference gives (1, 64) float32"),
        ("not_a_model", "returned a list, not a jaxbp.models.Model"),
        ("absent", "has no attribute 'absent'"),
        ("bad_backward", "tracing the train step (manual gradients) raised"),
    ],
)
def test_errors_in_the_users_module_exit_2_in_one_line(tmp_path, user_file, capsys, function, message):
    spec = f"{user_file('user_model_errors')}:{function}"
    code, _, err = run_cli(["train", "--model", spec, "--epochs", "1", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert err.startswith("jaxbp train: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and repr(spec) in err


def test_a_module_that_does_not_import_or_a_malformed_spec_exit_2(tmp_path, capsys):
    (tmp_path / "user_model_broken.py").write_text("import no_such_module_anywhere\n")
    for spec, message in [
        (f"{tmp_path}/user_model_broken.py:make_model", "raised ModuleNotFoundError"),
        ("cnnn", "--model is 'cnnn': unknown model 'cnnn'; choose one of cnn, cnn-bn, mlp, resnet"),
        (f"{tmp_path}/absent.py:make_model", "no such file"),
    ]:
        code, _, err = run_cli(["train", "--model", spec, "--quiet", "--out", tmp_path / "run"], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "run").exists()


def test_the_default_folder_of_a_user_model_is_named_by_its_module_and_function():
    config = TrainConfig(model="examples/custom_layer.py:make_model", grad="compare")
    assert config.default_out("digits") == "runs/digits-custom_layer.make_model-compare"
    assert TrainConfig(model="cnn-bn").default_out("mnist") == "runs/mnist-cnn-bn-manual"


def test_the_validation_split_is_a_flag_checked_by_name(tmp_path, capsys):
    code, _, err = run_cli(["train", "--val-split", "1.5", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "--val-split must be in [0, 1), got 1.5" in err
    # A split so small that a class would hold out nothing: the data module says so.
    code, _, err = run_cli(["train", "--val-split", "0.001", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "val_split" in err and err.count("\n") == 1
