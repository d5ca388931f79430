"""The training loop: :func:`fit` runs a :class:`TrainConfig` into a run folder.

In the shape of the flax examples: the arrays a step updates are one :class:`TrainState`;
:func:`train_epoch` runs the steps of (the rest of) an epoch, :func:`evaluate` measures a
split, an :class:`Accumulator` sums the metrics of a logging window and of an epoch, and
:class:`Progress` is where the run stands (step, epoch, batch, history, accumulators):
everything a checkpoint needs besides the arrays, so that a resumed run (mid-epoch too)
writes bitwise the same metrics as an uninterrupted one. Every file goes through
:class:`jaxbp.train.runfolder.RunFolder`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import checkpoint, data, models, parallel
from jaxbp.choices import MODELS
from jaxbp.loading import first_line
from jaxbp.train import audit, resume, steps
from jaxbp.train.config import (
    TRAJECTORY_FIELDS,
    ConfigError,
    TrainConfig,
    check_resume_epochs,
    config_differences,
)
from jaxbp.train.display import Display
from jaxbp.train.errors import (
    GradientMismatchError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainResult,
    UserCodeError,
)
from jaxbp.train.runfolder import RunFolder, RunFolderError, next_free_folder
from jaxbp.train.state import Accumulator, Progress, TrainState
from jaxbp.train.stopping import StopSignals

__all__ = ["Run", "end_epoch", "evaluate", "fit", "save", "train_epoch"]


@dataclass
class Timing:
    """This process's step timings (not checkpointed): the first step compiles."""

    compile_s: float = 0.0
    train_s: float = 0.0
    examples: int = 0


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains: the config, data, compiled steps and outputs."""

    config: TrainConfig
    ds: data.Dataset
    mesh: Any
    model: models.Model
    train_step: Any
    eval_step: Any
    dtype: Any
    steps_per_epoch: int
    folder: RunFolder
    display: Display
    augment: Any
    timing: Timing
    t_start: float
    auditor: audit.Auditor | None = None  # compare mode: the float64 audits

    @property
    def last_step(self) -> int:
        return last_step(self.config, self.steps_per_epoch)

    def scored(self, rec: dict[str, Any]) -> dict[str, Any]:
        """``rec`` without its accuracy fields where the model has none (it reconstructs its input)."""
        if self.model.objective == "classify":
            return rec
        return {k: v for k, v in rec.items() if not k.endswith("accuracy")}

    def log(self, rec: dict[str, Any]) -> None:
        self.folder.record(rec)
        self.display.record(rec)

    def wall_time(self, progress: Progress) -> float:
        return progress.wall_time_s + time.perf_counter() - self.t_start


def last_step(config: TrainConfig, steps_per_epoch: int) -> int:
    """The step a run stops after: the end of the last epoch, or ``max_steps``."""
    total = steps_per_epoch * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


# ------------------------------------------------------------------ the loop


def train_epoch(run: Run, state: TrainState, progress: Progress, stop: StopSignals) -> TrainState:
    """The remaining steps of the current epoch (from ``progress.batch_index``); stops early
    at ``max_steps`` or after the step at which ``stop.poll`` (asked after every step, by
    every process) reports a stop signal. Updates ``progress``; returns the new state."""
    config = run.config
    batches = data.batches(
        run.ds.x_train, run.ds.y_train, config.batch_size, seed=config.seed, epoch=progress.epoch,
        drop_last=config.drop_last, start_batch=progress.batch_index,
    )  # fmt: skip
    for xb, yb, n_valid in batches:
        xb = run.augment(xb, progress.epoch, progress.batch_index)
        before = state  # compare mode audits the step from the state it started from
        compiles = run.timing.compile_s == 0.0  # the first step of this process
        if compiles:
            run.display.compiling()
        state, m, seconds = _step(run, state, progress, xb, yb, n_valid)
        if compiles:
            run.display.compiled()
        progress.step += 1
        progress.batch_index += 1
        loss_a = float(m["loss_autodiff"]) if config.grad == "compare" else None
        for acc in (progress.epoch_acc, progress.window):
            acc.add(float(m["loss"]), int(m["correct"]), n_valid, seconds, loss_a)
        if config.grad == "compare":
            audit.check_step(run, before, (xb, yb, n_valid), m, progress)
        if progress.step % config.log_every == 0 or progress.batch_index == run.steps_per_epoch:
            rec = run.scored(progress.window.train_record(progress.step, progress.epoch + 1))
            run.log(rec)
            run.display.advance(0, rec)
            progress.window = Accumulator()
        run.display.advance(1)
        if stop.poll(run.mesh) or progress.step >= run.last_step:
            break
    return state


def _step(run: Run, state: TrainState, progress: Progress, xb, yb, n_valid: int):
    """One train step: ``(new state, host metrics, seconds or None if it compiled)``; raises
    :class:`NonFiniteLossError` (the state is then not updated)."""
    t0 = time.perf_counter()
    # Host numpy for the scalars: jit replicates them over the mesh on every process.
    try:
        params, opt_state, model_state, metrics = run.train_step(
            state.params, state.opt_state, state.model_state,
            *parallel.global_batch(run.mesh, np.asarray(xb, run.dtype), yb),
            np.int32(n_valid), steps.dropout_key(state.rng, progress.step),
        )  # fmt: skip
        m = parallel.to_host(metrics)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" in str(err):
            raise ConfigError(
                "batch_size", f"is {run.config.batch_size}: the train step does not fit in memory; choose a smaller one"
            ) from None
        raise
    except (Exception, SystemExit) as err:  # sys.exit in a user's backward rule must not end the run as done
        if run.config.model in MODELS:
            raise
        if run.timing.compile_s:  # a later step: the user's code failed while running (a host callback)
            raise UserCodeError(
                f"{run.config.model!r}: step {progress.step + 1} (epoch {progress.epoch + 1}) raised "
                f"{type(err).__name__}: {first_line(err)}; training stopped. {_kept(run)}"
            ) from err
        # The first step traces the user's layers and their backward: say whose code failed.
        raise models.ModelError(
            f"{run.config.model!r}: tracing the train step ({run.config.grad} gradients) raised "
            f"{type(err).__name__}: {first_line(err)}"
        ) from err
    seconds = time.perf_counter() - t0
    where = f"at step {progress.step + 1} (epoch {progress.epoch + 1}, batch {progress.batch_index + 1})"
    loss = float(m["loss"])
    problem = None
    if not math.isfinite(loss):
        problem = f"loss is {loss}"
    elif not m["grads_finite"]:
        problem = f"gradients are not finite (loss {loss:.4g})"
    elif run.config.grad == "compare" and not m["grads_finite_autodiff"]:
        problem = f"the autodiff gradients are not finite (loss {loss:.4g}); the manual ones are"
    if problem:
        raise NonFiniteLossError(
            f"{problem} {where}; training stopped. {_kept(run)} Try a smaller learning rate (--lr)."
        )
    if run.timing.compile_s == 0.0:  # the first step of a process compiles
        run.timing.compile_s = seconds
        return TrainState(params, opt_state, model_state, state.rng), m, None
    run.timing.train_s += seconds
    run.timing.examples += n_valid
    return TrainState(params, opt_state, model_state, state.rng), m, seconds


def _kept(run: Run) -> str:
    path = run.folder.paths["checkpoint"]
    return f"The last good checkpoint is kept: {path}." if path.exists() else "No checkpoint was written yet."


def evaluate(run: Run, state: TrainState, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean loss and accuracy of ``state`` on the split ``(x, y)`` (any split: test, validation)."""
    n = len(x)
    d = run.mesh.devices.size
    bs = -(-min(1000, n) // d) * d  # a multiple of the device count (padded rows are masked)
    loss_sum, correct = 0.0, 0
    for xb, yb, n_valid in data.batches(x, y, bs, seed=0, epoch=0, shuffle=False):
        xb, yb = parallel.global_batch(run.mesh, np.asarray(xb, run.dtype), yb)
        ls, c = parallel.to_host(run.eval_step(state.params, state.model_state, xb, yb, np.int32(n_valid)))
        loss_sum += float(ls)
        correct += int(c)
    return loss_sum / n, correct / n


def evaluate_splits(run: Run, state: TrainState, progress: Progress) -> dict[str, float]:
    """``{"val_loss", "val_accuracy", "test_loss", "test_accuracy"}`` of ``state`` (the
    ``val_`` pair only with a validation split); a non-finite loss stops the run
    (:class:`NonFiniteLossError`)."""
    splits = {"test": (run.ds.x_test, run.ds.y_test)}
    if run.ds.x_val is not None:
        splits = {"val": (run.ds.x_val, run.ds.y_val), **splits}
    out = {}
    for split, (x, y) in splits.items():
        loss, accuracy = evaluate(run, state, x, y)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"{'validation' if split == 'val' else split} loss is {loss} at step {progress.step} "
                f"(epoch {progress.epoch + 1}) though the train loss is finite: the parameters have grown too "
                f"large; training stopped. {_kept(run)} Try a smaller learning rate (--lr)."
            )
        out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, accuracy
    return run.scored(out)


