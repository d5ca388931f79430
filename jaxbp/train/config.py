"""The configuration of a training run: :class:`TrainConfig`, its validation, and resuming.

Validation raises :class:`ConfigError`, a ``ValueError`` that carries the name of the
bad field, so that the command line can name the flag the user typed (``--batch-size``)
where the library names the field (``TrainConfig.batch_size``).

The choices of each field come from :mod:`jaxbp.choices`. At import this module reads
nothing else of jaxbp, so ``jaxbp train --help`` shows :class:`TrainConfig`'s defaults
without importing JAX; the modules that validate a model name, a seed or a checkpoint
(which import JAX) are imported by the functions that use them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaxbp.choices import AUGMENTS, GRADS, INITS, MATMUL_PRECISIONS, OPTIMIZERS, SCHEDULES, TRAIN_DTYPES
from jaxbp.loading import anchored_spec

__all__ = [
    "TRAJECTORY_FIELDS",
    "ConfigError",
    "TrainConfig",
    "check_resume_epochs",
    "config_differences",
    "resume_config",
]

# Fields a resumed run must share with its checkpoint: they decide the trajectory (epochs may grow:
# a resume with more extends the run, see check_resume_epochs).
TRAJECTORY_FIELDS = (
    "dataset", "model", "dropout", "optimizer", "learning_rate", "momentum", "schedule",
    "weight_decay", "epochs", "batch_size", "seed", "drop_last", "augment", "dtype", "label_smoothing",
    "init", "shift", "val_split",
)  # fmt: skip

# Fields that describe where and how far this invocation runs, not the run itself: a resumed
# run does not inherit them from its checkpoint (it writes where it is resumed from, and runs
# to the end unless told to stop again).
INVOCATION_FIELDS = ("out", "resume", "max_steps")


class ConfigError(ValueError):
    """A field of :class:`TrainConfig` has a bad value; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"TrainConfig.{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; ``config.json`` holds it, the CLI flags map onto it."""

    dataset: str = "digits"
    model: str = "cnn"  # a name of choices.MODELS, or a user's MODULE:FUNCTION / path/to/file.py:FUNCTION
    init: str = "he"  # he | uniform: the weights' initialisation (see jaxbp.models)
    grad: str = "manual"  # manual | autodiff | compare
    optimizer: str = "adam"  # sgd | momentum | adam (adamw where weight_decay > 0)
    learning_rate: float = 3e-3
    momentum: float = 0.9  # for optimizer="momentum", in [0, 1)
    schedule: str = "cosine"  # constant | cosine (to 0 over all steps)
    weight_decay: float = 0.0  # decoupled, on weights only (not biases or batch-norm params)
    epochs: int = 15
    batch_size: int = 64
    seed: int = 0
    drop_last: bool = False
    dropout: float = 0.0  # before the last dense layer
    label_smoothing: float = 0.0  # train targets (1 - e) onehot + e / K; the test loss stays plain
    augment: str = "none"  # none | crop | flip | crop-flip (random shifts, horizontal flips)
    shift: int = 2  # crop: shift each image by up to this many pixels along each axis
    val_split: float = 0.0  # hold out this stratified fraction of the training rows for validation; 0: none
    data_dir: str | None = None
    out: str | None = None  # default: runs/<dataset>-<model>-<grad>, or the resumed run's folder
    resume: str | None = None  # a run folder or a checkpoint .npz to continue
    max_steps: int = 0  # stop (with a checkpoint) after this many steps in all; 0: no limit
    # Compare mode (see jaxbp.train.audit): the float32 guard of every step fails a parameter
    # whose max|g_manual - g_autodiff| exceeds compare_rtol (840 float32 ulps) times its scale,
    # max(max|g_autodiff|, AGREEMENT_FLOOR x the model's largest entry); measured rounding stays
    # under 100 ulps. The float64 audit recomputes a step's two gradients at the first step,
    # every audit_every steps (0: at the end of every epoch) and whenever the guard fails, and
    # requires the same measure within audit_rtol: float64 rounding is 2^-29 of float32's
    # (measured under 2e-14), so 1e-9 leaves a margin of 5e4 above it and stays 4e3 below the
    # smallest bugs seen (a layer norm whose backward leaves out its eps 1e-5: 4e-6 to 1.8e-5).
    compare_rtol: float = 1e-4
    audit_every: int = 0
    audit_rtol: float = 1e-9
    log_every: int = 10
    dtype: str = "float32"
    matmul_precision: str = "default"
    # Data parallel over this many devices ("all" or a count, as a string); None: one device
    # (all devices of a multi-process run). The batch size is global and must divide evenly.
    devices: str | None = None

    def validate(self) -> TrainConfig:
        """Return ``self`` or raise :class:`ConfigError` naming the bad field. Checks what can
        be checked without the data (the image size and the number of examples are checked
        by :func:`check_against_data`)."""
        from jaxbp import data, models

        choices = {
            "grad": GRADS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS,
            "dtype": TRAIN_DTYPES, "matmul_precision": MATMUL_PRECISIONS, "init": INITS,
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"is {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        try:
            models.check_model_name(self.model)
        except models.ModelError as err:
            raise ConfigError("model", f"is {self.model!r}: {err}") from None
        for name in ("epochs", "batch_size", "log_every", "shift"):
            _check_int(name, getattr(self, name), 1)
        _check_int("max_steps", self.max_steps, 0)
        _check_int("audit_every", self.audit_every, 0)
        _check_int("seed", self.seed, 0, data.MAX_SEED)
        _check_float("learning_rate", self.learning_rate, 0.0, math.inf, low_open=True)
        _check_float("momentum", self.momentum, 0.0, 1.0)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_float("dropout", self.dropout, 0.0, 1.0)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0)
        _check_float("val_split", self.val_split, 0.0, 1.0)
        _check_float("compare_rtol", self.compare_rtol, 0.0, math.inf, low_open=True)
        _check_float("audit_rtol", self.audit_rtol, 0.0, math.inf, low_open=True)
        if self.devices is not None and not (
            str(self.devices) == "all" or (str(self.devices).isdigit() and int(self.devices) >= 1)
        ):
            raise ConfigError("devices", f"must be 'all' or a count >= 1, got {self.devices!r}")
        return self

    def check_against_data(self, n_train: int, input_shape: Sequence[int]) -> None:
        """Raise :class:`ConfigError` where the config cannot work on this data: a batch
        larger than the training set (it would be padded to a huge allocation), or a crop
        shift as large as the images."""
        if self.batch_size > n_train:
            raise ConfigError(
                "batch_size", f"is {self.batch_size}, more than the {n_train} training examples of {self.dataset}"
            )
        h, w = input_shape[0], input_shape[1]
        if "crop" in self.augment and self.shift >= min(h, w):
            raise ConfigError("shift", f"is {self.shift}; it must be smaller than the {h}x{w} images of {self.dataset}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def anchored(self) -> TrainConfig:
        """This config with the paths a run records made absolute (from the current directory):
        the file of a ``path/to/file.py:FUNCTION`` model and ``data_dir``. :func:`fit` records
        this, so a run resumes from any directory (``out`` and ``resume`` stay as given: they
        say where this invocation writes and reads)."""
        data_dir = None if self.data_dir is None else os.path.abspath(os.path.expanduser(self.data_dir))
        return dataclasses.replace(self, model=anchored_spec(self.model), data_dir=data_dir)

    def default_out(self, dataset: str) -> str:
        """``runs/<dataset>-<model>-<grad>``; a user's model spec is named by its module and
        function (``examples/custom_layer.py:make_model`` -> ``custom_layer.make_model``)."""
        from jaxbp import models

        return f"runs/{dataset}-{models.short_name(self.model)}-{self.grad}"


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(name, f"must be an integer in [{low}, {high}], got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    """``value`` finite and in ``[low, high)`` (``(low, high)`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    above = value > low if low_open else value >= low
    if not (above and value < high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g})" if math.isfinite(high) else None
        want = f"in {interval}" if interval else f"{'>' if low_open else '>='} {low:g}"
        raise ConfigError(name, f"must be {want}, got {value!r}")


def resume_config(run: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The config stored in a run's checkpoint, with ``resume`` set and ``overrides`` applied
    (what ``jaxbp train --resume DIR`` uses, so the flags need not be repeated). ``epochs``
    among the overrides must extend the run (:func:`check_resume_epochs` with ``given``).

    The stored ``out`` and ``max_steps`` are not inherited: a resumed run writes into the
    folder it is resumed from (wherever it has been moved or copied) unless ``out`` is given,
    and runs to the end unless ``max_steps`` is given."""
    from jaxbp import checkpoint
    from jaxbp.train.resume import read_stored_run

    # Checked before anything runs: a user module the run names is imported only if overrides name it too.
    path, meta = read_stored_run(run, model=overrides.get("model"), fields=TRAJECTORY_FIELDS)
    stored = meta["config"]
    if "epochs" in overrides and isinstance(stored.get("epochs"), int):  # given: it must extend the run
        _check_int("epochs", overrides["epochs"], 1)
        check_resume_epochs(overrides["epochs"], stored["epochs"], meta["epoch"], given=True)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(INVOCATION_FIELDS)
    values = {k: v for k, v in stored.items() if k in known}
    values.update(overrides)
    values["resume"] = str(run)
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise checkpoint.CheckpointError(f"{path}: the stored training config is malformed: {err}") from None


def check_resume_epochs(epochs: int, run_epochs: int, completed: int, *, given: bool = False) -> None:
    """Resuming a run of ``run_epochs`` epochs that has completed ``completed`` of them, to train
    ``epochs`` epochs in all: more than ``run_epochs`` extends the run, as many continues it, and
    fewer is a :class:`ConfigError`: a resume never shortens a run (``max_steps`` stops it
    earlier). ``given``: ``epochs`` was asked for explicitly, so it must also be more than
    ``completed`` (asking a completed run for the epochs it has is an error, not a no-op)."""
    if epochs <= completed and (given or epochs < run_epochs):
        raise ConfigError(
            "epochs", f"is {epochs}, but the run has completed {completed} of its {run_epochs} epochs already; "
            f"give more than {completed} to extend it"
        )  # fmt: skip
    if epochs < run_epochs:
        raise ConfigError(
            "epochs", f"is {epochs}, fewer than the run's {run_epochs} epochs: a resume extends a run but never "
            "shortens it (stop it earlier with --max-steps)"
        )  # fmt: skip


def config_differences(
    stored: dict[str, Any], config: TrainConfig, fields: Sequence[str] = TRAJECTORY_FIELDS
) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored value, config's value)}`` for the ``fields`` where a stored config
    dict (a checkpoint's or a summary's) differs from ``config``; a field newer than the
    stored dict counts as having had its default value. Two model specs naming the same file
    (one relative, as runs before jaxbp recorded them absolute, one absolute) do not differ."""
    from jaxbp.train.resume import comparable

    defaults = TrainConfig()
    pairs = {f: (stored.get(f, getattr(defaults, f)), getattr(config, f)) for f in fields}
    return {f: pair for f, pair in pairs.items() if comparable(f, pair[0]) != comparable(f, pair[1])}
