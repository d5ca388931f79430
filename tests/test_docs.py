"""docs/derivations.md: its statements that are not examples, and the notebook built from it.

The guide's examples run as doctests (pytest collects ``*.md``); what is tested here are the
sentences a doctest cannot hold: the rule for which input rows a strided convolution never
reads (so the sentence cannot drift again), and that ``docs/derivations.ipynb`` is the
notebook ``docs/build_notebook.py`` makes from the markdown.
"""

from __future__ import annotations

import doctest
import importlib.util
import itertools
import json
import math
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import manual

# ---------------------------------------------------------- which rows a strided conv reads


def rows_read(h: int, k: int, s: int, d: int, lo: int, hi: int) -> set[int]:
    """Input rows the forward reads: padded row ``s o + d i`` for every output ``o`` and tap ``i``."""
    ho = (h + lo + hi - d * (k - 1) - 1) // s + 1
    padded = {s * o + d * i for o in range(ho) for i in range(k)}
    return {r - lo for r in padded if lo <= r < lo + h}


def rows_unread_by_the_guide(h: int, k: int, s: int, d: int, lo: int, hi: int) -> set[int]:
    """The guide's rule (docs/derivations.md, "Stride"; conv.py's docstring): the last
    ``r = (H + lo + hi - d (k - 1) - 1) mod s`` rows of the padded input are never read; those
    that are input rows, not bottom padding, get zero gradient. Stated for windows whose taps
    leave no gap (``d = 1``, ``s <= k``)."""
    r = (h + lo + hi - d * (k - 1) - 1) % s
    return set(range(h + hi - r, h))


def grid():
    for h, k, s, d, lo, hi in itertools.product(range(3, 11), range(1, 5), range(1, 5), range(1, 4), *[range(3)] * 2):
        if d * (k - 1) + 1 <= h + lo + hi:  # the (dilated) kernel fits the padded input
            yield h, k, s, d, lo, hi


def test_the_trailing_rows_rule_is_exactly_the_unread_rows_when_the_taps_leave_no_gap():
    checked = 0
    for h, k, s, d, lo, hi in grid():
        if d == 1 and s <= k:
            unread = set(range(h)) - rows_read(h, k, s, d, lo, hi)
            assert unread == rows_unread_by_the_guide(h, k, s, d, lo, hi), (h, k, s, d, lo, hi)
            # "exactly when r is not a multiple of s" -- and larger than the bottom padding
            r = (h + lo + hi - (k - 1) - 1) % s
            assert bool(unread) == (r > hi), (h, k, s, d, lo, hi)
            checked += 1
    assert checked > 300


def test_the_guide_s_caveat_is_needed_gaps_and_dilation_skip_rows_inside_the_input():
    """With s > k, or d > 1, rows between the taps can be skipped: the trailing rule alone is wrong there."""
    wrong = [c for c in grid() if set(range(c[0])) - rows_read(*c) != rows_unread_by_the_guide(*c)]
    assert wrong and all(d > 1 or s > k for _, k, s, d, _, _ in wrong)
    assert (9, 3, 2, 2, 0, 0) in wrong  # k=3, s=2, d=2 reads only the even rows
    assert 1 in set(range(9)) - rows_read(9, 3, 2, 2, 0, 0)


def test_the_guide_s_gap_rules_for_the_rows_between_the_taps():
    """docs/derivations.md, "Which rows get no gradient": for K, Ho > 1 the padded rows read,
    ``s o + d i``, leave a gap before the last one read at d = 1 exactly when s > K, at s = 1
    exactly when d > Ho; with a common factor f > 1 of s and d only multiples of f are read."""
    checked = 0
    for h, k, s, d, lo, hi in grid():
        ho = (h + lo + hi - d * (k - 1) - 1) // s + 1
        if k < 2 or ho < 2:
            continue
        read = {s * o + d * i for o in range(ho) for i in range(k)}
        gaps = set(range(max(read) + 1)) - read
        if d == 1:
            assert bool(gaps) == (s > k), (h, k, s, d, lo, hi)
        if s == 1:
            assert bool(gaps) == (d > ho), (h, k, s, d, lo, hi)
        f = math.gcd(s, d)
        assert f == 1 or all(u % f == 0 for u in read), (h, k, s, d, lo, hi)
        checked += 1
    assert checked > 1000


# (H, k, s, d, (lo, hi)) for the rows and for the columns of one real gradient computation each:
# unread trailing rows (6, 3, 2), none (7, 3, 2), bottom padding absorbing them, r > hi, gaps
# (s > k), dilation skipping rows, SAME padding's split.
REAL_CASES = [
    ((6, 3, 2, 1, (0, 0)), (7, 3, 2, 1, (0, 0))),
    ((6, 3, 2, 1, (0, 1)), (9, 3, 3, 1, (1, 1))),
    ((9, 3, 3, 1, (1, 0)), (8, 2, 3, 1, (0, 0))),
    ((9, 3, 2, 2, (0, 0)), (10, 2, 3, 2, (1, 0))),
    ((5, 1, 2, 1, (0, 0)), (8, 3, 4, 1, (0, 2))),
    ((10, 4, 3, 1, (2, 1)), (7, 2, 2, 3, (0, 1))),
]


