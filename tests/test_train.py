"""train.fit and `jaxbp train` on digits: manual == autodiff, compare mode, resume,
no retrace, NaN stop, bad checkpoints, the CLI.

Every fit here shares one configuration (BASE) where it can, so the jitted steps are
compiled once per module (train caches them per configuration) and the file stays fast.
"""

import dataclasses
import json
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import autodiff, checkpoint, cli, data, manual, train, xla_flags
from jaxbp.train import steps

# 1437 training digits in batches of 64: 23 steps an epoch, the last one padded (29 real rows).
BASE = train.TrainConfig(
    dataset="digits", model="cnn-bn", dropout=0.25, epochs=2, batch_size=64, learning_rate=3e-3, log_every=5
)
STEPS_PER_EPOCH = 23


def _records(path, kind="train"):
    recs = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "per_s" not in k and "time" not in k} for r in recs if r["kind"] == kind]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """BASE trained without interruption, with the trace counts it caused."""
    before = dict(train.TRACE_COUNTS)
    result = train.fit(dataclasses.replace(BASE, out=str(tmp_path_factory.mktemp("base"))), progress=False)
    traces = {k: v - before.get(k, 0) for k, v in train.TRACE_COUNTS.items()}
    return result, traces


# ------------------------------------------------------------------ the loss of a padded batch


def test_masked_loss_is_the_mean_over_valid_rows_and_its_gradient(digits):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 10)).astype(np.float32)
    padded = logits.copy()
    padded[5:] = 100.0  # junk in the padded rows must not matter
    labels = jnp.asarray(digits.y_train[:8])

    @jax.jit
    def run(logits, padded):
        def valid_only(z):
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z[:5]), labels[:5, None], axis=1))

        def smoothed_valid_only(z):  # label smoothing 0.1 over K = 10 classes
            t = jax.nn.one_hot(labels[:5], 10) * 0.9 + 0.01
            return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z[:5]), axis=1))

        out = {"want": jax.value_and_grad(valid_only)(logits)}
        out["smoothed_want"] = jax.value_and_grad(smoothed_valid_only)(logits)
        out["smoothed"] = jax.value_and_grad(lambda z: steps.masked_loss(manual, z, labels, jnp.int32(5), 0.1)[0])(
            padded
        )
        for name, ops in (("manual", manual), ("autodiff", autodiff)):
            out[name] = jax.value_and_grad(lambda z, ops=ops: steps.masked_loss(ops, z, labels, jnp.int32(5))[0])(
                padded
            )
        return out

    out = run(logits, padded)
    want, want_grad = out["want"]
    for name in ("manual", "autodiff"):
        got, grad = out[name]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(grad[:5], want_grad[:5], rtol=1e-5, atol=1e-7)
        assert not np.any(grad[5:])  # padded rows get exactly zero gradient
    np.testing.assert_allclose(out["smoothed"][0], out["smoothed_want"][0], rtol=1e-6)
    np.testing.assert_allclose(out["smoothed"][1][:5], out["smoothed_want"][1][:5], rtol=1e-5, atol=1e-7)
    assert not np.any(out["smoothed"][1][5:])


# ------------------------------------------------------------------ fit


def test_fit_learns_writes_outputs_and_never_retraces(baseline):
    result, traces = baseline
    assert result.status == "completed" and result.steps == 2 * STEPS_PER_EPOCH
    assert result.test_accuracy > 0.8
    assert [h["epoch"] for h in result.history] == [1, 2]
    for name in ("config", "metrics", "summary", "plot", "checkpoint"):
        assert result.paths[name].exists(), name
    assert train.TrainConfig(**json.loads(result.paths["config"].read_text())) == result.config
    summary = json.loads(result.paths["summary"].read_text())
    assert summary["status"] == "completed" and summary["test_accuracy"] == result.test_accuracy
    assert summary["examples_per_s"] > 0 and summary["flops_per_example"] > 0
    # 46 batches, full and padded alike, and two evaluations: at most one trace each
    # (none when an earlier test compiled the same configuration).
    assert traces.get("train-manual", 0) <= 1 and traces.get("eval", 0) <= 1
    compiled = steps.compiled(steps.step_key(BASE), 10, 2 * STEPS_PER_EPOCH, None)
    assert compiled.train_step._cache_size() == 1 and compiled.eval_step._cache_size() == 1
    assert compiled.audit_step is None  # manual gradients: nothing to audit


