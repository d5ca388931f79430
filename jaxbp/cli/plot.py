"""``jaxbp plot``: the curves of one or more run folders in one figure."""

from __future__ import annotations

import argparse
import sys

from jaxbp.cli.common import error


def add_plot(sub: argparse._SubParsersAction) -> None:
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
            return error(err, "jaxbp plot")
        if err.filename is not None and str(err.filename) != str(args.out):  # a metrics file that cannot be read
            return error(f"{err.filename}: cannot read: {err.strerror}", "jaxbp plot")
        return error(files.describe_os_error(err, args.out), "jaxbp plot")
    except files.OutputError as err:  # check_output_file names --out; a refusal while writing names the path
        return error(err if str(err).startswith("--out ") else f"--out {err}", "jaxbp plot")
    except ValueError as err:  # InputError (a bad metrics file), a run without an epoch, a bad flag
        return error(err, "jaxbp plot")
    for note in notes:
        print(f"jaxbp plot: note: {note}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
