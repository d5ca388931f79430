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
    p = sub.add_parser("data", help="fetch or describe data sets")
    p.set_defaults(run=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    raise NotImplementedError("jaxbp data is being written (issue 3)")


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
