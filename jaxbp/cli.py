"""The ``jaxbp`` command line: thin argparse over the library functions.

Each command has an ``_add_<name>`` that declares its flags and a ``_run_<name>``
that maps them onto a library call; no logic lives here beyond that mapping.
Bad flags exit with status 2 (argparse); failed checks exit with status 1.

The parser takes its choices from the library without importing JAX (:mod:`jaxbp.choices`,
:class:`jaxbp.train.TrainConfig`'s defaults, :mod:`jaxbp.verify.tolerances`), so ``jaxbp
--help`` answers at once; each ``_run_<name>`` imports what its command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import shlex
import sys
import textwrap
from collections.abc import Sequence

from jaxbp import __version__, allocator
from jaxbp.xla_flags import CPU_XLA_FLAGS, FAST_COMPILE_FLAGS, set_default_xla_flags

__all__ = ["build_parser", "main", "run"]

# ------------------------------------------------------------------------ train


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


def _add_train(sub: argparse._SubParsersAction) -> None:
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
    dist.add_argument("--num-processes", type=_positive_int, metavar="N", help="number of processes")
    dist.add_argument("--process-id", type=_nonnegative_int, metavar="I", help="this process, 0 to N-1")
    timeout = DEFAULT_COORDINATOR_TIMEOUT_S
    dist.add_argument("--coordinator-timeout", type=_positive_int, default=timeout, metavar="SECONDS",
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
        return _error(err)
    except RuntimeError as err:  # XLA's client gave up, or JAX was initialised already
        return _error(f"could not join the distributed run ({dist}): {err}")
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
        return _error(f"{_FLAG_OF_FIELD.get(err.field, err.field)} {err.problem}")
    except (data.DataError, checkpoint.CheckpointError, ValueError) as err:
        return _error(err)
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


def _error(err: object, prog: str = "jaxbp train") -> int:
    """One line on stderr, exit status 2: a bad flag, input or output."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


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


# ------------------------------------------------------------------------- data


