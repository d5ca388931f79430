"""The ``jaxbp`` command line: thin argparse over the library functions.

Each command has an ``_add_<name>`` that declares its flags and a ``_run_<name>``
that maps them onto a library call; no logic lives here beyond that mapping.
Bad flags exit with status 2 (argparse); failed checks exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from jaxbp import __version__

# ------------------------------------------------------------------------ train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (default: cnn on digits, manual gradients)")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    raise NotImplementedError("jaxbp train is being written (issue 3)")


# ------------------------------------------------------------------------- data


def _add_data(sub: argparse._SubParsersAction) -> None:
    from jaxbp.data import DATASETS

    p = sub.add_parser("data", help="fetch or describe data sets")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    f = actions.add_parser("fetch", help="download mnist or fashion-mnist and verify their SHA-256")
    f.add_argument("name", choices=DATASETS, metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    f.add_argument("--dir", dest="cache_dir", default=None, metavar="DIR",
                   help="cache root; the files go to DIR/NAME (default: the user cache, ~/.cache/jaxbp on Linux)")
    f.add_argument("--base-url", default=None, metavar="URL",
                   help="download from this http(s) mirror instead of the canonical URL")
    i = actions.add_parser("info", help="where a data set is found (or where it was looked for) and its sizes")
    i.add_argument("name", nargs="?", choices=DATASETS, metavar="NAME", help="default: all data sets")
    i.add_argument("--data-dir", default=None, metavar="DIR", help="look here first (as `jaxbp train --data-dir`)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(run=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    import json

    from jaxbp import data

    try:
        if args.data_action == "fetch":
            folder = data.fetch(args.name, args.cache_dir, base_url=args.base_url)
            print(f"{args.name}: verified files in {folder}")
            return 0
        infos = [data.info(name, args.data_dir) for name in ([args.name] if args.name else data.DATASETS)]
        print(json.dumps(infos, indent=2) if args.json else data.format_info(infos))
        invalid = [item["error"] for item in infos if item["status"] == "invalid"]
        if invalid:
            raise data.DataError("; ".join(invalid))
        return 0
    except data.DataError as err:
        return data.report_error(err, "jaxbp data")


# ------------------------------------------------------------------------ check


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="verify hand-derived VJPs against autodiff and finite differences")
    p.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    raise NotImplementedError("jaxbp check is being written (issue 4)")


# ------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxbp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jaxbp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train, _add_data, _add_check):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
