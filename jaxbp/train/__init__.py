"""Training: jit-compiled steps, manual and autodiff gradients side by side.

:func:`~jaxbp.train.loop.fit` trains a model of :mod:`jaxbp.models` on a data set of
:mod:`jaxbp.data` from a :class:`~jaxbp.train.config.TrainConfig` and writes ``config.json``,
``metrics.jsonl``, ``summary.json``, ``training.png`` and ``checkpoint.npz`` into its run folder.

Gradients (``grad``): ``"manual"`` runs the model on :mod:`jaxbp.manual` (every
backward hand-derived), ``"autodiff"`` on :mod:`jaxbp.autodiff` (``jax.grad``
derives them); both go through ``jax.value_and_grad``, only the ops differ.
``"compare"`` computes both gradients from the same parameters in the same step,
updates with the manual one and checks them against each other, per parameter: a
float32 guard every step (``max|g_manual - g_autodiff|`` against ``max(max|g_autodiff|,
10 % of the model's largest entry)``, see :data:`~jaxbp.train.steps.AGREEMENT_FLOOR`, within
``compare_rtol``) and exact float64 audits of whole steps (at the first, every
``audit_every`` and on a guard failure, within ``audit_rtol``; :mod:`~jaxbp.train.audit`).
A failed audit stops the run with :class:`~jaxbp.train.errors.GradientMismatchError`.

Runs are deterministic (same config, same machine: bitwise the same metrics):
seeded initialisation, the batch order from ``data.batches(seed, epoch)``,
augmentation from ``np.random.default_rng((seed, epoch, batch))`` and dropout keys
``fold_in(key, step)``. SIGINT/SIGTERM finish the current step, write the
checkpoint and raise :class:`~jaxbp.train.errors.TrainingInterrupted`; ``resume=<run dir>``
continues (mid-epoch too) to bitwise the same parameters and metrics as an uninterrupted run.

The package, one job per module:

* :mod:`~jaxbp.train.config`: :class:`~jaxbp.train.config.TrainConfig`, its validation, resuming a config;
* :mod:`~jaxbp.train.steps`: the loss of a padded batch, the optimizer, the jitted steps;
* :mod:`~jaxbp.train.audit`: compare mode's float32 guard and float64 audits;
* :mod:`~jaxbp.train.state`: :class:`~jaxbp.train.state.TrainState`,
  :class:`~jaxbp.train.state.Progress`, the metrics :class:`~jaxbp.train.state.Accumulator`;
* :mod:`~jaxbp.train.loop`: :func:`~jaxbp.train.loop.fit`, :func:`~jaxbp.train.loop.train_epoch`,
  :func:`~jaxbp.train.loop.evaluate`;
* :mod:`~jaxbp.train.run`: :class:`~jaxbp.train.run.Run`, what stays fixed while a run trains;
* :mod:`~jaxbp.train.start`: where a run starts (fresh, resumed, extended) and its folder;
* :mod:`~jaxbp.train.resume`: reading a stored run to resume;
* :mod:`~jaxbp.train.summary`: the run's ``summary.json``;
* :mod:`~jaxbp.train.runfolder`: :class:`~jaxbp.train.runfolder.RunFolder`, the one writer of a run's files;
* :mod:`~jaxbp.train.display`, :mod:`~jaxbp.train.errors`: the progress display and signals;
  how a run ends.

The names below are imported from their modules on first use (PEP 562), so that
``from jaxbp.train.config import TrainConfig`` (what ``jaxbp train --help`` reads) does
not import JAX.
"""

from __future__ import annotations

from jaxbp.lazy import lazy_exports

# the public names, by the module of jaxbp.train that defines them
_NAMES = {
    "config": ("TRAJECTORY_FIELDS", "ConfigError", "TrainConfig", "config_differences", "resume_config"),
    "errors": (
        "GradientMismatchError",
        "NonFiniteLossError",
        "TrainError",
        "TrainingInterrupted",
        "TrainResult",
        "UserCodeError",
    ),
    "loop": ("evaluate", "fit", "train_epoch"),
    "resume": ("resume_command",),
    "runfolder": ("RunFolder", "RunFolderError"),
    "state": ("Accumulator", "Progress", "TrainState"),
    "steps": ("AGREEMENT_FLOOR", "TRACE_COUNTS", "make_eval_step", "make_optimizer", "make_train_step"),
}
_exports = lazy_exports(__name__, globals(), _NAMES)
__all__ = sorted(name for names in _NAMES.values() for name in names)
__getattr__, __dir__ = _exports.getattr, _exports.dir