def test_same_config_is_bitwise_deterministic_via_the_cli(baseline, tmp_path, capsys):
    result, _ = baseline
    out = tmp_path / "cli"
    flags = ["--dataset", "digits", "--model", "cnn-bn", "--dropout", "0.25", "--epochs", "2"]
    flags += ["--batch-size", "64", "--lr", "0.003", "--log-every", "5", "--out", str(out), "--quiet"]
    assert cli.main(["train", *flags]) == 0
    printed = capsys.readouterr().out
    assert f"test accuracy {result.test_accuracy:.4f}" in printed and str(out) in printed
    for name in ("config.json", "metrics.jsonl", "summary.json", "training.png", "checkpoint.npz"):
        assert (out / name).exists(), name
    assert _records(out) == _records(result.out_dir)
    assert _records(out, "eval") == _records(result.out_dir, "eval")


def test_manual_and_autodiff_loss_curves_agree(tmp_path):
    losses = {}
    for grad in ("manual", "autodiff"):
        config = dataclasses.replace(BASE, grad=grad, max_steps=20, log_every=1, out=str(tmp_path / grad))
        result = train.fit(config, progress=False)
        assert result.status == "stopped" and result.steps == 20
        losses[grad] = np.array([r["loss"] for r in _records(tmp_path / grad)])
    assert len(losses["manual"]) == 20
    rel = np.abs(losses["manual"] - losses["autodiff"]) / np.abs(losses["autodiff"])
    assert rel.max() <= 1e-5, rel


@pytest.mark.parametrize("signame, at_step", [("SIGINT", 32), ("SIGTERM", 27)])
def test_resume_after_a_signal_mid_epoch_is_bitwise_uninterrupted(baseline, tmp_path, monkeypatch, signame, at_step):
    # Steps 32 and 27 lie inside a logging window (log_every 5): the first train record after
    # the resume averages steps from before and after the signal, so the window must be in the
    # checkpoint for the metrics to match.
    result, _ = baseline
    out = tmp_path / "run"
    signum = getattr(signal, signame)
    augmenter = data.batch_augmenter

    def signalling_augmenter(config, ds):  # the loop asks for every batch's augmentation first
        augment = augmenter(config, ds)

        def wrapped(x, epoch, batch_index):
            if epoch * STEPS_PER_EPOCH + batch_index + 1 == at_step:
                os.kill(os.getpid(), signum)  # handled after this step
            return augment(x, epoch, batch_index)

        return wrapped

    monkeypatch.setattr(data, "batch_augmenter", signalling_augmenter)
    with pytest.raises(train.TrainingInterrupted, match=rf"{signame}.*step {at_step}.*jaxbp train --resume") as info:
        train.fit(dataclasses.replace(BASE, out=str(out)), progress=False)
    monkeypatch.setattr(data, "batch_augmenter", augmenter)
    _, meta = checkpoint.load(info.value.checkpoint_path)
    assert (meta["step"], meta["epoch"], meta["extra"]["batch_index"]) == (at_step, 1, at_step - STEPS_PER_EPOCH)
    assert meta["extra"]["window"]["count"] > 0  # a window was open
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is not None  # handlers restored

    resumed = train.fit(train.resume_config(out), progress=False)
    for a, b in zip(
        jax.tree.leaves((resumed.params, resumed.model_state)), jax.tree.leaves((result.params, result.model_state))
    ):
        np.testing.assert_array_equal(a, b)
    assert resumed.test_accuracy == result.test_accuracy
    assert _records(out) == _records(result.out_dir)  # the first record after the resume included
    assert _records(out, "eval") == _records(result.out_dir, "eval")


