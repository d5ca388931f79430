"""``jaxbp bench``: time a model's train step and its layers, and record the machine, flags and policy."""

from __future__ import annotations

import argparse

from jaxbp.cli.common import error, nonnegative_int, positive_int, shape3


def add_bench(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--dtype", default="float32", choices=BENCH_DTYPES)
    p.add_argument("--input-shape", type=shape3, default=(28, 28, 1), help="H,W,C per example (default 28,28,1)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed interleaved rounds")
    p.add_argument("--warmup", type=nonnegative_int, default=3)
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
        return error(err, "jaxbp bench")
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
            return error(err, "jaxbp bench")
    return 0
