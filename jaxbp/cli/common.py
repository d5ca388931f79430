"""What every command of the ``jaxbp`` command line shares: its one-line errors, writing to standard
output, and the argument types of its flags."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys


def error(err: object, prog: str) -> int:
    """One line on stderr, ``prog: error: err``, exit status 2: a bad flag, input or output."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


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
        return error(f"cannot write to standard output: {self}", prog)


def say(text: str) -> None:
    """``print(text)`` and flush; a write error is a :class:`StdoutError`."""
    try:
        print(text, flush=True)
    except OSError as err:
        raise StdoutError(err) from None


def shape3(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be three positive ints H,W,C, got {text!r}")
    return shape


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
