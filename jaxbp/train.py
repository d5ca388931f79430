"""Training: jit-compiled steps, manual and autodiff gradients side by side.

:func:`fit` trains a model of :mod:`jaxbp.models` on a data set of :mod:`jaxbp.data`
from a :class:`TrainConfig` and writes ``config.json``, ``metrics.jsonl``,
``summary.json``, ``training.png`` and ``checkpoint.npz`` into ``config.out``.

Gradients (``grad``): ``"manual"`` runs the model on :mod:`jaxbp.manual` (every
backward hand-derived), ``"autodiff"`` on :mod:`jaxbp.autodiff` (``jax.grad``
derives them); both go through ``jax.value_and_grad``, only the ops differ.
``"compare"`` computes both gradients from the same parameters in the same step,
updates with the manual one and checks them against each other, per parameter:
``max|g_manual - g_autodiff| / max|g_autodiff|`` must stay within ``compare_rtol``,
or the run stops with :class:`GradientMismatchError`. (Gradients below 1 % of the
model's largest are measured against that 1 %: see :data:`AGREEMENT_FLOOR`.)

The loss of a padded batch (``data.batches`` pads the last one to a fixed shape)
counts only the real rows, and still goes through the hand-derived fused
softmax-cross-entropy backward: padded rows get all-zero target rows, so they add
nothing to the loss or to ``dlogits = (p sum_c y_c - y)/N``, and the batch mean is
rescaled by ``N / n_valid``::

    loss = softmax_cross_entropy(logits, onehot(y) * valid[:, None]) * (N / n_valid)
         = (1 / n_valid) * sum over the valid rows of -log p[y]

Batch norm still computes its batch statistics over all N rows (the padded rows
repeat real ones), but its running statistics count only the real rows.

Runs are deterministic (same config, same machine: bitwise the same metrics):
seeded initialisation, the batch order from ``data.batches(seed, epoch)``,
augmentation from ``np.random.default_rng((seed, epoch, batch))`` and dropout keys
``fold_in(key, step)``. SIGINT/SIGTERM finish the current step, write the
checkpoint and raise :class:`TrainingInterrupted`; ``resume=<run dir>`` continues
(mid-epoch too) to bitwise the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import autodiff, checkpoint, data, manual, models, parallel

__all__ = [
    "TRACE_COUNTS",
    "GradientMismatchError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainingInterrupted",
    "fit",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "resume_config",
]

GRADS = ("manual", "autodiff", "compare")
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")
AUGMENTS = ("none", "crop", "flip", "crop-flip")
DTYPES = ("float32", "float64")
PRECISIONS = ("default", "high", "highest")

# Fields a resumed run must share with its checkpoint: they decide the trajectory.
TRAJECTORY_FIELDS = (
    "dataset", "model", "dropout", "optimizer", "learning_rate", "momentum", "schedule",
    "weight_decay", "epochs", "batch_size", "seed", "drop_last", "augment", "dtype", "label_smoothing",
    "init", "shift",
)  # fmt: skip

# How often each step function was traced (a Python side effect that runs only while
# tracing): the tests assert one trace per run, not one per batch.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; ``config.json`` holds it, the CLI flags map onto it."""

    dataset: str = "digits"
    model: str = "cnn"
    init: str = "he"  # he | uniform: the weights' initialisation (see jaxbp.models)
    grad: str = "manual"  # manual | autodiff | compare
    optimizer: str = "adam"  # sgd | momentum | adam (adamw where weight_decay > 0)
    learning_rate: float = 3e-3
    momentum: float = 0.9  # for optimizer="momentum"
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
    data_dir: str | None = None
    out: str | None = None  # default: runs/<dataset>-<model>-<grad>, or the resumed run's folder
    resume: str | None = None  # a run folder or a checkpoint .npz to continue
    max_steps: int = 0  # stop (with a checkpoint) after this many steps in all; 0: no limit
    compare_rtol: float = 1e-4
    log_every: int = 10
    dtype: str = "float32"
    matmul_precision: str = "default"
    # Data parallel over this many devices ("all" or a count, as a string); None: one device
    # (all devices of a multi-process run). The batch size is global and must divide evenly.
    devices: str | None = None

    def validate(self) -> TrainConfig:
        """Return ``self`` or raise ``ValueError`` naming the bad field."""
        choices = {
            "grad": GRADS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS,
            "dtype": DTYPES, "matmul_precision": PRECISIONS, "model": models.MODELS, "init": models.INITS,
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        positive = {
            "epochs": self.epochs, "batch_size": self.batch_size, "log_every": self.log_every, "shift": self.shift,
        }  # fmt: skip
        for name, value in positive.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TrainConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.weight_decay < 0 or self.compare_rtol <= 0 or self.max_steps < 0:
            raise ValueError("TrainConfig: weight_decay and max_steps must be >= 0, compare_rtol > 0")
        if self.devices is not None and not (
            str(self.devices) == "all" or (str(self.devices).isdigit() and int(self.devices) >= 1)
        ):
            raise ValueError(f"TrainConfig.devices must be 'all' or a count >= 1, got {self.devices!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ errors


class TrainError(RuntimeError):
    """A run that stopped because training went wrong (the message says where)."""


class GradientMismatchError(TrainError):
    """Compare mode: a manual gradient left ``compare_rtol`` of the autodiff one."""


class NonFiniteLossError(TrainError):
    """The loss or a gradient became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM: the checkpoint is written; the message says how to resume."""

    def __init__(self, message: str, checkpoint_path: Path | None = None):
        super().__init__(message)
        self.message = message
        self.checkpoint_path = checkpoint_path

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``history`` holds one dict per epoch."""

    config: TrainConfig
    test_accuracy: float
    test_loss: float
    history: list[dict[str, Any]]
    steps: int
    epochs_completed: int
    wall_time_s: float
    compile_time_s: float
    examples_per_s: float
    out_dir: Path
    paths: dict[str, Path]
    worst_agreement: dict[str, Any] | None
    status: str
    params: Any = field(repr=False, default=None)
    model_state: Any = field(repr=False, default=None)


# ------------------------------------------------------------------ steps


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer of ``config``; the cosine schedule decays to 0 over ``total_steps``."""
    lr: Any = config.learning_rate
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(total_steps, 1))

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim > 1, params)

    if config.optimizer == "adam":
        if config.weight_decay > 0:
            return optax.adamw(lr, weight_decay=config.weight_decay, mask=decay_mask)
        return optax.adam(lr)
    momentum = config.momentum if config.optimizer == "momentum" else None
    sgd = optax.sgd(lr, momentum=momentum)
    if config.weight_decay > 0:
        return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask), sgd)
    return sgd


