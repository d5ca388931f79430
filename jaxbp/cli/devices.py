"""``jaxbp devices``: the portability check, layer checks and a short run on every device against golden values."""

from __future__ import annotations

import argparse

from jaxbp.cli.common import error, positive_int


def add_devices(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--train-steps", type=positive_int, help="steps of the golden run to compare (default all)")
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
        return error(err, "jaxbp devices")
    if args.write_golden:
        try:
            print(f"wrote {devices.write_golden(golden)}")
        except OSError as err:
            return error(f"--golden {files.describe_os_error(err, golden)}", "jaxbp devices")
        return 0
    for name in args.layer or ():
        if name not in registry.REGISTRY:
            from jaxbp.cli import build_parser  # the whole parser, for argparse's usage line

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
        return error(e, "jaxbp devices")
    print(devices.format_reports(reports))
    if args.json:
        try:
            files.atomic_write_text(args.json, json.dumps([r.to_dict() for r in reports], indent=2))
        except files.OutputError as err:
            return error(err, "jaxbp devices")
    return 0 if all(r.passed for r in reports) else 1
