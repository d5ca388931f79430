"""``jaxbp train``: the flags of :class:`jaxbp.train.TrainConfig`, the run, and its one-paragraph report."""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys

from jaxbp.cli.common import error, nonnegative_int, positive_int

PROG = "jaxbp train"

# flag -> TrainConfig field, type, help: the one table between flags and fields (errors of a
# field are reported under its flag). Every flag defaults to None so that --resume can tell
# the flags given (they override the checkpoint's config) from the rest.
_TRAIN_FLAGS = {
    "--dataset": ("dataset", str, "the data set"),
    "--model": (
        "model",
        str,
        "a built-in model ({models}) or your own: MODULE:FUNCTION or path/to/file.py:FUNCTION, "
        "FUNCTION(num_classes) returning a jaxbp.models.serial model",
    ),
    "--init": ("init", str, "he (He normal; Glorot for the last dense) or uniform (U(+-1/sqrt(fan_in)))"),
    "--grad": (
        "grad",
        str,
        "manual (hand-derived), autodiff (jax.grad) or compare (both: a float32 guard every step, float64 audits)",
    ),
    "--optimizer": ("optimizer", str, "the optimizer"),
    "--lr": ("learning_rate", float, "learning rate (peak of the cosine schedule)"),
    "--momentum": ("momentum", float, "momentum of --optimizer momentum, in [0, 1)"),
    "--schedule": ("schedule", str, "the learning-rate schedule"),
    "--weight-decay": ("weight_decay", float, "decoupled weight decay on the weights"),
    "--epochs": (
        "epochs",
        int,
        "epochs; with --resume, more than the run's extend it (its metrics and summary record the extension; "
        "a cosine schedule is rebuilt to decay to 0 over the new total, so the learning rate rises again from "
        "where the old schedule ended; a constant one continues)",
    ),
    "--batch-size": ("batch_size", int, "batch size (at most the number of training examples)"),
    "--seed": ("seed", int, "seed of initialisation, shuffling, augmentation and dropout"),
    "--dropout": ("dropout", float, "dropout rate before the last dense layer"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing of the train targets"),
    "--augment": ("augment", str, "random shifts (crop) and horizontal flips (flip) of the train images"),
    "--shift": ("shift", int, "the most pixels --augment crop shifts an image by, along each axis"),
    "--val-split": ("val_split", float, "hold out this stratified fraction of the training split for validation"),
    "--data-dir": ("data_dir", str, "where to look for the data set first"),
    "--out": ("out", str, "output folder (default runs/<dataset>-<model>-<grad>; with --resume: that folder)"),
    "--resume": ("resume", str, "continue the run in this folder (or from this checkpoint .npz), writing there"),
    "--max-steps": ("max_steps", int, "stop with a checkpoint after this many steps in all (0: no limit)"),
    "--compare-rtol": (
        "compare_rtol",
        float,
        "tolerance of the float32 guard of --grad compare, every step: max|manual - autodiff| per parameter "
        "over max(its max|autodiff|, 10%% of the model's largest); a failure triggers a float64 audit",
    ),
    "--audit-every": (
        "audit_every",
        int,
        "--grad compare: recompute both gradients in float64 at the first step and every this many steps "
        "(0: at the end of every epoch)",
    ),
    "--audit-rtol": ("audit_rtol", float, "tolerance of the float64 audits of --grad compare (same measure)"),
    "--log-every": ("log_every", int, "log the train metrics every this many steps"),
    "--dtype": ("dtype", str, "the dtype of parameters and activations"),
    "--matmul-precision": ("matmul_precision", str, "jax.default_matmul_precision of the run"),
    "--devices": ("devices", str, "data parallel over N devices or all (default: one; all if several processes)"),
}
_FLAG_OF_FIELD = {field: flag for flag, (field, *_) in _TRAIN_FLAGS.items()}


def add_train(sub: argparse._SubParsersAction) -> None:
    from jaxbp.choices import (
        AUGMENTS,
        DATASETS,
        DEFAULT_COORDINATOR_TIMEOUT_S,
        GRADS,
        INITS,
        MATMUL_PRECISIONS,
        MODELS,
        OPTIMIZERS,
        SCHEDULES,
        TRAIN_DTYPES,
    )
    from jaxbp.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model (default: cnn on digits, manual gradients)",
        description="Train a model with hand-derived (manual) or autodiff gradients, or both (compare). "
        "Writes config.json, metrics.jsonl, summary.json, training.png and checkpoint.npz to --out, which must "
        "not hold another run (continue it with --resume, or replace it with --overwrite). "
        "Exit status: 0 done, 1 gradient mismatch, NaN loss or a --model that fails while training, 2 bad flags, "
        "data, checkpoint or output folder, 130 interrupted.",
    )
    choices = {"grad": GRADS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS, "init": INITS,
               "dtype": TRAIN_DTYPES, "matmul_precision": MATMUL_PRECISIONS, "dataset": DATASETS}  # fmt: skip
    defaults = TrainConfig()
    for flag, (name, type_, text) in _TRAIN_FLAGS.items():
        default = getattr(defaults, name)
        p.add_argument(flag, dest=name, type=type_, default=None, choices=choices.get(name),
                       metavar=None if name in choices else name.upper(),
                       help=(text if default is None else f"{text} (default: {default})").format(models=", ".join(MODELS)))  # fmt: skip
    p.add_argument("--drop-last", dest="drop_last", action=argparse.BooleanOptionalAction, default=None,
                   help=f"drop the last partial batch instead of padding it (default: {defaults.drop_last})")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (completely: its files are removed first)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    dist = p.add_argument_group(
        "several processes (hosts)",
        "jax.distributed: every process runs the same command with its own --process-id; process 0 writes the "
        "outputs. The flags default to JAXBP_COORDINATOR, JAXBP_NUM_PROCESSES and JAXBP_PROCESS_ID.",
    )
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    dist.add_argument("--num-processes", type=positive_int, metavar="N", help="number of processes")
    dist.add_argument("--process-id", type=nonnegative_int, metavar="I", help="this process, 0 to N-1")
    timeout = DEFAULT_COORDINATOR_TIMEOUT_S
    dist.add_argument("--coordinator-timeout", type=positive_int, default=timeout, metavar="SECONDS",
                      help=f"give up joining after this long (default: {timeout})")  # fmt: skip
    dist.add_argument("--cluster", action="store_true",
                      help="let jax.distributed detect the processes (SLURM, Open MPI, Cloud TPU pods)")  # fmt: skip
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from jaxbp import checkpoint, data, loading, parallel, train

    # Join the other processes before anything touches a JAX device.
    try:
        env = parallel.DistributedConfig.from_env()
        dist = dataclasses.replace(
            env, timeout_s=args.coordinator_timeout,
            **{k: v for k in ("coordinator", "num_processes", "process_id") if (v := getattr(args, k)) is not None},
        )  # fmt: skip
        if dist.enabled and dist.process_id == 0:  # XLA aborts process 0 if the others do not come in time
            print(f"jaxbp train: waiting up to {dist.timeout_s} s for the {dist.num_processes} processes to join "
                  f"at {dist.coordinator} (--coordinator-timeout)", file=sys.stderr)  # fmt: skip
        parallel.initialize(dist, auto=args.cluster)
    except (ValueError, parallel.CoordinatorUnreachable) as err:
        return error(err, PROG)
    except RuntimeError as err:  # XLA's client gave up, or JAX was initialised already
        return error(f"could not join the distributed run ({dist}): {err}", PROG)
    primary = parallel.is_primary()
    # A --model's host callback that raises: the error is reported once, in one line, not also logged by JAX.
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)

    given = {name: getattr(args, name) for name, *_ in _TRAIN_FLAGS.values()}
    given["drop_last"] = args.drop_last
    given = {k: v for k, v in given.items() if v is not None}
    try:
        if "resume" in given:  # the checkpoint's config, with the flags given on top
            config = train.resume_config(given.pop("resume"), **given)
        else:
            config = train.TrainConfig(**given)
        config.validate()
        # after_stop: this process exits after a stop, and a late signal must not break the exit
        show = False if args.quiet or not primary else None
        result = train.fit(config, progress=show, overwrite=args.overwrite, after_stop="ignore")
    except train.ConfigError as err:
        return error(f"{_FLAG_OF_FIELD.get(err.field, err.field)} {err.problem}", PROG)
    except (data.DataError, checkpoint.CheckpointError, ValueError) as err:
        return error(err, PROG)
    except (train.GradientMismatchError, train.NonFiniteLossError, train.UserCodeError) as err:
        print(f"jaxbp train: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except train.TrainingInterrupted as err:
        print(f"jaxbp train: {err}", file=sys.stderr)
        return 130
    except loading.UserCodeInterrupted as err:  # Ctrl-C in a --model module (one that loops at import)
        print(f"jaxbp train: {err}", file=sys.stderr)
        return 130
    if not primary:  # process 0 reports; the others only computed
        return 0
    _report(config, result)
    return 0


def _report(config, result) -> None:
    from jaxbp import train

    if result.status == "already_completed":
        print(f"{result.out_dir}: already completed {result.epochs_completed} of {config.epochs} epochs; "
              "nothing to do (pass --epochs N to extend)")  # fmt: skip
        return
    if result.status == "stopped":
        print(f"stopped after --max-steps {config.max_steps} (epoch {result.epochs_completed + 1}); "
              f"continue to the end with: {train.resume_command(result.out_dir, result.config.model)} "
              f"(or stop again with --max-steps N, N > {result.steps})")  # fmt: skip
    # A classifier's accuracies; a model that reconstructs its input has none (NaN): its losses.
    metric = "loss" if math.isnan(result.test_accuracy) else "accuracy"
    test, val = getattr(result, f"test_{metric}"), getattr(result, f"val_{metric}")
    if result.history and result.history[-1]["step"] == result.steps:
        evaluated = f"test {metric} {test:.4f} after {result.epochs_completed} epochs"
    else:
        evaluated = f"test {metric} {test:.4f} at step {result.steps} (epoch {result.epochs_completed + 1})"
    if val is not None:
        evaluated = f"validation {metric} {val:.4f}, {evaluated}"
    print(
        f"{evaluated} ({result.steps} steps, {config.grad} gradients); wall time {result.wall_time_s:.1f} s "
        f"(first step/compile {result.compile_time_s:.1f} s), {result.examples_per_s:.0f} examples/s"
    )
    if result.worst_agreement:
        w = result.worst_agreement
        print(f"worst gradient agreement: rel err {w['max_rel_err']:.2e} ({w['param']}, step {w['step']}), "
              f"min cosine {w['min_cos']:.7f}")  # fmt: skip
    print(f"outputs in {result.out_dir}/: " + ", ".join(p.name for p in result.paths.values() if p.exists()))
    figure = result.out_dir.parent / f"{result.out_dir.resolve().name}.png"  # beside the run, not in it
    plot = shlex.join(["jaxbp", "plot", str(result.out_dir), "--out", str(figure)])
    print(f"next: {plot} (add other run folders to overlay their curves)")
    if result.status == "completed":
        print(f"      {train.resume_command(result.out_dir, result.config.model)} --epochs N "
              f"(N > {result.epochs_completed}: train on to N epochs)")  # fmt: skip