def _masked_loss(ops, logits, labels, n_valid, label_smoothing: float = 0.0):
    """Mean cross-entropy over the first ``n_valid`` rows, through ``ops.softmax_cross_entropy``;
    with ``label_smoothing`` e the targets are ``(1 - e) onehot + e / K`` (still summing to 1)."""
    n, k = logits.shape
    valid = jnp.arange(n) < n_valid
    targets = jax.nn.one_hot(labels, k, dtype=logits.dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / k
    targets = targets * valid[:, None].astype(logits.dtype)
    loss = ops.softmax_cross_entropy(logits, targets) * (n / n_valid.astype(logits.dtype))
    correct = jnp.sum(jnp.where(valid, jnp.argmax(logits, axis=-1) == labels, False))
    return loss, correct, valid


# A parameter whose gradient is below this fraction of the model's largest gradient entry is
# measured against that floor: a conv bias right before batch norm has an exact gradient of 0
# (batch norm removes any per-channel shift), so both computed gradients are float32 noise
# (~1e-8) and their ratio says nothing.
AGREEMENT_FLOOR = 1e-2


def _agreement(g_manual, g_autodiff):
    """Per parameter: ``max|g_m - g_a| / max(max|g_a|, AGREEMENT_FLOOR * max over the model |g_a|)``
    and the cosine similarity (1 for parameters under the floor); trees like the grads."""
    scales = jax.tree.map(lambda a: jnp.max(jnp.abs(a)), g_autodiff)
    floor = AGREEMENT_FLOOR * jnp.max(jnp.stack(jax.tree.leaves(scales)))

    def rel(m, a, scale):
        err, den = jnp.max(jnp.abs(m - a)), jnp.maximum(scale, floor)
        return jnp.where(den > 0, err / jnp.where(den > 0, den, 1), jnp.where(err > 0, jnp.inf, 0.0))

    def cos(m, a, scale):
        nm, na = jnp.linalg.norm(m), jnp.linalg.norm(a)
        c = jnp.vdot(m, a) / jnp.where(nm * na > 0, nm * na, 1)
        return jnp.where((scale < floor) | ((nm == 0) & (na == 0)), 1.0, c)

    return jax.tree.map(rel, g_manual, g_autodiff, scales), jax.tree.map(cos, g_manual, g_autodiff, scales)


def make_train_step(
    model: models.Model,
    optimizer: optax.GradientTransformation,
    *,
    grad: str = "manual",
    ops=None,
    label_smoothing: float = 0.0,
) -> Callable:
    """One jitted step ``(params, opt_state, model_state, xb, yb, n_valid, key) ->
    (params, opt_state, model_state, metrics)``.

    ``ops`` replaces :mod:`jaxbp.manual` as the namespace under test ("manual" and
    "compare"); the tests inject a deliberately wrong backward this way. ``metrics``
    holds ``loss``, ``correct`` and, in compare mode, ``loss_autodiff``, ``rel_err``
    and ``cos`` (trees like the params).
    """
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    main_ops = autodiff if grad == "autodiff" else (ops or manual)

    def loss_fn(params, model_state, xb, yb, n_valid, key, ops):
        valid = jnp.arange(xb.shape[0]) < n_valid
        logits, new_state = model.apply(params, xb, ops=ops, train=True, rng=key, state=model_state, mask=valid)
        loss, correct, _ = _masked_loss(ops, logits, yb, n_valid, label_smoothing)
        return loss, (new_state, correct)

    def step(params, opt_state, model_state, xb, yb, n_valid, key):
        TRACE_COUNTS[f"train-{grad}"] += 1
        vg = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (new_state, correct)), grads = vg(params, model_state, xb, yb, n_valid, key, main_ops)
        # ReLU maps NaN to 0, so a NaN inside the network need not reach the loss: check the grads too.
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        metrics = {"loss": loss, "correct": correct, "grads_finite": finite}
        if grad == "compare":
            (loss_a, _), grads_a = vg(params, model_state, xb, yb, n_valid, key, autodiff)
            metrics["loss_autodiff"] = loss_a
            metrics["rel_err"], metrics["cos"] = _agreement(grads, grads_a)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, new_state, metrics

    return jax.jit(step)


