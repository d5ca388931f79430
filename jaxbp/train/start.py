"""Where :func:`jaxbp.train.loop.fit` starts: a fresh state or a checkpoint's (resumed, perhaps
extended to more epochs), a run already completed, and the run folder to write into."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax

from jaxbp import checkpoint, data, models, parallel
from jaxbp.train import resume, steps
from jaxbp.train.config import TRAJECTORY_FIELDS, ConfigError, TrainConfig, check_resume_epochs, config_differences
from jaxbp.train.errors import TrainResult
from jaxbp.train.runfolder import RunFolder, RunFolderError, next_free_folder
from jaxbp.train.state import Progress, TrainState
from jaxbp.train.summary import or_nan

__all__ = ["Start", "already_completed", "begin", "default_folder", "open_folder"]


class Start(NamedTuple):
    """Where :func:`fit` starts: the state and progress (fresh, or a checkpoint's), the folder
    resumed from (None: a new run) and, where ``config.epochs`` extends the resumed run, the
    epochs it had (else None)."""

    state: TrainState
    progress: Progress
    resumed_from: Path | None = None
    extends_from: int | None = None


def begin(config: TrainConfig, model, optimizer, ds: data.Dataset) -> Start:
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


def already_completed(config: TrainConfig, state: TrainState, progress: Progress, folder: Path) -> TrainResult:
    """The result of resuming a run that has completed its epochs: nothing trains, nothing is written."""
    last = progress.history[-1] if progress.history else {}
    return TrainResult(
        config=config, test_accuracy=or_nan(last.get("test_accuracy")), test_loss=or_nan(last.get("test_loss")),
        history=progress.history, steps=progress.step, epochs_completed=progress.epoch,
        wall_time_s=progress.wall_time_s, compile_time_s=0.0, examples_per_s=0.0, out_dir=folder,
        paths=RunFolder(folder).paths, worst_agreement=progress.worst, status="already_completed",
        val_accuracy=last.get("val_accuracy"), val_loss=last.get("val_loss"),
        params=state.params, model_state=state.model_state,
    )  # fmt: skip


def default_folder(config: TrainConfig, dataset: str, overwrite: bool) -> Path:
    """The default run folder, or the next free one beside it (one process: several processes
    must agree on the folder, so there the default is refused as before if it holds a run)."""
    base = Path(config.default_out(dataset))
    return base if overwrite or jax.process_count() > 1 else next_free_folder(base)


def open_folder(out: Path, overwrite: bool, resume: Path | None, step: int, primary: bool) -> RunFolder:
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
