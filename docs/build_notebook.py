"""Build docs/derivations.ipynb from docs/derivations.md (the one source of both).

The prose between code blocks becomes markdown cells; each ```python block, whose examples
are doctests (``>>>`` and ``...`` lines, then the expected output), becomes one code cell
holding the examples' source without the prompts, with the expected output stored as the
cell's output so the notebook reads complete before it is run. The result is nbformat 4.5
JSON written without any Jupyter package.

    python docs/build_notebook.py            # rewrite docs/derivations.ipynb
    python docs/build_notebook.py --check    # exit 1 if the notebook is out of date
"""

from __future__ import annotations

import argparse
import doctest
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKDOWN = HERE / "derivations.md"
NOTEBOOK = HERE / "derivations.ipynb"

NOTE = (
    "*This notebook is generated from `docs/derivations.md` by `docs/build_notebook.py`: "
    "edit the markdown, then rerun the script. Run the cells from top to bottom.*"
)


def _lines(text: str) -> list[str]:
    """Text as a notebook stores it: a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def _markdown_cell(text: str, index: int) -> dict:
    return {"cell_type": "markdown", "id": f"md-{index:03d}", "metadata": {}, "source": _lines(text)}


def _code_cell(block: str, index: int) -> dict:
    examples = doctest.DocTestParser().get_examples(block)
    if not examples:
        raise ValueError(f"code block {index} of the markdown holds no doctest example:\n{block}")
    source = "".join(e.source for e in examples).rstrip("\n")
    output = "".join(e.want for e in examples)
    outputs = [{"name": "stdout", "output_type": "stream", "text": _lines(output)}] if output else []
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": f"code-{index:03d}",
        "metadata": {},
        "outputs": outputs,
        "source": _lines(source),
    }


def split_markdown(text: str) -> list[tuple[str, str]]:
    """``("markdown" | "code", text)`` chunks, in order; code chunks are the bodies of ```python blocks."""
    chunks: list[tuple[str, str]] = []
    prose: list[str] = []
    code: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if code is None and line.strip() == "```python":
            chunks.append(("markdown", "".join(prose)))
            prose, code = [], []
        elif code is not None and line.strip() == "```":
            chunks.append(("code", "".join(code)))
            code = None
        elif code is not None:
            code.append(line)
        else:
            prose.append(line)
    if code is not None:
        raise ValueError("the markdown ends inside a ```python block")
    chunks.append(("markdown", "".join(prose)))
    return [(kind, body.strip("\n") if kind == "markdown" else body) for kind, body in chunks if body.strip()]


def build(text: str) -> dict:
    """The notebook (a JSON-ready dict) for the markdown ``text``."""
    cells = [_markdown_cell(NOTE, 0)]
    for i, (kind, body) in enumerate(split_markdown(text), start=1):
        cells.append(_markdown_cell(body, i) if kind == "markdown" else _code_cell(body, i))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(text: str) -> str:
    """The notebook file's contents for the markdown ``text`` (stable: sorted keys, one-space indent)."""
    return json.dumps(build(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", type=Path, default=MARKDOWN)
    p.add_argument("--out", type=Path, default=NOTEBOOK)
    p.add_argument("--check", action="store_true", help="only check that --out is up to date")
    args = p.parse_args(argv)
    wanted = render(args.markdown.read_text(encoding="utf-8"))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != wanted:
            print(f"{args.out} is out of date with {args.markdown}: run python docs/build_notebook.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(wanted, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
