"""`--grad compare` decides exactly: the float32 guard of every step is measured against a scale
float32 rounding cannot exceed (a gradient that is ~0 does not trip it), and the float64 audit
(at the first step, every --audit-every steps, and on a guard failure) tells a small bug from
rounding. Every run goes through ``cli.main`` or ``fit`` in this process, on digits.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import autodiff, data, manual, models
from jaxbp.train import TRACE_COUNTS, TrainConfig, fit, steps
from tests.cli_helpers import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_layer.py"

# A user's layer norm over the features (a models.Custom layer with parameters), its plain-JAX
# reference, and a hand-derived backward; BWD_EPS = 0.0 plants the bug of issue 24: the backward
# leaves eps out of 1 / sqrt(var + eps), an error of about eps / (2 var) ~ 1e-5, under float32's
# guard, far over float64 rounding.
LAYER_NORM_MODEL = """
import jax
import jax.numpy as jnp
import numpy as np
from jaxbp import models

EPS = 1e-5
BWD_EPS = EPS


def layer_norm_reference(params, x):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return params["gamma"] * (x - mu) / jnp.sqrt(var + EPS) + params["beta"]


@jax.custom_vjp
def layer_norm(params, x):
    return layer_norm_reference(params, x)


def layer_norm_fwd(params, x):
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(xc**2, axis=-1, keepdims=True)
    return layer_norm_reference(params, x), (params["gamma"], xc, var)


def layer_norm_bwd(res, dy):
    gamma, xc, var = res
    r = 1.0 / jnp.sqrt(var + BWD_EPS)  # BWD_EPS = 0.0 is the bug
    xhat = xc * r
    dxhat = dy * gamma
    dx = r * (dxhat - jnp.mean(dxhat, -1, keepdims=True) - xhat * jnp.mean(dxhat * xhat, -1, keepdims=True))
    return {"gamma": jnp.sum(dy * xhat, axis=0), "beta": jnp.sum(dy, axis=0)}, dx


layer_norm.defvjp(layer_norm_fwd, layer_norm_bwd)


def init(key, input_shape):
    n = input_shape[-1]
    return input_shape, {"gamma": jnp.asarray(np.ones(n, np.float32)), "beta": jnp.asarray(np.zeros(n, np.float32))}


def make_model(num_classes):
    norm = models.Custom(manual=layer_norm, reference=layer_norm_reference, init=init, name="layer_norm")
    return models.serial(models.Flatten, models.Dense(32), norm, models.Relu, models.Dense(num_classes))
"""


@pytest.fixture
def layer_norm_file(tmp_path):
    def write(name, bwd_eps="EPS"):
        path = tmp_path / f"{name}.py"
        path.write_text(LAYER_NORM_MODEL.replace("BWD_EPS = EPS", f"BWD_EPS = {bwd_eps}"))
        return f"{path}:make_model"

    return write


def _audits(folder):
    recs = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
    return [r for r in recs if r["kind"] == "audit"]


def test_a_layer_norm_without_eps_in_its_backward_fails_at_the_first_audit(tmp_path, layer_norm_file, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", layer_norm_file("ln_no_eps", "0.0"), "--grad", "compare", "--epochs", "1"]
    code, _, err = run_cli([*argv, "--quiet", "--out", out], capsys)
    assert code == 1, err
    assert "GradientMismatchError: gradient mismatch at step 1 " in err
    assert "found by the float64 audit at the first step" in err and "--audit-rtol" in err and "--audit-every" in err
    # The float32 guard alone passes it (the bug is under float32's tolerance): the audit decides.
    assert "because the float32 guard failed" not in err
    worst = err.split("parameter '")[1].split("'")[0]
    assert worst.startswith(("layer_norm1.", "dense1.")), err  # the layer norm or the layer its dx reaches
    (audit,) = _audits(out)
    assert audit["step"] == 1 and audit["reason"] == "first step" and not audit["passed"]
    assert audit["param"] == worst and 1e-7 < audit["error"] and audit["guard_error"] < 1e-4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "gradient_mismatch" and "audit" in summary["error"]
    assert summary["audits"]["count"] == 1 and summary["audits"]["worst"]["param"] == worst


def test_the_correct_layer_norm_passes_every_audit_and_the_audit_compiles_once(tmp_path, layer_norm_file):
    spec, out = layer_norm_file("ln_ok"), tmp_path / "run"
    config = TrainConfig(model=spec, grad="compare", epochs=1, max_steps=15, audit_every=7, out=str(out))
    before = TRACE_COUNTS["audit"]
    result = fit(config, progress=False)
    assert result.status == "stopped" and result.steps == 15
    audits = _audits(out)
    assert [a["step"] for a in audits] == [1, 7, 14]
    assert all(a["passed"] and a["error"] < 1e-12 and a["reason"] in ("first step", "interval") for a in audits)
    assert TRACE_COUNTS["audit"] - before == 1  # one float64 compilation for all the audits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audits"]["count"] == 3 and summary["audits"]["every"] == 7 and summary["audits"]["last_step"] == 14


def test_a_guard_failure_is_audited_and_cleared_when_it_is_rounding(tmp_path, layer_norm_file, capsys):
    # A guard tolerance far below float32 rounding: every step trips it, every audit clears it.
    out = tmp_path / "run"
    argv = ["train", "--model", layer_norm_file("ln_strict"), "--grad", "compare", "--compare-rtol", "1e-12"]
    code, _, err = run_cli([*argv, "--epochs", "1", "--max-steps", "4", "--quiet", "--out", out], capsys)
    assert code == 0, err
    assert err.count("warning: step ") == 4 and "float32 rounding, not a wrong backward" in err
    assert "--compare-rtol" in err
    audits = _audits(out)
    assert [(a["step"], a["reason"], a["passed"]) for a in audits] == [(s, "guard", True) for s in (1, 2, 3, 4)]
    assert json.loads((out / "summary.json").read_text())["audits"]["guard_failures_cleared"] == 4


# ------------------------------------------------------------------ the float32 guard


def test_a_gradient_that_is_zero_up_to_rounding_does_not_trip_the_guard():
    # examples/custom_layer.py: a conv bias right before batch norm, whose exact gradient is 0.
    model = models.load_model(f"{EXAMPLE}:make_model", 10)
    _, params, state = model.init(np.random.default_rng(0), (8, 8, 1))
    ds = data.load("digits")
    xb, yb = jnp.asarray(ds.x_train[:64], jnp.float32), jnp.asarray(ds.y_train[:64])
    loss = steps.make_loss(model)

    @jax.jit
    def both(params):
        grad = jax.grad(lambda p, ops: loss(p, state, xb, yb, jnp.int32(64), None, ops)[0])
        g_m, g_a = grad(params, manual), grad(params, autodiff)
        return g_m, g_a, steps.agreement(g_m, g_a)

    g_m, g_a, agree = both(params)
    b_m, b_a = np.asarray(g_m["conv1"]["b"]), np.asarray(g_a["conv1"]["b"])
    largest = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_a))
    assert np.abs(b_a).max() < 1e-5 * largest  # float32 noise: the exact gradient is 0
    assert np.abs(b_m - b_a).max() / np.abs(b_a).max() > 1e-2  # a bare relative error explodes
    rel = {k: float(v) for k, v in jax.tree_util.tree_leaves_with_path(agree["rel_err"])}
    assert max(rel.values()) < TrainConfig().compare_rtol / 5  # the guard's measure does not
    scale_b = float(agree["scale"]["conv1"]["b"])
    assert scale_b == pytest.approx(steps.AGREEMENT_FLOOR * largest, rel=1e-6)


GROSS_BUG_MODEL = """
import jax
import jax.numpy as jnp
from jaxbp import models