def end_epoch(run: Run, state: TrainState, progress: Progress, t_epoch: float) -> None:
    """Evaluate on the validation (if any) and test splits, record the epoch, move to the
    next and checkpoint."""
    scores = evaluate_splits(run, state, progress)
    acc = progress.epoch_acc
    n = max(acc.count, 1)
    rec = run.scored({
        "kind": "eval", "step": progress.step, "epoch": progress.epoch + 1,
        "train_loss": acc.loss_sum / n, "train_accuracy": acc.correct / n, **scores,
        "epoch_time_s": time.perf_counter() - t_epoch, "examples_per_s": acc.examples_per_s,
    })  # fmt: skip
    progress.history.append(rec)
    run.log(rec)
    progress.epoch, progress.batch_index, progress.epoch_acc = progress.epoch + 1, 0, Accumulator()
    save(run, state, progress)


def save(run: Run, state: TrainState, progress: Progress) -> Path:
    """Checkpoint the state and the progress. Every process fetches (a collective where a
    leaf is not replicated); process 0 writes."""
    host = parallel.to_host(state._asdict())
    return run.folder.save_checkpoint(
        host, step=progress.step, epoch=progress.epoch, config=run.config.to_dict(),
        extra=progress.extra(run.wall_time(progress)),
    )  # fmt: skip