@pytest.mark.parametrize("rows, cols", REAL_CASES, ids=lambda c: "H{}k{}s{}d{}p{}".format(*c))
def test_rows_with_nonzero_gradient_are_exactly_the_rows_the_forward_reads(rows, cols):
    (h, kh, sh, dh, ph), (w, kw, sw, dw, pw) = rows, cols
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, h, w, 1)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kh, kw, 1, 1)), jnp.float32)
    y, pullback = jax.vjp(lambda x: manual.conv2d(x, kernel, stride=(sh, sw), dilation=(dh, dw), padding=(ph, pw)), x)
    (dx,) = pullback(jnp.asarray(rng.standard_normal(y.shape), jnp.float32))
    nonzero = np.abs(np.asarray(dx[0, :, :, 0])) > 0
    assert set(np.flatnonzero(nonzero.any(1))) == rows_read(h, kh, sh, dh, *ph)
    assert set(np.flatnonzero(nonzero.any(0))) == rows_read(w, kw, sw, dw, *pw)
    for (n, k, s, d, pad), axis in ((rows, 1), (cols, 0)):
        if d == 1 and s <= k:
            assert set(np.flatnonzero(~nonzero.any(axis))) == rows_unread_by_the_guide(n, k, s, d, *pad)


# ---------------------------------------------------------------------- the notebook

DOCS = Path(__file__).resolve().parent.parent / "docs"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_notebook", DOCS / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_notebook_is_the_one_built_from_the_markdown():
    builder = load_builder()
    committed = (DOCS / "derivations.ipynb").read_text(encoding="utf-8")
    assert committed == builder.render((DOCS / "derivations.md").read_text(encoding="utf-8")), (
        "docs/derivations.ipynb is out of date: run python docs/build_notebook.py"
    )


def test_the_notebook_is_nbformat_4_with_the_guide_s_examples_as_code_cells_in_order():
    nb = json.loads((DOCS / "derivations.ipynb").read_text(encoding="utf-8"))
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for c in nb["cells"]:
        assert set(c) == (
            {"cell_type", "id", "metadata", "source"} | ({"execution_count", "outputs"} if c in code else set())
        )
    examples = doctest.DocTestParser().get_examples((DOCS / "derivations.md").read_text(encoding="utf-8"))
    assert "".join("".join(c["source"]) + "\n" for c in code) == "".join(e.source for e in examples)
    for c in code:
        compile("".join(c["source"]), c["id"], "exec")


def test_the_builder_splits_prose_and_doctest_blocks_and_its_check_fails_on_a_stale_notebook(tmp_path):
    builder = load_builder()
    md = tmp_path / "guide.md"
    md.write_text("# Title\n\nSome prose.\n\n```python\n>>> x = 1\n>>> print(x +\n...       1)\n2\n\n```\n\nMore.\n")
    cells = builder.build(md.read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["markdown", "markdown", "code", "markdown"]
    assert "".join(cells[1]["source"]) == "# Title\n\nSome prose."
    assert "".join(cells[2]["source"]) == "x = 1\nprint(x +\n      1)"
    assert cells[2]["outputs"][0]["text"] == ["2\n"]
    out = tmp_path / "guide.ipynb"
    assert builder.main(["--markdown", str(md), "--out", str(out), "--check"]) == 1
    assert builder.main(["--markdown", str(md), "--out", str(out)]) == 0
    assert builder.main(["--markdown", str(md), "--out", str(out), "--check"]) == 0
    md.write_text(md.read_text().replace("More.", "Changed."))
    assert builder.main(["--markdown", str(md), "--out", str(out), "--check"]) == 1


@pytest.mark.experiment
def test_the_notebook_runs_top_to_bottom_and_prints_what_it_stores(monkeypatch, capsys):
    """Kept out of the default suite: the doctest of derivations.md already runs these same sources,
    in the same order, in one namespace. Run with ``-m experiment``."""
    nb = json.loads((DOCS / "derivations.ipynb").read_text(encoding="utf-8"))
    monkeypatch.chdir(DOCS)  # where Jupyter starts the kernel
    namespace: dict = {}
    start = time.process_time()  # CPU time: wall time on a shared machine measures the neighbours
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), cell["id"], "exec"), namespace)
        printed = capsys.readouterr().out
        stored = "".join("".join(o["text"]) for o in cell["outputs"])
        assert printed == stored, cell["id"]
    # About 42 s of CPU before the guide derived the softmax, BCE, batch-norm and pooling steps and the
    # convolution's stride, dilation and groups, about 55 s since, about 75 s since the transposed
    # convolution, layer/group norm, GELU/SiLU, upsampling, concatenation and MSE (2-core AMD EPYC, shared)
    assert time.process_time() - start < 90