def swish_reference(x):
    return x * jax.nn.sigmoid(x)


@jax.custom_vjp
def swish(x):
    return swish_reference(x)


def swish_fwd(x):
    return swish_reference(x), x


def swish_bwd(x, dy):
    s = jax.nn.sigmoid(x)
    return (jnp.where(x > 4.0, 0.0, dy * (s + x * s * (1 - s))),)  # wrong: nothing flows back above 4


swish.defvjp(swish_fwd, swish_bwd)


def make_model(num_classes):
    act = models.Custom(manual=swish, reference=swish_reference, name="swish")
    return models.serial(models.Flatten, models.Dense(16), act, models.Dense(num_classes, init="glorot"))
"""


def test_a_gross_bug_that_appears_between_audits_trips_the_guard_and_the_audit_confirms(tmp_path, capsys):
    # No pre-activation exceeds 4 at step 1 (its audit passes); a few do a few steps later.
    (tmp_path / "gross_bug.py").write_text(GROSS_BUG_MODEL)
    out = tmp_path / "run"
    argv = ["train", "--model", f"{tmp_path / 'gross_bug.py'}:make_model", "--grad", "compare", "--epochs", "1"]
    code, _, err = run_cli([*argv, "--quiet", "--out", out], capsys)
    assert code == 1, err
    first, last = _audits(out)[0], _audits(out)[-1]
    assert (first["step"], first["reason"], first["passed"]) == (1, "first step", True)
    assert last["step"] > 1 and last["reason"] == "guard" and not last["passed"]
    assert last["guard_error"] > 1e-4 and last["error"] > 1e-4  # float32 and float64 both see it
    assert f"gradient mismatch at step {last['step']} " in err
    assert "found by the float64 audit because the float32 guard failed" in err
    assert "--compare-rtol" in err and "the audit of the same step confirms it" in err
    assert f"parameter '{last['param']}'" in err and last["param"].startswith("dense1.")


NUMPY_CONSTANT_MODEL = """
from functools import partial

import jax
import numpy as np
from jaxbp import models

W = np.linspace(0.5, 1.5, 16)  # a float64 NumPy array the layer closes over


def scaled_swish_reference(x, w=W):
    return x * jax.nn.sigmoid(x) * w


@jax.custom_vjp
def scaled_swish(x):
    return scaled_swish_reference(x)


def fwd(x):
    return scaled_swish_reference(x), x


def bwd(x, dy):
    s = jax.nn.sigmoid(x)
    return (dy * W * (s + x * s * (1 - s)),)


scaled_swish.defvjp(fwd, bwd)


def make_model(num_classes):
    act = models.Custom(manual=scaled_swish, reference=partial(scaled_swish_reference, w=W), name="act")
    return models.serial(models.Flatten, models.Dense(16), act, models.Dense(num_classes))
"""


def test_a_layer_that_closes_over_a_numpy_float64_array_is_audited(tmp_path):
    # JAX 0.10.2 reuses such a constant traced in float32 when tracing in float64 (and the other
    # way round): without the audit's isolated trace this run fails to lower its audit.
    (tmp_path / "numpy_constant.py").write_text(NUMPY_CONSTANT_MODEL)
    out = tmp_path / "run"
    spec = f"{tmp_path / 'numpy_constant.py'}:make_model"
    config = TrainConfig(model=spec, grad="compare", epochs=1, max_steps=6, audit_every=3, out=str(out))
    result = fit(config, progress=False)
    assert result.status == "stopped"
    assert [(a["step"], a["passed"]) for a in _audits(out)] == [(1, True), (3, True), (6, True)]
    assert max(a["error"] for a in _audits(out)) < 1e-12
