"""The ``jaxbp`` command line: thin argparse over the library functions.

Each command has a module here (``jaxbp.cli.train``, ``.data``, ``.check``, ``.bench``,
``.devices``, ``.plot``) with an ``add_<name>`` that declares its flags and a ``_run_<name>``
that maps them onto a library call; no logic lives here beyond that mapping. What they share
(one-line errors, standard output, argument types) is in ``jaxbp.cli.common``; this module
builds the parser and is the console script. Bad flags exit with status 2 (argparse); failed checks exit with status 1.

The parser takes its choices from the library without importing JAX (:mod:`jaxbp.choices`,
:class:`jaxbp.train.TrainConfig`'s defaults, :mod:`jaxbp.verify.tolerances`), so ``jaxbp
--help`` answers at once; each ``_run_<name>`` imports what its command runs.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from jaxbp import __version__, allocator
from jaxbp.cli.bench import add_bench
from jaxbp.cli.check import add_check
from jaxbp.cli.data import add_data
from jaxbp.cli.devices import add_devices
from jaxbp.cli.plot import add_plot
from jaxbp.cli.train import add_train
from jaxbp.xla_flags import CPU_XLA_FLAGS, FAST_COMPILE_FLAGS, set_default_xla_flags

__all__ = ["build_parser", "main", "run"]


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
    for add in (add_train, add_data, add_check, add_bench, add_devices, add_plot):
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
