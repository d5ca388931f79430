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
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import data, models, parallel
from jaxbp.choices import MODELS
from jaxbp.loading import first_line
from jaxbp.train import audit, resume, steps
from jaxbp.train.config import ConfigError, TrainConfig
from jaxbp.train.display import Display
from jaxbp.train.errors import (
    GradientMismatchError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainResult,
    UserCodeError,
)
from jaxbp.train.run import Run, Timing, kept_checkpoint, last_step
from jaxbp.train.runfolder import RunFolderError
from jaxbp.train.start import already_completed, begin, default_folder, open_folder
from jaxbp.train.state import Accumulator, Progress, TrainState
from jaxbp.train.stopping import StopSignals
from jaxbp.train.summary import finish, or_nan, summary_record

__all__ = ["end_epoch", "evaluate", "fit", "save", "train_epoch"]


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
                f"{type(err).__name__}: {first_line(err)}; training stopped. {kept_checkpoint(run)}"
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
            f"{problem} {where}; training stopped. {kept_checkpoint(run)} Try a smaller learning rate (--lr)."
        )
    if run.timing.compile_s == 0.0:  # the first step of a process compiles
        run.timing.compile_s = seconds
        return TrainState(params, opt_state, model_state, state.rng), m, None
    run.timing.train_s += seconds
    run.timing.examples += n_valid
    return TrainState(params, opt_state, model_state, state.rng), m, seconds


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
                f"large; training stopped. {kept_checkpoint(run)} Try a smaller learning rate (--lr)."
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
    start = begin(config, model, optimizer, ds)
    state, progress = start.state, start.progress
    if config.max_steps and config.max_steps <= progress.step:
        raise ConfigError(
            "max_steps", f"is {config.max_steps} but the checkpoint is at step {progress.step} already; "
            "give a larger one, or 0 to run to the end"
        )  # fmt: skip
    if start.resumed_from is not None and progress.epoch >= config.epochs:
        return already_completed(config, state, progress, start.resumed_from)
    out = Path(config.out) if config.out else start.resumed_from or default_folder(config, ds.name, overwrite)
    stop.start_run()
    with open_folder(out, overwrite, start.resumed_from, progress.step, primary) as folder:
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
            folder.write_json("summary", summary_record(run, progress, "running", None, None))
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
            finish(run, progress, status, str(err), None, best_effort=True)
            raise
        finally:
            display.close()
        summary = finish(run, progress, status, None, stop_eval)
    return TrainResult(
        config=config, test_accuracy=or_nan(summary["test_accuracy"]), test_loss=or_nan(summary["test_loss"]),
        history=progress.history,
        steps=progress.step, epochs_completed=progress.epoch, wall_time_s=summary["wall_time_s"],
        compile_time_s=run.timing.compile_s, examples_per_s=summary["examples_per_s"], out_dir=out,
        paths=folder.paths, worst_agreement=progress.worst, status=status,
        val_accuracy=summary["val_accuracy"], val_loss=summary["val_loss"], params=state.params, model_state=state.model_state,
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
    finish(run, progress, "interrupted", None, None, best_effort=True)
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
