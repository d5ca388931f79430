"""docs/derivations.md: its statements that are not examples, and the notebook built from it.

The guide's examples run as doctests (pytest collects ``*.md``); what is tested here are the
sentences a doctest cannot hold: the rule for which input rows a strided convolution never
reads (so the sentence cannot drift again), and that ``docs/derivations.ipynb`` is the
notebook ``docs/build_notebook.py`` makes from the markdown.
"""

from __future__ import annotations

import itertools

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