# ------------------------------------------------------------------ fit


def fit(
    config: TrainConfig,
    *,
    progress: Any = None,
    ops=None,
    overwrite: bool = False,
    after_stop: str = "restore",
    dataset: data.Dataset | None = None,
) -> TrainResult:
    """Train ``config`` and return a :class:`TrainResult`.

    The run records ``config.anchored()``: the file of a ``path/to/file.py:FUNCTION`` model and
    ``data_dir`` absolute, so that it resumes from any directory (``TrainResult.config`` is it).

    The run is written into ``config.out`` (default ``runs/<dataset>-<model>-<grad>``; a
    resumed run: the folder it resumes, wherever that has been moved or copied). A folder
    that already holds a run is refused (:class:`RunFolderError`, a ``ValueError``) unless
    ``overwrite``, which replaces the old run completely.

    ``progress``: ``None`` shows a tqdm bar when stderr is a terminal and log lines
    otherwise, ``False`` shows nothing, a callable receives every metrics record.
    ``ops`` replaces :mod:`jaxbp.manual` (for tests that inject a wrong backward).
    ``dataset``: train on this :class:`jaxbp.data.Dataset` (your own arrays:
    ``Dataset.from_arrays(x_train, y_train, x_test, y_test)``) instead of loading
    ``config.dataset``; the run records its name as ``config.dataset``, and resuming it takes
    the same ``dataset`` again. ``config.val_split`` must then be 0 (the dataset holds out its
    own validation rows: ``from_arrays(..., val_split=)``).

    SIGINT and SIGTERM (any number, in any process of a multi-process run) stop the run
    after the current step with a checkpoint and an ``interrupted`` summary, then raise
    :class:`TrainingInterrupted` (:mod:`jaxbp.train.stopping`). ``after_stop``: what the
    handlers become when ``fit`` returns: the ones it found (``"restore"``), or ignored once
    a stop signal arrived (``"ignore"``, for a command that exits next).

    Raises ``ValueError`` (:class:`ConfigError` naming the field, :class:`RunFolderError`
    naming the path) for a bad config or output folder, ``data.DataError`` for missing or
    bad data, ``checkpoint.CheckpointError`` for a bad or mismatching checkpoint to resume,
    :class:`GradientMismatchError`, :class:`NonFiniteLossError` and :class:`TrainingInterrupted`.
    """
    config = config.validate().anchored()  # what the run records: its model file absolute
    if dataset is not None:
        if not isinstance(dataset, data.Dataset):
            raise TypeError(
                f"dataset must be a jaxbp.data.Dataset (Dataset.from_arrays builds one), got {type(dataset).__name__}"
            )
        if config.val_split:
            raise ConfigError(
                "val_split", f"is {config.val_split}, but fit was given its data set: hold validation rows out of "
                "it with Dataset.from_arrays(..., val_split=...)"
            )  # fmt: skip
        config = dataclasses.replace(config, dataset=dataset.name)
    precision = None if config.matmul_precision == "default" else config.matmul_precision
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(StopSignals(after_stop))
        if config.dtype == "float64":
            stack.enter_context(jax.enable_x64(True))
        if precision:
            stack.enter_context(jax.default_matmul_precision(precision))
        return _fit(config, progress, ops, overwrite, stop, dataset)