def make_eval_step(model: models.Model, *, ops=None) -> Callable:
    """Jitted ``(params, model_state, xb, yb, n_valid) -> (loss_sum, correct)`` over the valid rows."""
    ops = ops or manual

    def step(params, model_state, xb, yb, n_valid):
        TRACE_COUNTS["eval"] += 1
        logits, _ = model.apply(params, xb, ops=ops, train=False, state=model_state)
        loss, correct, _ = _masked_loss(ops, logits, yb, n_valid)
        return loss * n_valid.astype(loss.dtype), correct

    return jax.jit(step)


def _compiled(key: tuple, num_classes: int, total_steps: int, ops) -> tuple[models.Model, Callable, Callable, Any]:
    """Model, train step, eval step and optimizer for a config, cached (reruns in one process,
    as in the tests and experiments, reuse the compiled steps) unless ``ops`` is an injected,
    unhashable namespace."""
    try:
        hash(ops)
    except TypeError:
        return _build(key, num_classes, total_steps, ops)
    return _build_cached(key, num_classes, total_steps, ops)


def _build(key: tuple, num_classes: int, total_steps: int, ops) -> tuple[models.Model, Callable, Callable, Any]:
    config = TrainConfig(**dict(key))
    model = models.get_model(config.model, num_classes, dropout=config.dropout, init=config.init)
    optimizer = make_optimizer(config, total_steps)
    train_ops = None if config.grad == "autodiff" else ops
    eval_ops = autodiff if config.grad == "autodiff" else (ops or manual)
    return (
        model,
        make_train_step(model, optimizer, grad=config.grad, ops=train_ops, label_smoothing=config.label_smoothing),
        make_eval_step(model, ops=eval_ops),
        optimizer,
    )


_build_cached = functools.lru_cache(maxsize=8)(_build)


