"""experiments/fashion_mnist.py's protocol on digits-sized stand-ins: the recipe is chosen on
validation accuracy, finished runs are reused, interrupted ones resumed, and the final test
accuracies are summarised per gradient mode. Finished runs are planted as summaries (no
training); one real run on digits is stopped and resumed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from jaxbp import train

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "fashion_mnist.py"
_spec = importlib.util.spec_from_file_location("fashion_mnist_experiment", SCRIPT)
fm = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fm)

BASE = train.TrainConfig(dataset="digits", model="mlp", epochs=1, batch_size=64, log_every=1000)
CANDIDATES = (
    fm.Recipe("mlp-a", "mlp, lr 3e-3", BASE),
    fm.Recipe("mlp-b", "mlp, lr 1e-2", dataclasses.replace(BASE, learning_rate=1e-2)),
    fm.Recipe("cnn-c", "cnn", dataclasses.replace(BASE, model="cnn")),
)


def plant(config: train.TrainConfig, *, val: float | None, test: float, steps: int = 23, status="completed"):
    """A run folder holding only the summary a finished run of ``config`` would write."""
    out = Path(config.out)
    out.mkdir(parents=True)
    summary = {
        "status": status, "error": None, "config": config.to_dict(), "val_accuracy": val, "test_accuracy": test,
        "test_loss": 0.3, "steps": steps, "epochs_completed": config.epochs, "wall_time_s": 1.0,
        "examples_per_s": 100.0, "dataset": {"train": 1000, "val": 100},
        "history": [{"epoch": 1, "val_accuracy": val, "test_accuracy": test}],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def no_training(monkeypatch):
    def refuse(config, **kwargs):
        raise AssertionError(f"fit called for {config.out}: a finished run should have been reused")

    monkeypatch.setattr(fm.train, "fit", refuse)


def plant_selection(plan, scores):
    for recipe, (val, test, steps) in zip(CANDIDATES, scores):
        plant(fm.run_config(recipe, plan, "select", 0, "manual"), val=val, test=test, steps=steps)


def test_the_recipe_is_chosen_on_validation_not_test(tmp_path, no_training):
    plan = fm.Plan(tmp_path, epochs=1)
    # mlp-a is best on test, cnn-c second; mlp-b is best on validation and must win.
    plant_selection(plan, [(0.90, 0.97, 23), (0.93, 0.91, 23), (0.85, 0.95, 23)])
    fm.select_phase(CANDIDATES, plan, log=lambda line: None)  # all reused: fit is never called
    selection = fm.choose(fm.selection_table(CANDIDATES, plan))
    assert selection.chosen == "mlp-b"
    assert selection.best_per_model == {"mlp": "mlp-b", "cnn": "cnn-c"}
    assert [r.name for r in fm.final_recipes(CANDIDATES, selection)] == ["mlp-b", "cnn-c"]


def test_a_validation_tie_goes_to_fewer_steps(tmp_path, no_training):
    plan = fm.Plan(tmp_path, epochs=1)
    plant_selection(plan, [(0.93, 0.90, 46), (0.93, 0.90, 23), (0.80, 0.99, 23)])
    assert fm.choose(fm.selection_table(CANDIDATES, plan)).chosen == "mlp-b"


def test_an_unfinished_or_failed_selection_is_refused(tmp_path, no_training):
    plan = fm.Plan(tmp_path, epochs=1)
    plant(fm.run_config(CANDIDATES[0], plan, "select", 0, "manual"), val=0.9, test=0.9)
    plant(fm.run_config(CANDIDATES[1], plan, "select", 0, "manual"), val=None, test=0.1, status="diverged")
    with pytest.raises(fm.ProtocolError, match="mlp-b, cnn-c"):
        fm.choose(fm.selection_table(CANDIDATES, plan))
    with pytest.raises(fm.ProtocolError, match="diverged"):
        fm.select_phase(CANDIDATES[1:2], plan, log=lambda line: None)


def test_a_models_best_recipe_can_go_to_the_final_phase_before_the_other_model_is_done(tmp_path, no_training):
    plan = fm.Plan(tmp_path, epochs=1)
    quiet = lambda line: None  # noqa: E731
    # Both mlp candidates are done (mlp-b best on validation, mlp-a on test); cnn-c is not.
    plant(fm.run_config(CANDIDATES[0], plan, "select", 0, "manual"), val=0.90, test=0.97)
    plant(fm.run_config(CANDIDATES[1], plan, "select", 0, "manual"), val=0.93, test=0.91)
    assert [r.name for r in fm.final_plan(CANDIDATES, ["mlp-b"], plan, quiet)] == ["mlp-b"]
    with pytest.raises(fm.ProtocolError, match="--only mlp-a: not the best mlp recipe on validation .mlp-b is"):
        fm.final_plan(CANDIDATES, ["mlp-a"], plan, quiet)
    with pytest.raises(fm.ProtocolError, match="the cnn candidates are not finished .cnn-c"):
        fm.final_plan(CANDIDATES, ["cnn-c"], plan, quiet)
    with pytest.raises(fm.ProtocolError, match="select phase is not finished .cnn-c"):
        fm.final_plan(CANDIDATES, [], plan, quiet)  # without --only: the whole selection first


def test_final_reuses_finished_runs_resumes_a_stopped_one_and_summarises_per_mode(tmp_path, monkeypatch):
    plan = fm.Plan(tmp_path, epochs=1, seeds=(0, 1))
    recipe = CANDIDATES[0]
    planted = {("manual", 0): 0.91, ("autodiff", 0): 0.92, ("autodiff", 1): 0.95}
    for (grad, seed), acc in planted.items():
        plant(fm.run_config(recipe, plan, "final", seed, grad), val=None, test=acc)
    stopped = fm.run_config(recipe, plan, "final", 1, "manual")
    train.fit(dataclasses.replace(stopped, max_steps=3), progress=False)  # interrupted at step 3

    calls = []
    real_fit = train.fit

    def recording_fit(config, **kwargs):
        calls.append((config, kwargs))
        return real_fit(config, progress=False, **kwargs)

    monkeypatch.setattr(fm.train, "fit", recording_fit)
    fm.final_phase([recipe], plan, log=lambda line: None)
    assert len(calls) == 1, "only the stopped run trains; the three finished ones are reused"
    config, kwargs = calls[0]
    assert config.resume == stopped.out and not kwargs.get("overwrite")
    summary = json.loads((Path(stopped.out) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"]["val"] == 0  # the whole training split
    assert summary["steps"] == -(-summary["dataset"]["train"] // BASE.batch_size)  # one full epoch

    per_grad = fm.final_results([recipe], plan, (0, 1))["mlp-a"]["per_grad"]
    manual = [0.91, summary["test_accuracy"]]
    assert per_grad["manual"]["test_accuracy_per_seed"] == {"0": 0.91, "1": summary["test_accuracy"]}
    assert per_grad["manual"]["mean"] == pytest.approx(statistics.fmean(manual))
    assert per_grad["manual"]["std"] == pytest.approx(statistics.stdev(manual))
    assert per_grad["autodiff"]["mean"] == pytest.approx(0.935)
    assert per_grad["autodiff"]["std"] == pytest.approx(statistics.stdev([0.92, 0.95]))
    assert per_grad["autodiff"]["reached_target"]
    assert per_grad["manual"]["reached_target"] == (statistics.fmean(manual) >= fm.TARGET)


def test_a_folder_of_another_config_is_replaced_explicitly(tmp_path, monkeypatch):
    plan = fm.Plan(tmp_path, epochs=1)
    config = fm.run_config(CANDIDATES[0], plan, "final", 0, "manual")
    plant(dataclasses.replace(config, learning_rate=0.5), val=None, test=0.5)
    calls = []
    monkeypatch.setattr(fm.train, "fit", lambda config, **kwargs: calls.append((config, kwargs)))
    lines = []
    fm.ensure_run(config, log=lines.append)
    assert calls == [(config, {"overwrite": True})]
    assert "learning_rate: 0.5 -> 0.003" in lines[0]


@pytest.mark.parametrize(
    "status, has_checkpoint, expected",
    [("interrupted", True, "resume"), ("running", True, "resume"), ("interrupted", False, "overwrite")],
)
def test_an_unfinished_run_resumes_from_its_checkpoint_or_restarts_without_one(
    tmp_path, monkeypatch, status, has_checkpoint, expected
):
    """SIGINT leaves ``interrupted``, a hard kill ``running``: both continue from the checkpoint;
    with none written yet there is nothing to keep, and the folder is retrained."""
    config = fm.run_config(CANDIDATES[0], fm.Plan(tmp_path, epochs=1), "final", 0, "manual")
    plant(config, val=None, test=0.5, status=status)
    if has_checkpoint:
        (Path(config.out) / "checkpoint.npz").write_bytes(b"")  # only its presence is looked at here
    calls = []
    monkeypatch.setattr(fm.train, "fit", lambda config, **kwargs: calls.append((config, kwargs)))
    fm.ensure_run(config, log=lambda line: None)
    resumed = dataclasses.replace(config, resume=config.out)
    assert calls == ([(resumed, {"overwrite": False})] if expected == "resume" else [(config, {"overwrite": True})])


def test_results_keep_the_old_history_and_record_the_machine(tmp_path, no_training):
    plan = fm.Plan(tmp_path, epochs=1)
    plant_selection(plan, [(0.90, 0.97, 23), (0.93, 0.91, 23), (0.85, 0.95, 23)])
    old = {"runs": {"manual": {"test_accuracy": 0.9315}}, "config": {"model": "cnn-bn"}}
    results, selection = fm.build_results(old, CANDIDATES, plan)
    assert results[fm.HISTORY_KEY] == old
    assert results["selection"]["chosen"] == "mlp-b"
    assert [c["run"]["test_accuracy"] for c in results["selection"]["candidates"]] == [0.97, 0.91, 0.95]
    assert {"cpu_model", "avx2", "avx512", "jax_version", "xla_flags"} <= set(results["machine"])
    again, _ = fm.build_results(results, CANDIDATES, plan)  # a rewrite keeps the history, not nests it
    assert again[fm.HISTORY_KEY] == old


@pytest.mark.parametrize(
    "argv, message",
    [(["--only", "nope"], "--only nope"), (["--grads", "manual,jvp"], "--grads"), (["--seeds", "a"], "--seeds a")],
)
def test_bad_flags_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        fm.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_study_sets_its_epochs_runs_and_target_and_other_epochs_are_a_smoke_run():
    args = fm.parse_args(["--study", "convnext"])
    study = fm.STUDIES["convnext"]
    assert (args.epochs, args.runs) == (study.epochs, "runs/fashion_mnist_convnext")
    assert {r.config.model for r in study.candidates} == {"convnext"}
    plan = fm.Plan(Path(args.runs), args.epochs, full_epochs=study.epochs, target=study.target)
    assert not plan.smoke and dataclasses.replace(plan, epochs=fm.EPOCHS).smoke
    assert fm.parse_args([]).epochs == fm.EPOCHS and fm.parse_args([]).runs == "runs/fashion_mnist"
    with pytest.raises(SystemExit):  # the cnn study's recipes are not convnext's
        fm.parse_args(["--study", "convnext", "--only", fm.CANDIDATES[0].name])


def test_a_study_without_a_target_reports_none_reached(tmp_path, no_training):
    plan = fm.Plan(tmp_path, epochs=1, seeds=(0,), target=None)
    plant(fm.run_config(CANDIDATES[0], plan, "final", 0, "manual"), val=None, test=0.99)
    stats = fm.final_results([CANDIDATES[0]], plan, (0,))["mlp-a"]["per_grad"]["manual"]
    assert stats["n"] == 1 and stats["reached_target"] is None
