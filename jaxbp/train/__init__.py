"""Training: jit-compiled steps, manual and autodiff gradients side by side.

:func:`fit` trains a model of :mod:`jaxbp.models` on a data set of :mod:`jaxbp.data`
from a :class:`TrainConfig` and writes ``config.json``, ``metrics.jsonl``,
``summary.json``, ``training.png`` and ``checkpoint.npz`` into its run folder.

Gradients (``grad``): ``"manual"`` runs the model on :mod:`jaxbp.manual` (every
backward hand-derived), ``"autodiff"`` on :mod:`jaxbp.autodiff` (``jax.grad``
derives them); both go through ``jax.value_and_grad``, only the ops differ.
``"compare"`` computes both gradients from the same parameters in the same step,
updates with the manual one and checks them against each other, per parameter: a
float32 guard every step (``max|g_manual - g_autodiff|`` against ``max(max|g_autodiff|,
10 % of the model's largest entry)``, see :data:`AGREEMENT_FLOOR`, within
``compare_rtol``) and exact float64 audits of whole steps (at the first, every
``audit_every`` and on a guard failure, within ``audit_rtol``; :mod:`~jaxbp.train.audit`).
A failed audit stops the run with :class:`GradientMismatchError`.

Runs are deterministic (same config, same machine: bitwise the same metrics):
seeded initialisation, the batch order from ``data.batches(seed, epoch)``,
augmentation from ``np.random.default_rng((seed, epoch, batch))`` and dropout keys
``fold_in(key, step)``. SIGINT/SIGTERM finish the current step, write the
checkpoint and raise :class:`TrainingInterrupted`; ``resume=<run dir>`` continues
(mid-epoch too) to bitwise the same parameters and metrics as an uninterrupted run.

The package, one job per module:

* :mod:`~jaxbp.train.config`: :class:`TrainConfig`, its validation, resuming a config;
* :mod:`~jaxbp.train.steps`: the loss of a padded batch, the optimizer, the jitted steps;
* :mod:`~jaxbp.train.audit`: compare mode's float32 guard and float64 audits;
* :mod:`~jaxbp.train.state`: :class:`TrainState`, :class:`Progress`, the metrics :class:`Accumulator`;
* :mod:`~jaxbp.train.loop`: :func:`fit`, :func:`train_epoch`, :func:`evaluate`;
* :mod:`~jaxbp.train.runfolder`: :class:`RunFolder`, the one writer of a run's files;
* :mod:`~jaxbp.train.display`, :mod:`~jaxbp.train.errors`: the progress display and signals;
  how a run ends.
"""

from jaxbp.data import augment_batch, batch_augmenter
from jaxbp.train.config import (
    AUGMENTS,
    DTYPES,
    GRADS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TRAJECTORY_FIELDS,
    ConfigError,
    TrainConfig,
    config_differences,
    resume_config,
)
from jaxbp.train.errors import (
    GradientMismatchError,
    NonFiniteLossError,
    TrainError,
    TrainingInterrupted,
    TrainResult,
    UserCodeError,
)
from jaxbp.train.loop import evaluate, fit, train_epoch
from jaxbp.train.resume import resume_command
from jaxbp.train.runfolder import RunFolder, RunFolderError
from jaxbp.train.state import Accumulator, Progress, TrainState
from jaxbp.train.steps import AGREEMENT_FLOOR, TRACE_COUNTS, make_eval_step, make_optimizer, make_train_step

__all__ = [
    "AGREEMENT_FLOOR",
    "AUGMENTS",
    "DTYPES",
    "GRADS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "TRACE_COUNTS",
    "TRAJECTORY_FIELDS",
    "Accumulator",
    "ConfigError",
    "GradientMismatchError",
    "NonFiniteLossError",
    "Progress",
    "RunFolder",
    "RunFolderError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "UserCodeError",
    "augment_batch",
    "batch_augmenter",
    "config_differences",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "resume_command",
    "resume_config",
    "train_epoch",
]