def _init_state(model: models.Model, optimizer, input_shape: tuple, dtype: str, seed: int) -> dict[str, Any]:
    """``{"params", "opt_state", "model_state", "rng"}`` of a fresh run. Parameters come
    from NumPy (seeded), the optimizer state from one small jitted ``optimizer.init``."""
    _, params, model_state = model.init(np.random.default_rng(seed), input_shape)
    params, model_state = jax.tree.map(lambda p: jnp.asarray(p, dtype), (params, model_state))
    opt_init = _jitted_opt_init(optimizer)
    return {"params": params, "opt_state": opt_init(params), "model_state": model_state, "rng": jax.random.key(seed)}


@functools.lru_cache(maxsize=8)
def _jitted_opt_init(optimizer) -> Callable:
    return jax.jit(optimizer.init)


def _step_key(config: TrainConfig) -> tuple:
    """The config fields the compiled steps depend on."""
    fields = ("model", "dropout", "grad", "optimizer", "learning_rate", "momentum", "schedule", "weight_decay")
    fields += ("label_smoothing", "init")
    return tuple((f, getattr(config, f)) for f in fields)


# ------------------------------------------------------------------ helpers


def augment_batch(x: np.ndarray, mode: str, rng: np.random.Generator, fill: float, pad: int = 2) -> np.ndarray:
    """Random shifts of up to ``pad`` pixels (``crop``: pad with ``fill``, crop back) and/or
    horizontal flips with probability 1/2 (``flip``), per image, in numpy."""
    if mode == "none":
        return x
    n, h, w, _ = x.shape
    if "crop" in mode:
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
        oy = rng.integers(0, 2 * pad + 1, size=n)
        ox = rng.integers(0, 2 * pad + 1, size=n)
        rows = (oy[:, None] + np.arange(h))[:, :, None]
        cols = (ox[:, None] + np.arange(w))[:, None, :]
        x = padded[np.arange(n)[:, None, None], rows, cols]
    if "flip" in mode:
        flip = rng.random(n) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return np.ascontiguousarray(x, dtype=np.float32)


def batch_augmenter(config: TrainConfig, ds: data.Dataset) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """``augment(x, epoch, batch_index)``: ``config``'s augmentation of one batch, its draws
    seeded by ``(seed, epoch, batch_index)``, so a resumed run (or a twin outside jaxbp that
    uses this) sees the same shifts and flips; shifted-in pixels are blank (0 before
    normalisation)."""
    fill = float((0.0 - ds.mean) / ds.std)

    def augment(x: np.ndarray, epoch: int, batch_index: int) -> np.ndarray:
        rng = np.random.default_rng((config.seed, epoch, batch_index))
        return augment_batch(x, config.augment, rng, fill, config.shift)

    return augment


