"""``jaxbp ... --help`` reads as plain text at any terminal width.

argparse's default wrapping breaks lines at hyphens and inside long words, so a narrow
terminal showed ``--max-`` / ``steps`` and the XLA flags cut in two, and the top-level
description showed the docstring's reST ``double backticks``.
"""

from __future__ import annotations

import argparse
import re

import pytest

from jaxbp.cli import build_parser


def parsers(parser: argparse.ArgumentParser, path=()):
    """Every parser of the command line with its subcommand path: jaxbp, jaxbp train, jaxbp data fetch, ..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


ALL = list(parsers(build_parser()))


def test_every_command_is_reached():
    names = {" ".join(path) for path, _ in ALL}
    assert {"", "train", "check", "bench", "devices", "plot", "data", "data fetch", "data info"} <= names


def words_of(parser: argparse.ArgumentParser) -> set[str]:
    """The hyphenated words and flags the help must show whole: every option string and every
    word with an inner hyphen in the description, the epilog and the arguments' help."""
    texts = [parser.description or "", parser.epilog or ""]
    texts += [a.help for a in parser._actions if isinstance(a.help, str)]
    texts += [g.description or "" for g in parser._action_groups]
    words = {w.strip(".,;:()[]") for t in texts for w in t.split()}
    words = {w for w in words if re.search(r"\w-\w|^--?\w", w) and "%" not in w}
    return words | {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("columns", [40, 60, 80, 120])
@pytest.mark.parametrize("path, parser", ALL, ids=[" ".join(p) or "jaxbp" for p, _ in ALL])
def test_help_never_splits_a_flag_or_hyphenated_word_and_shows_no_rst(path, parser, columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    text = parser.format_help()
    assert "``" not in text
    missing = {w for w in words_of(parser) if w not in text}
    assert not missing, f"split across lines at {columns} columns: {sorted(missing)}"
    # no line ends inside a word at a hyphen (argparse's default breaks "positive-only" there)
    broken = [line for line in text.splitlines() if re.search(r"\w-$", line)]
    assert not broken, broken


def test_the_xla_flags_of_the_epilog_are_one_copyable_token(monkeypatch):
    from jaxbp.cli import CPU_XLA_FLAGS

    monkeypatch.setenv("COLUMNS", "60")
    assert f"XLA_FLAGS={CPU_XLA_FLAGS}" in build_parser().format_help().split()