def _fit(
    config: TrainConfig, progress_arg, ops, overwrite: bool, stop: StopSignals, dataset: data.Dataset | None
) -> TrainResult:
    t_start = time.perf_counter()
    # One data-parallel mesh (one device unless config.devices or several processes say more):
    # parameters replicated, every batch split by rows; the same jitted step runs over it.
    mesh = parallel.make_mesh(config.devices)
    parallel.check_batch_size(config.batch_size, mesh)
    primary = parallel.is_primary()  # only process 0 writes files and shows progress
    if dataset is None:
        ds = data.load(config.dataset, config.data_dir, seed=config.seed, val_split=config.val_split)
    else:
        ds = dataset
    config.check_against_data(len(ds.x_train), ds.input_shape)
    steps_per_epoch = data.num_batches(len(ds.x_train), config.batch_size, config.drop_last)
    compiled = steps.compiled(steps.step_key(config), ds.num_classes, steps_per_epoch * config.epochs, ops)
    model, train_step, eval_step, optimizer, audit_step = compiled
    start = _start(config, model, optimizer, ds)
    state, progress = start.state, start.progress
    if config.max_steps and config.max_steps <= progress.step:
        raise ConfigError(
            "max_steps", f"is {config.max_steps} but the checkpoint is at step {progress.step} already; "
            "give a larger one, or 0 to run to the end"
        )  # fmt: skip
    if start.resumed_from is not None and progress.epoch >= config.epochs:
        return _already_completed(config, state, progress, start.resumed_from)
    out = Path(config.out) if config.out else start.resumed_from or _default_folder(config, ds.name, overwrite)
    stop.start_run()
    with _open_folder(out, overwrite, start.resumed_from, progress.step, primary) as folder:
        display = Display(
            progress_arg if primary else False, last_step(config, steps_per_epoch), progress.step,
            f"{config.model}/{config.grad}",
        )  # fmt: skip
        run = Run(
            config, ds, mesh, model, train_step, eval_step, jnp.dtype(config.dtype), steps_per_epoch,
            folder, display, data.batch_augmenter(config, ds), Timing(), t_start,
            audit.Auditor.create(config, audit_step, steps_per_epoch) if audit_step else None,
        )  # fmt: skip
        display.folder(folder.path)
        for note in folder.notes:
            display.note(note)
        try:
            state = parallel.replicate(state, mesh)
            if start.extends_from is not None:  # before config.json: the checkpoint is what a resume reads
                _extend(run, state, progress, start.extends_from)
            folder.write_json("config", config.to_dict())
            folder.write_json("summary", _summary(run, progress, "running", None, None))
            if run.auditor:  # before any float32 step traces (see Auditor.prepare)
                display.compiling()
                run.auditor.prepare(state, (config.batch_size, *ds.input_shape), config.model)
            state, status, stop_eval = _train(run, state, progress, stop)
        except (
            GradientMismatchError, NonFiniteLossError, UserCodeError, RunFolderError, ConfigError, models.ModelError
        ) as err:  # fmt: skip
            status = {GradientMismatchError: "gradient_mismatch", NonFiniteLossError: "diverged"}.get(
                type(err), "failed"
            )
            _finish(run, progress, status, str(err), None, best_effort=True)
            raise
        finally:
            display.close()
        summary = _finish(run, progress, status, None, stop_eval)
    return TrainResult(
        config=config, test_accuracy=_or_nan(summary["test_accuracy"]), test_loss=_or_nan(summary["test_loss"]),
        history=progress.history,
        steps=progress.step, epochs_completed=progress.epoch, wall_time_s=summary["wall_time_s"],
        compile_time_s=run.timing.compile_s, examples_per_s=summary["examples_per_s"], out_dir=out,
        paths=folder.paths, worst_agreement=progress.worst, status=status,
        val_accuracy=summary["val_accuracy"], val_loss=summary["val_loss"], params=state.params, model_state=state.model_state,
    )  # fmt: skip