def _add_data(sub: argparse._SubParsersAction) -> None:
    from jaxbp.choices import DATASETS

    p = sub.add_parser("data", help="fetch or describe data sets")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    f = actions.add_parser("fetch", help="download mnist or fashion-mnist and verify their SHA-256")
    f.add_argument("name", choices=DATASETS, metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    f.add_argument(
        "--dir",
        dest="cache_dir",
        default=None,
        metavar="DIR",
        help="cache root; the files go to DIR/NAME (default: the user cache, ~/.cache/jaxbp on Linux)",
    )
    f.add_argument(
        "--base-url", default=None, metavar="URL", help="download from this http(s) mirror instead of the canonical URL"
    )
    i = actions.add_parser("info", help="where a data set is found (or where it was looked for) and its sizes")
    i.add_argument("name", nargs="?", choices=DATASETS, metavar="NAME", help="default: all data sets")
    i.add_argument("--data-dir", default=None, metavar="DIR", help="look here first (as `jaxbp train --data-dir`)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(run=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    import json

    from jaxbp import data
    from jaxbp.choices import DATASETS

    try:
        if args.data_action == "fetch":
            if args.base_url is not None:
                data.check_base_url(args.base_url, "--base-url")
            folder = data.fetch(args.name, args.cache_dir, base_url=args.base_url)
            _say(f"{args.name}: verified files in {folder}")
            return 0
        infos = [data.info(name, args.data_dir) for name in ([args.name] if args.name else DATASETS)]
        _say(json.dumps(infos, indent=2) if args.json else data.format_info(infos))
        invalid = [item["error"] for item in infos if item["status"] == "invalid"]
        if invalid:
            raise data.DataError("; ".join(invalid))
        return 0
    except data.DataError as err:
        return data.report_error(err, "jaxbp data")
    except StdoutError as err:
        return err.report("jaxbp data")


class StdoutError(Exception):
    """Standard output cannot be written (``> /dev/full``, a reader that left the pipe)."""

    def __init__(self, err: OSError):
        super().__init__(os.strerror(err.errno) if err.errno else str(err))
        self.broken_pipe = isinstance(err, BrokenPipeError)

    def report(self, prog: str) -> int:
        """Point stdout at /dev/null (the interpreter's last flush then succeeds); a closed pipe
        ends quietly with 141 (128 + SIGPIPE, as a shell reports it), anything else is one line, 2."""
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if self.broken_pipe:
            return 141
        return _error(f"cannot write to standard output: {self}", prog)


def _say(text: str) -> None:
    """``print(text)`` and flush; a write error is a :class:`StdoutError`."""
    try:
        print(text, flush=True)
    except OSError as err:
        raise StdoutError(err) from None


# ------------------------------------------------------------------------ check


def _add_check(sub: argparse._SubParsersAction) -> None:
    from jaxbp.choices import MATMUL_PRECISIONS
    from jaxbp.verify.tolerances import TOLERANCE

    p = sub.add_parser(
        "check",
        help="verify hand-derived VJPs against autodiff and finite differences",
        description="Compare every registered layer's hand-derived VJP (or your own --target) with jax.grad of "
        "its plain-JAX twin and with central finite differences, in float64 and float32, under jit, vmap "
        "and grad-of-grad (in the inputs and in the cotangent), and at inputs beyond the examples. Prints one "
        "row per layer and configuration (and a line per configuration as it completes when the output is not "
        "a terminal); exits 1 if any check fails, 2 on bad input.",
    )
    p.add_argument(
        "--layer",
        action="append",
        metavar="NAME",
        help="check only this registered layer (repeatable; default: every layer)",
    )
    p.add_argument(
        "--dtype",
        action="append",
        choices=tuple(TOLERANCE),
        help="check in this dtype (repeatable; default: float64 and float32)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds inputs, cotangents and probes (default: 0)")
    p.add_argument(
        "--matmul-precision",
        default="highest",
        choices=MATMUL_PRECISIONS,
        help="jax.default_matmul_precision during the checks; the tolerance follows it (default: highest)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the full report (every argument and check) as JSON")
    p.add_argument(
        "--plot",
        metavar="DIR",
        help="also draw conv2d and max_pool2d gradient heat maps and the max-pool routing into DIR",
    )
    own = p.add_argument_group("your own function (instead of the registry)")
    own.add_argument(
        "--target", metavar="MODULE:FUNCTION", help="the function with a hand-derived VJP (or path/to/file.py:FUNCTION)"
    )
    own.add_argument(
        "--reference",
        metavar="MODULE:FUNCTION",
        help="its plain-JAX twin, differentiated by jax.grad (without it: finite differences only, a weaker check)",
    )
    own.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        help='the shape of each positional argument, e.g. --shapes "3,4" "4,2" (random float64 inputs)',
    )
    own.add_argument(
        "--example",
        metavar="MODULE:FUNCTION",
        help="a function returning the example arguments (a tuple; called with --seed if it takes one): "
        "for integer labels, PRNG keys, pytrees, positive-only inputs",
    )
    own.add_argument(
        "--argnums", nargs="+", type=int, metavar="I", help="the positions to differentiate (default: every argument)"
    )
    own.add_argument("--rtol", metavar="TOL", help="tolerance for every dtype (default: per dtype)")
    own.add_argument("--no-explore", action="store_true", help="do not check inputs beyond the examples")
    own.add_argument(
        "--jacobian", action="store_true", help="on failure, print manual and reference Jacobians of small arguments"
    )
    p.set_defaults(run=_run_check, check_parser=p)


def _check_rtol(parser: argparse.ArgumentParser, text: str | None) -> float | None:
    from jaxbp.verify import tolerances

    if text is None:
        return None
    try:
        rtol = float(text)
        tolerances.validate_rtol(rtol, "--rtol")
    except ValueError as err:
        parser.error(f"--rtol {text!r}: {err}" if "--rtol" not in str(err) else str(err))
    return rtol


def _check_destinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--json and --plot must be writable before the run starts: nothing is lost after it."""
    from jaxbp import suite

    for flag, path, folder in (("--json", args.json, False), ("--plot", args.plot, True)):
        problem = path and suite.check_output_path(path, folder=folder)
        if problem:
            parser.error(f"{flag}: {problem}")


def _run_check(args: argparse.Namespace) -> int:
    from jaxbp.loading import UserCodeInterrupted

    try:
        return _check(args)
    except UserCodeInterrupted as err:  # Ctrl-C in a --target, --reference or --example module
        print(f"jaxbp check: {err}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `jaxbp check | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141  # 128 + SIGPIPE, as a shell reports a pipeline writer cut short


def _check(args: argparse.Namespace) -> int:
    from jaxbp import suite, targets
    from jaxbp.data import MAX_SEED

    parser: argparse.ArgumentParser = args.check_parser
    dtypes = tuple(dict.fromkeys(args.dtype or ("float64", "float32")))
    common = {"dtypes": dtypes, "seed": args.seed, "matmul_precision": args.matmul_precision}
    own = args.target or args.reference or args.shapes or args.example or args.argnums or args.rtol
    _check_destinations(parser, args)
    if not 0 <= args.seed <= MAX_SEED:
        return _error(f"--seed must be an integer in [0, {MAX_SEED}], got {args.seed}", "jaxbp check")
    if own:
        if not (args.target and (args.shapes or args.example)):
            parser.error("--target needs --shapes or --example (and optionally --reference, --argnums, --rtol)")
        if args.layer:
            parser.error("--layer picks registered layers; it cannot be combined with --target")
        rtol = _check_rtol(parser, args.rtol)
        if args.plot and not args.reference:
            return _error("--plot with --target needs --reference: it draws manual, autodiff and their difference",
                          "jaxbp check")  # fmt: skip
        try:
            found = targets.check_target(
                args.target, args.reference, args.shapes, example=args.example, argnums=args.argnums, rtol=rtol,
                explore=not args.no_explore, jacobian=args.jacobian, **common,
            )  # fmt: skip
        except targets.TargetError as err:
            return _error(err, "jaxbp check")
        reports = [found.report]
        print(found.report, flush=True)
        if found.shapes is not None:
            print(found.shapes, flush=True)
    else:
        from jaxbp import registry

        unknown = [name for name in args.layer or () if name not in registry.REGISTRY]
        if unknown:
            parser.error(f"unknown layer {', '.join(map(repr, unknown))} (choose from {', '.join(registry.REGISTRY)})")
        stream = None if sys.stdout.isatty() else lambda r: print(suite.status_line(r), flush=True)
        reports = suite.check_registry(args.layer, progress=sys.stderr.isatty(), on_report=stream, **common)
        if stream is not None:
            print(flush=True)
        print(suite.format_table(reports, dtypes), flush=True)
    if args.plot:
        problem = _check_plots(args, found if own else None)
        if problem:
            return problem
    if args.json:
        from jaxbp import files

        try:
            path = suite.write_json(args.json, reports, dtypes, seed=args.seed, matmul_precision=args.matmul_precision)
        except files.OutputError as err:  # the disk filled or the folder turned read-only during the run
            return _error(f"--json {err}", "jaxbp check")
        print(f"wrote {path}")
    return 0 if all(r.passed for r in reports) and (not own or found.passed) else 1


def _check_plots(args: argparse.Namespace, found) -> int:
    """``--plot DIR``: the target's own gradients, or jaxbp's conv and pool pictures; 0, or the error status."""
    from pathlib import Path

    from jaxbp import files, plots

    try:
        if found is None:
            paths = plots.gradient_plots(args.plot, seed=args.seed)
        else:
            stem = args.target.rsplit(":", 1)[-1]
            path = Path(args.plot) / f"{stem}_gradients.png"
            paths = [plots.plot_target_gradients(path, found.manual_fn, found.reference_fn, found.args,
                                                 name=args.target, seed=args.seed)]  # fmt: skip
        for path in paths:
            print(f"wrote {path}")
    except files.OutputError as err:  # the one writer refused a file there (not a figure), or the disk
        return _error(f"--plot {err}", "jaxbp check")
    return 0


# ------------------------------------------------------------------------ bench


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from jaxbp.choices import BENCH_DTYPES, MODELS

    p = sub.add_parser(
        "bench",
        help="time the train step and each layer with manual and autodiff gradients, interleaved",
        description="Times the jitted train step (and each layer at the model's shapes) with manual "
        "VJPs and with autodiff, interleaved in one process after warm-up; reports medians, ratios, "
        "compile time, compiled memory, examples/s and GFLOP/s.",
    )
    p.add_argument("--model", default="cnn", metavar="MODEL",
                   help=f"a built-in model ({', '.join(MODELS)}) or your own, as for train --model: MODULE:FUNCTION "
                   "or path/to/file.py:FUNCTION, FUNCTION(num_classes) returning a jaxbp.models.serial model "
                   "(default: cnn)")  # fmt: skip
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--dtype", default="float32", choices=BENCH_DTYPES)
    p.add_argument("--input-shape", type=_shape3, default=(28, 28, 1), help="H,W,C per example (default 28,28,1)")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed interleaved rounds")
    p.add_argument("--warmup", type=_nonnegative_int, default=3)
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer breakdown")
    p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import json

    from jaxbp import bench, files

    try:  # everything that can be checked before the (long) run
        bench.check_settings(args.model, args.input_shape, warmup=args.warmup, repeats=args.repeats)
        if args.json:
            files.check_output_file(args.json, "--json")
    except ValueError as err:
        return _error(err, "jaxbp bench")
    common = dict(
        batch_size=args.batch_size,
        dtype=args.dtype,
        input_shape=args.input_shape,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    result = {"train_step": bench.bench_train_step(args.model, **common)}
    print(bench.format_train_step(result["train_step"]))
    if not args.no_layers:
        result["layers"] = bench.bench_layers(args.model, **common)
        print(bench.format_layers(result["layers"]))
    if args.json:
        try:
            files.atomic_write_text(args.json, json.dumps(result, indent=2))
        except files.OutputError as err:
            return _error(err, "jaxbp bench")
    return 0


def _shape3(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be three positive ints H,W,C, got {text!r}")
    return shape


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# ---------------------------------------------------------------------- devices


def _add_devices(sub: argparse._SubParsersAction) -> None:
    from jaxbp.choices import BACKENDS, MATMUL_PRECISIONS

    p = sub.add_parser(
        "devices",
        help="portability check: layer checks and a short training run on every device, against golden CPU values",
        description="Lists the backends and devices JAX sees; on each device runs the layer check suite, "
        "compares the manual gradients of every registry case with the golden float64 CPU gradients shipped "
        "in the package, and compares a short fixed-seed training run's losses with the golden CPU losses. "
        "Exit 1 if any device fails.",
    )
    p.add_argument("--layer", action="append", metavar="NAME", help="only these layers (repeatable)")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="only these backends")
    p.add_argument("--matmul-precision", default="highest", choices=MATMUL_PRECISIONS)
    p.add_argument("--golden", metavar="FILE", help="golden file (default: the one shipped in the package)")
    p.add_argument("--write-golden", action="store_true", help="regenerate the golden file on the CPU and exit")
    p.add_argument("--no-suite", action="store_true", help="skip the manual-vs-autodiff suite (golden only)")
    p.add_argument("--train-steps", type=_positive_int, help="steps of the golden run to compare (default all)")
    p.add_argument("--json", metavar="FILE", help="write the reports as JSON")
    p.set_defaults(run=_run_devices)


def _run_devices(args: argparse.Namespace) -> int:
    import json

    from jaxbp import devices, files, registry

    golden = args.golden or devices.GOLDEN_PATH
    try:  # the destinations, before the run
        if args.json:
            files.check_output_file(args.json, "--json")
        if args.write_golden:
            files.check_output_file(golden, "--golden")
    except files.OutputError as err:
        return _error(err, "jaxbp devices")
    if args.write_golden:
        try:
            print(f"wrote {devices.write_golden(golden)}")
        except OSError as err:
            return _error(f"--golden {files.describe_os_error(err, golden)}", "jaxbp devices")
        return 0
    for name in args.layer or ():
        if name not in registry.REGISTRY:
            build_parser().error(f"unknown layer {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    print("devices: " + ", ".join(f"{d.platform}:{d.id} ({d.device_kind})" for d in devices.list_devices()))
    try:
        reports = devices.check_devices(
            layers=args.layer,
            backends=args.backend,
            matmul_precision=args.matmul_precision,
            golden_path=golden,
            suite=not args.no_suite,
            train_steps=args.train_steps,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        return _error(e, "jaxbp devices")
    print(devices.format_reports(reports))
    if args.json:
        try:
            files.atomic_write_text(args.json, json.dumps([r.to_dict() for r in reports], indent=2))
        except files.OutputError as err:
            return _error(err, "jaxbp devices")
    return 0 if all(r.passed for r in reports) else 1


# ------------------------------------------------------------------------- main


# ------------------------------------------------------------------------- plot


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="overlay the curves of several training runs (e.g. manual vs autodiff)",
        description="Overlay the per-epoch loss and accuracy (train, validation where recorded, test) of "
        "run folders written by `jaxbp train` in one PNG.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each holds a metrics.jsonl)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the figure to write")
    p.add_argument("--labels", metavar="A,B,...", help="comma-separated names of the runs (default: folder names)")
    p.add_argument("--target", type=float, metavar="ACCURACY", help="draw this accuracy as a target, e.g. 0.93")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(run=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    from jaxbp import curves, figure, files

    labels = None if args.labels is None else [label.strip() for label in args.labels.split(",")]
    try:
        if labels is not None and len(labels) != len(args.runs):
            raise ValueError(f"--labels names {len(labels)} runs, but {len(args.runs)} RUN folders are given")
        if args.target is not None and not 0.0 < args.target <= 1.0:
            raise ValueError(f"--target {args.target} is not an accuracy in (0, 1]")
        for flag, text in [("--title", args.title), *(("--labels", label) for label in labels or ())]:
            problem = text and figure.mathtext_problem(text)
            if problem:
                raise ValueError(f"{flag} {text!r}: matplotlib cannot draw it: {problem}")
        out = files.check_output_file(args.out, "--out", files.Existing.FIGURE)
        notes = [note for run in args.runs for note in curves.run_notes(run)]
        path = curves.plot_runs(args.runs, out, labels=labels, target=args.target, title=args.title)
    except OSError as err:
        if err.errno is None:  # a RUN without metrics.jsonl: curves says which
            return _error(err, "jaxbp plot")
        if err.filename is not None and str(err.filename) != str(args.out):  # a metrics file that cannot be read
            return _error(f"{err.filename}: cannot read: {err.strerror}", "jaxbp plot")
        return _error(files.describe_os_error(err, args.out), "jaxbp plot")
    except files.OutputError as err:  # check_output_file names --out; a refusal while writing names the path
        return _error(err if str(err).startswith("--out ") else f"--out {err}", "jaxbp plot")
    except ValueError as err:  # InputError (a bad metrics file), a run without an epoch, a bad flag
        return _error(err, "jaxbp plot")
    for note in notes:
        print(f"jaxbp plot: note: {note}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


class PlainHelpFormatter(argparse.HelpFormatter):
    """Help as plain text: the docstrings' ``double backticks`` dropped, and lines broken only at
    spaces, so that a flag (``--max-steps``) or a value (the XLA flags) is never split mid-word."""

    def _plain(self, text: str) -> str:
        return self._whitespace_matcher.sub(" ", text.replace("``", "")).strip()

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._plain(text), width, break_long_words=False, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            self._plain(text), width, initial_indent=indent, subsequent_indent=indent,
            break_long_words=False, break_on_hyphens=False,
        )  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """Every parser of the command, subcommands included (add_subparsers makes them of this class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", PlainHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxbp",
        description=__doc__.splitlines()[0],
        epilog="When XLA_FLAGS is unset, the jaxbp command runs XLA:CPU with "
        f"XLA_FLAGS={CPU_XLA_FLAGS} (faster convolutions on CPU; jaxlib 0.10 only), and check and "
        f"devices add {FAST_COMPILE_FLAGS} (their programs compile once and run once). "
        "Set XLA_FLAGS, even to an empty string, to choose your own.",
    )
    parser.add_argument("--version", action="version", version=f"jaxbp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train, _add_data, _add_check, _add_bench, _add_devices, _add_plot):
        add(sub)
    return parser


# Commands whose programs compile once and run once: XLA:CPU compiles them without LLVM's optimisations.
FAST_COMPILE_COMMANDS = ("check", "devices")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


def flags_model(args: argparse.Namespace) -> str | None:
    """The model whose XLA flags the command sets (:func:`jaxbp.xla_flags.flags_for`): ``--model``,
    or for ``train --resume`` without it, the model the run's ``config.json`` names. Read before JAX
    starts, for the flags alone: the resume itself checks the checkpoint, and anything unreadable
    here leaves the choice to the instruction set."""
    from pathlib import Path

    from jaxbp import files  # JAX-free

    model, resume = getattr(args, "model", None), getattr(args, "resume", None)
    if model is None and resume:
        folder = Path(resume).parent if str(resume).endswith(".npz") else Path(resume)
        try:
            config = files.read_json(folder / "config.json")
        except files.InputError:
            return None
        model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, str) else None


def run() -> None:
    """The ``jaxbp`` console script: the default XLA flags and the allocator policy, then :func:`main`.

    :func:`main` itself leaves the process alone, so calling it from Python (or a test)
    runs under whatever allocator, dispatch and flags that process started with.
    """
    args = build_parser().parse_args()  # JAX-free: the flags must be set before JAX starts
    # train and bench name their model: a built-in one may have flags of its own (xla_flags.flags_for)
    set_default_xla_flags(fast_compile=args.command in FAST_COMPILE_COMMANDS, model=flags_model(args))
    allocator.set_policy()  # before the first computation: the dispatch is fixed when JAX's CPU client starts
    sys.exit(int(args.run(args) or 0))


if __name__ == "__main__":
    run()
