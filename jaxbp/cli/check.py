"""``jaxbp check``: verify the hand-derived VJPs of the registry's layers, or of a user's own rule, against autodiff."""

from __future__ import annotations

import argparse
import os
import sys

from jaxbp.cli.common import error


def add_check(sub: argparse._SubParsersAction) -> None:
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
        return error(f"--seed must be an integer in [0, {MAX_SEED}], got {args.seed}", "jaxbp check")
    if own:
        if not (args.target and (args.shapes or args.example)):
            parser.error("--target needs --shapes or --example (and optionally --reference, --argnums, --rtol)")
        if args.layer:
            parser.error("--layer picks registered layers; it cannot be combined with --target")
        rtol = _check_rtol(parser, args.rtol)
        if args.plot and not args.reference:
            return error("--plot with --target needs --reference: it draws manual, autodiff and their difference",
                          "jaxbp check")  # fmt: skip
        try:
            found = targets.check_target(
                args.target, args.reference, args.shapes, example=args.example, argnums=args.argnums, rtol=rtol,
                explore=not args.no_explore, jacobian=args.jacobian, **common,
            )  # fmt: skip
        except targets.TargetError as err:
            return error(err, "jaxbp check")
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
            return error(f"--json {err}", "jaxbp check")
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
        return error(f"--plot {err}", "jaxbp check")
    return 0