def _open_folder(out: Path, overwrite: bool, resume: Path | None, step: int, primary: bool) -> RunFolder:
    """Process 0 takes the run folder; every process learns whether it could."""
    error = None
    try:
        folder = RunFolder.open(out, overwrite=overwrite, resume=resume, resume_step=step, primary=primary)
    except RunFolderError as err:
        folder, error = None, err
    if not parallel.agree(error is None):
        if error is not None:
            raise error
        raise RunFolderError(f"{out}: process 0 cannot take the run folder (see its error); stopping too")
    return folder  # the other processes never check, so they never fail here


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


class Start(NamedTuple):
    """Where :func:`fit` starts: the state and progress (fresh, or a checkpoint's), the folder
    resumed from (None: a new run) and, where ``config.epochs`` extends the resumed run, the
    epochs it had (else None)."""

    state: TrainState
    progress: Progress
    resumed_from: Path | None = None
    extends_from: int | None = None


def _start(config: TrainConfig, model, optimizer, ds: data.Dataset) -> Start:
    """The initial state and progress, or the checkpoint's (:class:`Start`)."""
    try:
        fresh = TrainState(**steps.init_state(model, optimizer, ds.input_shape, config.dtype, config.seed))
    except models.ModelError as err:  # a user's model that cannot be built: name the spec
        raise models.ModelError(f"{config.model!r}: {err}") from None
    except (ZeroDivisionError, ValueError) as err:  # e.g. a cnn's pooling leaves nothing of 1x1 images
        shape = "x".join(map(str, ds.input_shape))
        raise ConfigError("model", f"is {config.model!r}, which cannot take the {shape} images of {ds.name}: {err}")
    if not config.resume:
        return Start(fresh, Progress())
    stored = resume.read_stored_run(config.resume, model=config.model, fields=TRAJECTORY_FIELDS)
    path = stored.checkpoint  # every process reads the checkpoint on the host
    # Every field that decides the trajectory, but epochs: more of them extend the run (below).
    diffs = config_differences(stored.meta["config"], config, [f for f in TRAJECTORY_FIELDS if f != "epochs"])
    if diffs:
        raise checkpoint.CheckpointError(
            f"{path}: cannot resume, the checkpoint was written by a different run configuration ("
            + "; ".join(f"{f}: checkpoint {old!r}, this run {new!r}" for f, (old, new) in diffs.items())
            + ")"
        )
    run_epochs = stored.meta["config"].get("epochs", TrainConfig().epochs)
    if isinstance(run_epochs, bool) or not isinstance(run_epochs, int) or run_epochs < 1:
        raise checkpoint.CheckpointError(
            f"{path}: its config's epochs is {run_epochs!r}, not an integer >= 1; refusing to resume from it"
        )
    steps_per_epoch = data.num_batches(len(ds.x_train), config.batch_size, config.drop_last)
    state, progress = resume.restore(stored, fresh, steps_per_epoch=steps_per_epoch, epochs=run_epochs)
    check_resume_epochs(config.epochs, run_epochs, progress.epoch)
    return Start(state, progress, path.parent, run_epochs if config.epochs > run_epochs else None)


