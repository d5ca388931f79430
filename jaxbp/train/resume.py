"""What a resume reads from a run folder, checked before anything runs.

A run folder can come from anyone (handed over, downloaded, edited by hand), so what it
says is input, validated like a flag, and it never chooses the code that runs:

* :func:`read_stored_run`: the checkpoint, whose checksum covers every byte
  (:mod:`jaxbp.checkpoint`); its config must agree with ``config.json`` beside it (a
  checkpoint copied in from another run is refused); a model given as a user module spec
  (``MODULE:FUNCTION``, ``path/to/file.py:FUNCTION``) is imported only when the user names
  that same spec now (``--model``); ``metrics.jsonl`` must continue exactly (no bad line
  before good ones, its eval records the checkpoint's history). It imports nothing.
* :func:`restore`: the arrays and the progress, for a model already built from the
  config: the position (step, epoch, batch) one the run can reach, every array of the
  shape and dtype the model's init gives, and finite.

Every refusal is a :class:`jaxbp.checkpoint.CheckpointError` (or a
:class:`jaxbp.train.runfolder.RunFolderError` for the metrics) naming the file, one line.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxbp import checkpoint, files
from jaxbp.choices import MODELS
from jaxbp.loading import anchored_spec
from jaxbp.train.runfolder import RUN_FILES, kept_metrics
from jaxbp.train.state import Progress, TrainState

__all__ = ["StoredRun", "comparable", "read_stored_run", "restore", "resume_command"]


class StoredRun(NamedTuple):
    """A run to resume: its checkpoint file and that checkpoint's metadata (``meta["config"]``
    is the run's config as a dict)."""

    checkpoint: Path
    meta: dict[str, Any]


def read_stored_run(run: str | os.PathLike, *, model: str | None, fields: Sequence[str]) -> StoredRun:
    """The checkpoint of ``run`` (a run folder or a checkpoint ``.npz``), checked before any
    data is loaded or any module imported.

    ``model``: the model spec the user names now (``None``: none). A user module stored in
    the run is refused unless ``model`` is that same spec. ``fields``: the config fields
    that must agree between the checkpoint and the ``config.json`` beside it (those that
    decide the trajectory). Raises :class:`jaxbp.checkpoint.CheckpointError` naming the file.
    """
    path = checkpoint.latest(run)
    if path is None:
        raise checkpoint.CheckpointError(
            f"{run}: no checkpoint to resume from (looked for {checkpoint.CHECKPOINT_NAME})"
        )
    _, meta = checkpoint.load(path)  # the checksum covers the metadata: config, step, history
    _check_config_json(path, meta["config"], fields)
    _check_model(path, meta["config"], model)
    history = meta["extra"].get("history")
    kept_metrics(path.parent / RUN_FILES["metrics"], meta["step"], history if isinstance(history, list) else None)
    return StoredRun(path, meta)


def _check_config_json(path: Path, stored: dict[str, Any], fields: Sequence[str]) -> None:
    """``config.json`` beside the checkpoint (if there is one) describes the same run."""
    config_path = path.parent / RUN_FILES["config"]
    if not config_path.exists():
        return
    try:
        written = files.read_json(config_path)
    except files.InputError as err:
        raise checkpoint.CheckpointError(f"cannot resume: {err}") from None
    if not isinstance(written, dict):
        raise checkpoint.CheckpointError(f"{config_path}: is not a JSON object; cannot resume")
    # Not epochs: an extension (--epochs) writes the checkpoint first, then config.json, and a run
    # killed between the two is still this folder's run; the other fields tell another run's checkpoint.
    fields = [f for f in fields if f != "epochs" and f in written and f in stored]
    differ = [f for f in fields if comparable(f, written[f]) != comparable(f, stored[f])]
    if differ:
        f = differ[0]
        raise checkpoint.CheckpointError(
            f"{path}: its config differs from {config_path} ({f}: checkpoint {stored[f]!r}, config.json "
            f"{written[f]!r}); the checkpoint is not this folder's run, refusing to resume"
        )


def comparable(field: str, value: Any) -> Any:
    """``value`` of the config field ``field`` as two configs are compared: a model spec by the
    file it names from the current directory (:func:`jaxbp.loading.anchored_spec`: a run records
    its model file absolute, runs of jaxbp before that recorded it as typed), anything else as it is."""
    return anchored_spec(value) if field == "model" and isinstance(value, str) else value


def _check_model(path: Path, stored: dict[str, Any], model: str | None) -> None:
    """A user module the run names is imported only when ``model`` (the user, now) names it too:
    the same file (a path relative to the current directory or absolute) and function."""
    spec = stored.get("model", "cnn")
    if not isinstance(spec, str):
        raise checkpoint.CheckpointError(f"{path}: its config's model is {spec!r}, not a model name or spec")
    if spec in MODELS or (model is not None and comparable("model", model) == comparable("model", spec)):
        return
    raise checkpoint.CheckpointError(
        f"{path}: the run's model is the user module {spec!r}; a resume imports a module only when you name it "
        f"yourself: add --model {spec} if you trust that file"
    )


def resume_command(folder: str | os.PathLike, model: str, *, epochs: int | None = None) -> str:
    """The command line that continues the run in ``folder`` (shell-quoted): ``jaxbp train --resume
    FOLDER``, with ``--model SPEC`` for a user's model (a resume imports only a module the user
    names) and ``--epochs N`` where it extends the run. The folder is made absolute and a run
    records its model file absolute, so the command works from any directory."""
    words = ["jaxbp", "train", "--resume", os.path.abspath(folder)]
    if model not in MODELS:
        words += ["--model", model]
    if epochs is not None:
        words += ["--epochs", str(epochs)]
    return shlex.join(words)


def restore(stored: StoredRun, fresh: TrainState, *, steps_per_epoch: int, epochs: int) -> tuple[TrainState, Progress]:
    """The state and progress of ``stored`` for a run whose freshly initialised state is
    ``fresh`` (the shapes and dtypes every array must have) and which takes ``epochs`` epochs
    of ``steps_per_epoch`` steps. Refuses a position the run cannot reach and a non-finite
    array (:class:`jaxbp.checkpoint.CheckpointError` naming the file)."""
    path = stored.checkpoint
    progress = Progress.from_checkpoint(path, stored.meta, steps_per_epoch=steps_per_epoch, epochs=epochs)
    loaded, _ = checkpoint.load(path, like=fresh._asdict())
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(loaded)[0]:
        if isinstance(leaf, (np.ndarray, np.generic)) and np.issubdtype(leaf.dtype, np.inexact):
            if not np.isfinite(leaf).all():
                raise checkpoint.CheckpointError(
                    f"{path}: state{jax.tree_util.keystr(key_path)} holds NaN or infinite values; "
                    "refusing to resume from it"
                )
    return TrainState(**loaded), progress
