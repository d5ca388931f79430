"""``jaxbp ... --help`` reads as plain text at any terminal width, and answers at once.

argparse's default wrapping breaks lines at hyphens and inside long words, so a narrow
terminal showed ``--max-`` / ``steps`` and the XLA flags cut in two, and the top-level
description showed the docstring's reST ``double backticks``.

``jaxbp --help`` took 3-6 s: ``import jaxbp`` imported JAX, and so did the modules the
parser read its choices from. The parser now builds from :mod:`jaxbp.choices` and other
JAX-free modules; a test checks what it imports (a behaviour, not a timing).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

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
    from jaxbp.xla_flags import CPU_XLA_FLAGS

    monkeypatch.setenv("COLUMNS", "60")
    assert f"XLA_FLAGS={CPU_XLA_FLAGS}" in build_parser().format_help().split()


# Run in a fresh interpreter (this one has imported JAX already): build the parser, print every
# command's --help, and list which of the heavy packages got imported.
HELP_IMPORTS = """
import contextlib, io, json, sys
from jaxbp import cli
for path in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main([*path, "--help"])
print(json.dumps(sorted(m for m in ("jax", "jaxlib", "matplotlib", "numpy") if m in sys.modules)))
"""


def test_help_of_every_command_imports_no_jax_matplotlib_or_numpy():
    paths = [list(path) for path, _ in ALL]
    proc = subprocess.run([sys.executable, "-c", HELP_IMPORTS, json.dumps(paths)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], f"jaxbp --help imports {proc.stdout.strip()}"


def test_import_jaxbp_is_lazy_and_its_names_load_on_use():
    code = (
        "import sys, jaxbp; before = 'jax' in sys.modules; "
        "print(before, jaxbp.testing.assert_vjp.__name__, jaxbp.verify_vjp.__name__, jaxbp.train.TrainConfig.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "assert_vjp", "verify_vjp", "TrainConfig"]


def test_an_unknown_name_of_a_lazy_package_is_an_attribute_error():
    import jaxbp
    import jaxbp.train
    import jaxbp.verify

    for package in (jaxbp, jaxbp.train, jaxbp.verify):
        with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
            package.no_such_name  # noqa: B018