def _already_completed(config: TrainConfig, state: TrainState, progress: Progress, folder: Path) -> TrainResult:
    """The result of resuming a run that has completed its epochs: nothing trains, nothing is written."""
    last = progress.history[-1] if progress.history else {}
    return TrainResult(
        config=config, test_accuracy=_or_nan(last.get("test_accuracy")), test_loss=_or_nan(last.get("test_loss")),
        history=progress.history, steps=progress.step, epochs_completed=progress.epoch,
        wall_time_s=progress.wall_time_s, compile_time_s=0.0, examples_per_s=0.0, out_dir=folder,
        paths=RunFolder(folder).paths, worst_agreement=progress.worst, status="already_completed",
        val_accuracy=last.get("val_accuracy"), val_loss=last.get("val_loss"),
        params=state.params, model_state=state.model_state,
    )  # fmt: skip


def _extend(run: Run, state: TrainState, progress: Progress, from_epochs: int) -> None:
    """This resume extends the run from ``from_epochs`` to ``config.epochs``: checkpointed at once
    (the run folder says so whatever happens next), then an ``extended`` metrics record and a
    note of what the learning rate does. The optimizer was built over the new total of steps, so
    a cosine schedule decays to 0 at the new end (optax reads the step from the optimizer state):
    the learning rate goes back up from where the old schedule ended."""
    config = run.config
    total = run.steps_per_epoch * config.epochs
    progress.extensions.append({"step": progress.step, "from_epochs": from_epochs, "to_epochs": config.epochs})
    save(run, state, progress)
    lr = steps.learning_rate(config, total)
    now = float(lr(progress.step)) if callable(lr) else float(lr)
    rec = {
        "kind": "extended", "step": progress.step, "epoch": progress.epoch + 1, "from_epochs": from_epochs,
        "to_epochs": config.epochs, "learning_rate": now,
    }  # fmt: skip
    run.folder.record(rec)
    if run.display.callback:
        run.display.callback(rec)
    if config.schedule == "cosine":
        how = (
            f"the cosine schedule is rebuilt over the {config.epochs} epochs: learning rate {now:.3g} at step "
            f"{progress.step}, decaying to 0 at step {total}"
        )
    else:
        how = f"the constant learning rate {now:g} continues"
    if run.folder.primary:
        run.display.note(f"{run.folder.path}: extending the run from {from_epochs} to {config.epochs} epochs; {how}")


def _default_folder(config: TrainConfig, dataset: str, overwrite: bool) -> Path:
    """The default run folder, or the next free one beside it (one process: several processes
    must agree on the folder, so there the default is refused as before if it holds a run)."""
    base = Path(config.default_out(dataset))
    return base if overwrite or jax.process_count() > 1 else next_free_folder(base)