def _named(tree) -> dict[str, Any]:
    """``{"conv1.w": leaf, ...}`` for a nested dict tree."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[".".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return out


class _StopSignal:
    """Install SIGINT/SIGTERM handlers that set a flag (a second signal interrupts at once)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class _Logger:
    """metrics.jsonl plus the progress display: tqdm on a TTY, log lines otherwise, a callback, or nothing.
    ``path`` None (the processes other than 0 of a multi-process run) writes no file."""

    def __init__(self, path: Path | None, progress, total_steps: int, initial: int, desc: str):
        self.file = None if path is None else open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.callback = progress if callable(progress) else None
        show = progress is None or progress is True
        self.bar = None
        self.lines = False
        if show and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        elif show:
            self.lines = True

    def record(self, rec: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.callback:
            self.callback(rec)
        if self.lines:
            print(_format(rec), file=sys.stderr, flush=True)
        elif self.bar is not None and rec["kind"] == "eval":
            self.bar.write(_format(rec))

    def advance(self, n: int, rec: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if rec is not None:
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['accuracy']:.3f}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.bar is not None:
            self.bar.close()


def _format(rec: dict[str, Any]) -> str:
    if rec["kind"] == "eval":
        return (
            f"epoch {rec['epoch']:3d}  step {rec['step']:6d}  train loss {rec['train_loss']:.4f}  "
            f"train acc {rec['train_accuracy']:.4f}  test loss {rec['test_loss']:.4f}  "
            f"test acc {rec['test_accuracy']:.4f}  {rec['examples_per_s']:.0f} ex/s"
        )
    line = (
        f"epoch {rec['epoch']:3d}  step {rec['step']:6d}  loss {rec['loss']:.4f}  "
        f"acc {rec['accuracy']:.4f}  {rec['examples_per_s']:.0f} ex/s"
    )
    if "grad_max_rel_err" in rec:
        line += f"  grad rel err {rec['grad_max_rel_err']:.2e} ({rec['grad_worst_param']})"
    return line


def resume_config(run: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The config stored in a run's checkpoint, with ``resume`` set and ``overrides`` applied
    (what ``jaxbp train --resume DIR`` uses, so the flags need not be repeated)."""
    path = checkpoint.latest(run)
    if path is None:
        raise checkpoint.CheckpointError(
            f"{run}: no checkpoint to resume from (looked for {checkpoint.CHECKPOINT_NAME})"
        )
    _, meta = checkpoint.load(path)
    stored = meta.get("config")
    if not isinstance(stored, dict):
        raise checkpoint.CheckpointError(f"{path}: the checkpoint holds no training config")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    values.update(overrides)
    values["resume"] = str(run)
    return TrainConfig(**values)


def config_differences(
    stored: dict[str, Any], config: TrainConfig, fields: Sequence[str] = TRAJECTORY_FIELDS
) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored value, config's value)}`` for the ``fields`` where a stored config
    dict (a checkpoint's or a summary's) differs from ``config``; a field newer than the
    stored dict counts as having had its default value."""
    defaults = TrainConfig()
    pairs = {f: (stored.get(f, getattr(defaults, f)), getattr(config, f)) for f in fields}
    return {f: pair for f, pair in pairs.items() if pair[0] != pair[1]}


def _check_resumable(config: TrainConfig, path: Path, meta: dict[str, Any]) -> None:
    diffs = config_differences(meta.get("config") or {}, config)
    if diffs:
        raise checkpoint.CheckpointError(
            f"{path}: cannot resume, the checkpoint was written by a different run configuration ("
            + "; ".join(f"{f}: checkpoint {old!r}, this run {new!r}" for f, (old, new) in diffs.items())
            + ")"
        )


# ------------------------------------------------------------------ fit


def fit(config: TrainConfig, *, progress: Any = None, ops=None) -> TrainResult:
    """Train ``config`` and return a :class:`TrainResult`.

    ``progress``: ``None`` shows a tqdm bar when stderr is a terminal and log lines
    otherwise, ``False`` shows nothing, a callable receives every metrics record.
    ``ops`` replaces :mod:`jaxbp.manual` (for tests that inject a wrong backward).

    Raises ``ValueError`` for a bad config, ``data.DataError`` for missing or bad data,
    ``checkpoint.CheckpointError`` for a bad or mismatching checkpoint to resume,
    :class:`GradientMismatchError`, :class:`NonFiniteLossError` and
    :class:`TrainingInterrupted`.
    """
    config.validate()
    precision = None if config.matmul_precision == "default" else config.matmul_precision
    with contextlib.ExitStack() as stack:
        if config.dtype == "float64":
            stack.enter_context(jax.enable_x64(True))
        if precision:
            stack.enter_context(jax.default_matmul_precision(precision))
        return _fit(config, progress, ops)


def _fit(config: TrainConfig, progress, ops) -> TrainResult:
    t_start = time.perf_counter()
    dtype = jnp.dtype(config.dtype)
    # One data-parallel mesh (one device unless config.devices or several processes say more):
    # parameters replicated, every batch split by rows; the same jitted step runs over it.
    mesh = parallel.make_mesh(config.devices)
    parallel.check_batch_size(config.batch_size, mesh)
    primary = parallel.is_primary()  # only process 0 writes files and shows progress
    ds = data.load(config.dataset, config.data_dir, seed=config.seed)

    # ---- where the run lives and what it resumes
    resume_path = None
    if config.resume:
        resume_path = checkpoint.latest(config.resume)
        if resume_path is None:
            raise checkpoint.CheckpointError(
                f"{config.resume}: no checkpoint to resume from (looked for {checkpoint.CHECKPOINT_NAME})"
            )
    if config.out:
        out = Path(config.out)
    elif resume_path is not None:
        out = resume_path.parent
    else:
        out = Path("runs") / f"{ds.name}-{config.model}-{config.grad}"
    if primary:
        out.mkdir(parents=True, exist_ok=True)
    paths = {
        "config": out / "config.json",
        "metrics": out / "metrics.jsonl",
        "summary": out / "summary.json",
        "plot": out / "training.png",
        "checkpoint": out / checkpoint.CHECKPOINT_NAME,
    }

    n_train = len(ds.x_train)
    steps_per_epoch = data.num_batches(n_train, config.batch_size, config.drop_last)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} with drop_last leaves no batch of {n_train} examples")
    total_steps = steps_per_epoch * config.epochs
    model, train_step, eval_step, optimizer = _compiled(_step_key(config), ds.num_classes, total_steps, ops)

    # ---- initial state, or the checkpoint's
    state = _init_state(model, optimizer, ds.input_shape, config.dtype, config.seed)
    step = epoch = batch_index = 0
    extra: dict[str, Any] = {"history": [], "worst": None, "epoch_sums": [0.0, 0, 0], "wall_time_s": 0.0}
    if resume_path is not None:  # every process reads the checkpoint on the host
        _, meta = checkpoint.load(resume_path)
        _check_resumable(config, resume_path, meta)
        state, meta = checkpoint.load(resume_path, like=state)
        step, epoch = int(meta["step"]), int(meta["epoch"])
        extra.update(meta.get("extra") or {})
        batch_index = int(extra.get("batch_index", 0))
        if primary:
            _restore_metrics(paths["metrics"], Path(resume_path).parent / "metrics.jsonl", step)
    elif primary:
        paths["metrics"].write_text("")
    if primary:
        paths["config"].write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    state = parallel.replicate(state, mesh)

    params, opt_state, model_state, run_key = state["params"], state["opt_state"], state["model_state"], state["rng"]
    history: list[dict[str, Any]] = list(extra["history"])
    worst: dict[str, Any] | None = extra["worst"]
    epoch_sums = list(extra["epoch_sums"])  # loss * n, correct, n over the epoch so far
    wall_before = float(extra["wall_time_s"])
    augment = batch_augmenter(config, ds)

    saved = [resume_path] if resume_path is not None else []  # this run's good checkpoints

    def save_checkpoint(epoch: int, batch_index: int) -> Path:
        # Every process fetches (a collective where a leaf is not replicated); process 0 writes.
        state = parallel.to_host({"params": params, "opt_state": opt_state, "model_state": model_state, "rng": run_key})
        ex = {
            "batch_index": batch_index, "history": history, "worst": worst, "epoch_sums": epoch_sums,
            "wall_time_s": wall_before + time.perf_counter() - t_start,
        }  # fmt: skip
        if not primary:
            saved.append(paths["checkpoint"])
            return saved[-1]
        saved.append(
            checkpoint.save(paths["checkpoint"], state, step=step, epoch=epoch, config=config.to_dict(), extra=ex)
        )
        return saved[-1]

    timing = {"compile_s": 0.0, "train_s": 0.0, "examples": 0}
    logger = _Logger(
        paths["metrics"] if primary else None, progress if primary else False, total_steps, step,
        f"{config.model}/{config.grad}",
    )  # fmt: skip
    # loss*n, correct, n, seconds, worst (rel, name, cos), loss_autodiff*n, n timed
    window = [0.0, 0, 0, 0.0, None, 0.0, 0]
    status = "completed"

    def finish(status: str, error: str | None = None) -> dict[str, Any]:
        summary = _summary(
            config, ds, model, status, error, history, worst, step, epoch, timing,
            wall_before + time.perf_counter() - t_start, paths, mesh,
        )  # fmt: skip
        if primary:
            paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    try:
        with _StopSignal() as stop:
            while epoch < config.epochs:
                t_epoch = time.perf_counter()
                epoch_train_s, epoch_examples = 0.0, 0
                batches = data.batches(
                    ds.x_train, ds.y_train, config.batch_size, seed=config.seed, epoch=epoch,
                    drop_last=config.drop_last, start_batch=batch_index,
                )  # fmt: skip
                for xb, yb, n_valid in batches:
                    xb = augment(xb, epoch, batch_index)
                    t0 = time.perf_counter()
                    # Host numpy for the scalars: jit replicates them over the mesh on every process.
                    new = train_step(
                        params, opt_state, model_state, *parallel.global_batch(mesh, np.asarray(xb, dtype), yb),
                        np.int32(n_valid), jax.random.fold_in(run_key, step),
                    )  # fmt: skip
                    m = parallel.to_host(new[3])
                    dt = time.perf_counter() - t0
                    loss = float(m["loss"])
                    if not (math.isfinite(loss) and m["grads_finite"]):
                        what = (
                            f"loss is {loss}"
                            if not math.isfinite(loss)
                            else f"gradients are not finite (loss {loss:.4g})"
                        )
                        raise NonFiniteLossError(
                            f"{what} at step {step + 1} (epoch {epoch + 1}, batch {batch_index + 1}); "
                            f"training stopped. The last good checkpoint is kept"
                            + (f": {saved[-1]}" if saved else " (this run wrote none yet)")
                            + ". Try a smaller learning rate."
                        )
                    params, opt_state, model_state = new[0], new[1], new[2]
                    step += 1
                    batch_index += 1
                    compiling = timing["compile_s"] == 0.0  # the first step of a process compiles
                    if compiling:
                        timing["compile_s"] = dt
                    else:
                        timing["train_s"] += dt
                        timing["examples"] += n_valid
                        epoch_train_s += dt
                        epoch_examples += n_valid
                    correct = int(m["correct"])
                    epoch_sums = [epoch_sums[0] + loss * n_valid, epoch_sums[1] + correct, epoch_sums[2] + n_valid]
                    window[0] += loss * n_valid
                    window[1] += correct
                    window[2] += n_valid
                    if not compiling:  # throughput leaves out the compiling step
                        window[3] += dt
                        window[6] += n_valid
                    if config.grad == "compare":
                        window[5] += float(m["loss_autodiff"]) * n_valid
                        worst, window[4] = _check_agreement(config, m, step, worst, window[4])
                    if step % config.log_every == 0 or batch_index == steps_per_epoch:
                        rec = {
                            "kind": "train", "step": step, "epoch": epoch + 1,
                            "loss": window[0] / window[2], "accuracy": window[1] / window[2],
                            "examples_per_s": window[6] / window[3] if window[3] > 0 else 0.0,
                        }  # fmt: skip
                        if config.grad == "compare":
                            rel, name, cos = window[4]
                            rec.update(
                                loss_autodiff=window[5] / window[2],
                                grad_max_rel_err=rel,
                                grad_worst_param=name,
                                grad_min_cos=cos,
                            )
                        logger.record(rec)
                        logger.advance(0, rec)
                        window = [0.0, 0, 0, 0.0, None, 0.0, 0]
                    logger.advance(1)
                    if stop.signum is not None or (config.max_steps and step >= config.max_steps):
                        break
                if stop.signum is not None or (
                    config.max_steps and step >= config.max_steps and batch_index < steps_per_epoch
                ):
                    path = save_checkpoint(epoch, batch_index)
                    if stop.signum is None:
                        status = "stopped"
                        break
                    finish("interrupted")
                    name = signal.Signals(stop.signum).name
                    raise TrainingInterrupted(
                        f"{name} received: stopped after step {step} (epoch {epoch + 1}, batch {batch_index}); "
                        f"checkpoint written to {path}. Resume with: jaxbp train --resume {out}",
                        path,
                    )
                # ---- end of epoch: evaluate, record, checkpoint
                test_loss, test_acc = _evaluate(eval_step, params, model_state, ds, dtype, mesh)
                n = max(epoch_sums[2], 1)
                rec = {
                    "kind": "eval", "step": step, "epoch": epoch + 1,
                    "train_loss": epoch_sums[0] / n, "train_accuracy": epoch_sums[1] / n,
                    "test_loss": test_loss, "test_accuracy": test_acc,
                    "epoch_time_s": time.perf_counter() - t_epoch,
                    "examples_per_s": epoch_examples / epoch_train_s if epoch_train_s > 0 else 0.0,
                }  # fmt: skip
                history.append(rec)
                logger.record(rec)
                epoch, batch_index, epoch_sums = epoch + 1, 0, [0.0, 0, 0]
                save_checkpoint(epoch, 0)
                if config.max_steps and step >= config.max_steps and epoch < config.epochs:
                    status = "stopped"
                    break
    except (GradientMismatchError, NonFiniteLossError) as err:
        finish("gradient_mismatch" if isinstance(err, GradientMismatchError) else "diverged", str(err))
        raise
    finally:
        logger.close()
    summary = finish(status)
    if primary:
        _plot(config, paths)
    return TrainResult(
        config=config,
        test_accuracy=summary["test_accuracy"] if history else float("nan"),
        test_loss=summary["test_loss"] if history else float("nan"),
        history=history,
        steps=step,
        epochs_completed=epoch,
        wall_time_s=summary["wall_time_s"],
        compile_time_s=timing["compile_s"],
        examples_per_s=summary["examples_per_s"],
        out_dir=out,
        paths=paths,
        worst_agreement=worst,
        status=status,
        params=params,
        model_state=model_state,
    )


def _check_agreement(config, m, step, worst, window_worst):
    """Fold this step's per-parameter agreement into the run's and the window's worst;
    raise :class:`GradientMismatchError` when a parameter leaves the tolerance."""
    rel, cos = _named(m["rel_err"]), _named(m["cos"])
    name = max(rel, key=lambda k: (not math.isfinite(float(rel[k])), float(rel[k])))
    r, c = float(rel[name]), min(float(v) for v in cos.values())
    if not r <= config.compare_rtol:  # NaN fails too
        table = "\n".join(
            f"  {k:12s} rel err {float(rel[k]):.3e}  cosine {float(cos[k]):.6f}"
            + ("   <-- outside tolerance" if not float(rel[k]) <= config.compare_rtol else "")
            for k in rel
        )
        raise GradientMismatchError(
            f"gradient mismatch at step {step}: parameter {name!r} has max|g_manual - g_autodiff| / "
            f"max|g_autodiff| = {r:.3e} > compare_rtol {config.compare_rtol:.1e} (cosine {float(cos[name]):.6f}).\n"
            f"Per parameter:\n{table}"
        )
    if worst is None or r > worst["max_rel_err"]:
        worst = {**(worst or {}), "max_rel_err": r, "param": name, "step": step}
    worst["min_cos"] = min(c, (worst or {}).get("min_cos", 1.0))
    if window_worst is None or r > window_worst[0]:
        window_worst = (r, name, min(c, window_worst[2]) if window_worst else c)
    else:
        window_worst = (window_worst[0], window_worst[1], min(c, window_worst[2]))
    return worst, window_worst


def _evaluate(eval_step, params, model_state, ds, dtype, mesh) -> tuple[float, float]:
    n = len(ds.x_test)
    d = mesh.devices.size
    bs = -(-min(1000, n) // d) * d  # a multiple of the device count (padded rows are masked)
    loss_sum, correct = 0.0, 0
    for xb, yb, n_valid in data.batches(ds.x_test, ds.y_test, bs, seed=0, epoch=0, shuffle=False):
        xb, yb = parallel.global_batch(mesh, np.asarray(xb, dtype), yb)
        ls, c = parallel.to_host(eval_step(params, model_state, xb, yb, np.int32(n_valid)))
        loss_sum += float(ls)
        correct += int(c)
    return loss_sum / n, correct / n


def _restore_metrics(dest: Path, source: Path, step: int) -> None:
    """Keep the records of the resumed run up to its checkpoint's step."""
    lines = []
    if source.exists():
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("step", 0) <= step:
                lines.append(line + "\n")
    dest.write_text("".join(lines), encoding="utf-8")


def _summary(
    config, ds, model, status, error, history, worst, step, epoch, timing, wall, paths, mesh
) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "status": status,
        "error": error,
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "epochs_completed": epoch,
        "steps": step,
        "wall_time_s": wall,
        "compile_time_s": timing["compile_s"],
        "examples_per_s": timing["examples"] / timing["train_s"] if timing["train_s"] > 0 else 0.0,
        "worst_agreement": worst,
        "compare_rtol": config.compare_rtol if config.grad == "compare" else None,
        "dataset": {
            "name": ds.name,
            "train": len(ds.x_train),
            "test": len(ds.x_test),
            "input_shape": list(ds.input_shape),
        },
        "flops_per_example": models.flops(model, ds.input_shape),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "num_devices": int(mesh.devices.size),
        "num_processes": jax.process_count(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # float32 rounding depends on them
        "history": history,
        "config": config.to_dict(),
        "paths": {k: str(v) for k, v in paths.items()},
    }


def _plot(config: TrainConfig, paths: dict[str, Path]) -> None:
    from jaxbp import plots

    label = "manual" if config.grad == "compare" else config.grad  # compare mode updates with the manual grads
    plots.plot_training(
        {label: paths["metrics"]}, paths["plot"], title=f"{config.dataset} / {config.model} / {config.grad}"
    )