def test_resume_rejects_a_different_config_and_a_corrupt_checkpoint(baseline, tmp_path, capsys):
    result, _ = baseline
    other = dataclasses.replace(BASE, model="cnn", resume=str(result.out_dir), out=str(tmp_path / "x"))
    with pytest.raises(checkpoint.CheckpointError, match=r"model: checkpoint 'cnn-bn', this run 'cnn'"):
        train.fit(other, progress=False)
    other = dataclasses.replace(other, model=BASE.model, init="uniform")
    with pytest.raises(checkpoint.CheckpointError, match=r"init: checkpoint 'he', this run 'uniform'"):
        train.fit(other, progress=False)
    other = dataclasses.replace(other, init=BASE.init, shift=1)
    with pytest.raises(checkpoint.CheckpointError, match=r"shift: checkpoint 2, this run 1"):
        train.fit(other, progress=False)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.npz").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert cli.main(["train", "--resume", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "jaxbp train: error:" in err and "checkpoint.npz" in err
    assert cli.main(["train", "--resume", str(tmp_path / "nothing-here"), "--quiet"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch):
    # Epoch 1 on clean data, stopping at its end with a good checkpoint ...
    out = tmp_path / "nan"
    train.fit(dataclasses.replace(BASE, out=str(out), max_steps=STEPS_PER_EPOCH), progress=False)
    # ... then epoch 2 on data with one poisoned image: the step of its batch must be named.
    x = np.array(digits.x_train)
    poisoned = 100
    x[poisoned, 3, 3, 0] = np.nan
    monkeypatch.setattr(data, "load", lambda *a, **k: dataclasses.replace(digits, x_train=x))
    order = np.random.default_rng((BASE.seed, 1)).permutation(len(x))  # epoch index 1
    step = STEPS_PER_EPOCH + int(np.where(order == poisoned)[0][0]) // BASE.batch_size + 1
    good = (out / "checkpoint.npz").read_bytes()
    # The NaN image makes batch norm's statistics NaN; ReLU turns NaN into 0, so the loss stays
    # finite (uniform logits) while every gradient is NaN: fit checks both.
    with pytest.raises(train.NonFiniteLossError, match=rf"gradients are not finite .* at step {step} \(epoch 2"):
        train.fit(dataclasses.replace(BASE, out=str(out), resume=str(out)), progress=False)
    assert (out / "checkpoint.npz").read_bytes() == good  # never overwritten by the NaN state
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and f"step {step}" in summary["error"]


# ------------------------------------------------------------------ compare mode


@pytest.mark.long
def test_compare_mode_logs_agreement_within_tolerance(tmp_path):
    config = dataclasses.replace(BASE, grad="compare", max_steps=10, log_every=1, out=str(tmp_path))
    result = train.fit(config, progress=False)
    recs = _records(tmp_path)
    assert len(recs) == 10
    assert all(0 <= r["grad_max_rel_err"] <= BASE.compare_rtol and r["grad_min_cos"] > 1 - 1e-6 for r in recs)
    worst = result.worst_agreement
    assert worst["max_rel_err"] == max(r["grad_max_rel_err"] for r in recs)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["worst_agreement"] == worst
    # The float64 audit of the first step (the next is due at the end of the epoch, step 23).
    (audit,) = _records(tmp_path, "audit")
    assert (audit["step"], audit["reason"], audit["passed"]) == (1, "first step", True) and audit["error"] < 1e-12
    assert summary["audits"]["count"] == 1 and summary["audits"]["every"] == STEPS_PER_EPOCH


def _ops_with_wrong_relu_backward():
    @jax.custom_vjp
    def relu(x):
        return manual.relu(x)

    def relu_fwd(x):
        return manual.relu(x), x

    def relu_bwd(x, dy):
        return (jnp.where(x > 0, dy, 0.1 * dy),)  # wrong: lets gradient through where x < 0

    relu.defvjp(relu_fwd, relu_bwd)
    ops = types.SimpleNamespace(**{name: getattr(manual, name) for name in manual.__all__})
    ops.relu = relu
    return ops


def test_compare_mode_fails_on_a_wrong_backward(tmp_path):
    config = dataclasses.replace(BASE, model="mlp", dropout=0.0, grad="compare", max_steps=3, out=str(tmp_path))
    with pytest.raises(
        train.GradientMismatchError,
        match=r"at step 1 .*float64 audit because the float32 guard failed .*confirms it\): parameter 'dense1\.(w|b)'",
    ) as info:
        train.fit(config, progress=False, ops=_ops_with_wrong_relu_backward())
    assert "outside --audit-rtol" in str(info.value) and "dense2.w" in str(info.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "gradient_mismatch"
    assert not (tmp_path / "checkpoint.npz").exists()


# ------------------------------------------------------------------ CLI


def test_bad_flags_exit_2(capsys):
    bad = (["train", "--grad", "bogus"], ["train", "--epochs", "many"], ["train", "--no-such-flag"])
    for argv in bad + (["train", "--init", "lecun"],):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert cli.main(["train", "--epochs", "0", "--quiet"]) == 2
    assert "epochs must be an integer >= 1" in capsys.readouterr().err
    assert cli.main(["train", "--augment", "crop", "--shift", "0", "--quiet"]) == 2
    assert "shift must be an integer >= 1" in capsys.readouterr().err


def test_missing_data_set_exits_2_with_the_message(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JAXBP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if any((d / "train-images-idx3-ubyte.gz").exists() for d in data.search_dirs("mnist", tmp_path)):
        pytest.skip("mnist is installed on this machine")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err and "not found" in err and str(empty) in err


def test_help_works_for_every_command(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = [[name] for name in sub.choices]
    for name, p in sub.choices.items():  # nested actions (jaxbp data fetch/info)
        for action in p._actions:
            if getattr(action, "choices", None) and hasattr(action, "_name_parser_map"):
                commands += [[name, inner] for inner in action.choices]
    assert ["train"] in commands
    for argv in [[]] + commands:
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--help"])
        assert info.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out


def test_default_xla_flags_only_where_unset_and_measured():
    env = {}
    assert xla_flags.set_default_xla_flags(env, jaxlib="0.10.2") == xla_flags.CPU_XLA_FLAGS
    assert env == {"XLA_FLAGS": xla_flags.CPU_XLA_FLAGS}
    for user in ("", "--xla_force_host_platform_device_count=8"):  # the user's flags, even none, win
        env = {"XLA_FLAGS": user}
        assert xla_flags.set_default_xla_flags(env, jaxlib="0.10.2") is None and env == {"XLA_FLAGS": user}
    env = {}  # a jaxlib they were not measured on could abort on an unknown flag: leave XLA alone
    assert xla_flags.set_default_xla_flags(env, jaxlib="0.11.0") is None and env == {}
    assert cli.set_default_xla_flags is xla_flags.set_default_xla_flags  # what `jaxbp` runs first
    env = {}  # check and devices: programs that compile once and run once, compiled without LLVM's passes
    flags = xla_flags.set_default_xla_flags(env, jaxlib="0.10.2", fast_compile=True)
    assert flags == env["XLA_FLAGS"] == f"{xla_flags.CPU_XLA_FLAGS} {xla_flags.FAST_COMPILE_FLAGS}"
    assert set(cli.FAST_COMPILE_COMMANDS) == {"check", "devices"}


# ------------------------------------------------------------------ a user's own arrays


def test_fit_trains_on_a_users_own_arrays_and_extends_the_run(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6, 6)).astype(np.float32), rng.integers(0, 3, 40)
    ds = data.Dataset.from_arrays(x[:32], y[:32], x[32:], y[32:], name="blobs")
    out = tmp_path / "run"
    config = train.TrainConfig(model="mlp", epochs=1, batch_size=16, out=str(out))
    result = train.fit(config, dataset=ds, progress=False)
    assert result.status == "completed" and result.steps == 2 and result.config.dataset == "blobs"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == {"name": "blobs", "train": 32, "val": 0, "test": 8, "input_shape": [6, 6, 1]}
    assert 0.0 <= result.test_accuracy <= 1.0
    longer = train.fit(train.resume_config(out, epochs=2), dataset=ds, progress=False)
    assert longer.status == "completed" and longer.steps == 4 and longer.epochs_completed == 2
    with pytest.raises(train.ConfigError, match="val_split"):
        train.fit(dataclasses.replace(config, val_split=0.1), dataset=ds, progress=False)