def _train(
    run: Run, state: TrainState, progress: Progress, stop: StopSignals
) -> tuple[TrainState, str, dict[str, float] | None]:
    """Epochs until the end, ``max_steps`` or a stop signal: ``(state, status, the scores of
    :func:`evaluate_splits` after a mid-epoch stop, or None)``; a signal checkpoints and
    raises :class:`TrainingInterrupted`."""
    config = run.config
    while progress.epoch < config.epochs:
        t_epoch = time.perf_counter()
        state = train_epoch(run, state, progress, stop)
        if stop.agreed is not None:
            save(run, state, progress)
            _interrupt(run, progress, stop)
        if progress.batch_index < run.steps_per_epoch:  # max_steps, mid-epoch: checkpoint, then evaluate
            save(run, state, progress)
            return state, "stopped", evaluate_splits(run, state, progress)
        end_epoch(run, state, progress, t_epoch)
        if progress.step >= run.last_step and progress.epoch < config.epochs:
            return state, "stopped", None
    return state, "completed", None


def _interrupt(run: Run, progress: Progress, stop: StopSignals) -> None:
    """After a stop signal (the checkpoint is written): the summary, then :class:`TrainingInterrupted`."""
    _finish(run, progress, "interrupted", None, None, best_effort=True)
    where = f"stopped after step {progress.step} (epoch {progress.epoch + 1}, batch {progress.batch_index})"
    if not run.folder.primary:
        raise TrainingInterrupted(
            f"{stop.describe()}: {where} with the other processes; process 0 wrote the checkpoint"
        )
    path = run.folder.paths["checkpoint"]
    raise TrainingInterrupted(
        f"{stop.describe()}: {where}; checkpoint written to {path}. "
        f"Resume with: {resume.resume_command(run.folder.path, run.config.model)}",
        path,
    )


def _finish(run: Run, progress: Progress, status: str, error, stop_eval, best_effort: bool = False) -> dict:
    """Write ``summary.json`` (and the plot when the run ended normally); ``best_effort``
    (the run is failing already): a write error is shown, not raised over the first."""
    summary = _summary(run, progress, status, error, stop_eval)
    try:
        run.folder.write_json("summary", summary)
        if status in ("completed", "stopped") and run.folder.primary:
            run.folder.write_plot(run.config)
    except RunFolderError as err:
        if not best_effort:
            raise
        run.display.note(f"the summary could not be written either: {err}")
    return summary


def _summary(run: Run, progress: Progress, status: str, error, stop_eval) -> dict[str, Any]:
    config, ds, timing = run.config, run.ds, run.timing
    last = progress.history[-1] if progress.history else {}
    scores = stop_eval or last
    return {
        "status": status,
        "error": error,
        "test_accuracy": scores.get("test_accuracy"),
        "test_loss": scores.get("test_loss"),
        "val_accuracy": scores.get("val_accuracy"),
        "val_loss": scores.get("val_loss"),
        "evaluated_at_step": (progress.step if stop_eval else last.get("step")),
        "epochs_completed": progress.epoch,
        "steps": progress.step,
        "wall_time_s": run.wall_time(progress),
        "compile_time_s": timing.compile_s,
        "examples_per_s": timing.examples / timing.train_s if timing.train_s > 0 else 0.0,
        "worst_agreement": progress.worst,
        "extensions": progress.extensions,
        "compare_rtol": config.compare_rtol if config.grad == "compare" else None,
        **audit.summary_fields(config, run.auditor, progress),
        "dataset": {
            "name": ds.name,
            "train": len(ds.x_train),
            "val": 0 if ds.x_val is None else len(ds.x_val),
            "test": len(ds.x_test),
            "input_shape": list(ds.input_shape),
        },
        "flops_per_example": models.flops(run.model, ds.input_shape),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "num_devices": int(run.mesh.devices.size),
        "num_processes": jax.process_count(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # float32 rounding depends on them
        "history": progress.history,
        "config": config.to_dict(),
        "paths": {k: str(v) for k, v in run.folder.paths.items()},
    }
