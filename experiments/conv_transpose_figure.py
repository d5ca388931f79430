"""Figure for docs/derivations.md section 8: the transposed convolution is a convolution's adjoint.

For a 2x2 input x and a 3x3 filter w at stride 2 (one image, one channel, no padding), the
transposed convolution writes a 5x5 output y. Drawn like experiments/conv_gradient_figure.py,
two rows, each on one colour scale with its colour bar:

    top:     x (outlined: the cell x(1, 1)) and the filter w, with y(2, 2) worked out beside
             them: each x(o, p) stamps x(o, p) * w onto the 3x3 block of y from (2 o, 2 p),
             and y(2, 2) is where all four stamps overlap
    bottom:  jaxbp's manual conv_transpose2d(x, w) (outlined: the stamp of x(1, 1); dashed:
             y(2, 2)), the input gradient of
             the convolution A = conv2d(., w^T, stride=2) at dOutput = x (jax.vjp of A, which
             is A^T x), and their difference

Every value is printed in its cell, so any entry of y can be recomputed from the top row.

    python experiments/conv_transpose_figure.py [--out docs/figures/conv_transpose.png]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import manual

STRIDE = 2


def outputs(seed: int = 28) -> dict[str, np.ndarray]:
    """x [2, 2], w [3, 3], manual conv_transpose2d(x, w) [5, 5] and A^T x by jax.vjp of the convolution A."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.integers(-3, 4, (1, 2, 2, 1)), jnp.float32)
    w = jnp.asarray(rng.integers(-2, 3, (3, 3, 1, 1)), jnp.float32)
    y = manual.conv_transpose2d(x, w, stride=STRIDE)
    w_t = w.transpose(0, 1, 3, 2)  # A's filter: w with its in/out axes swapped (one channel: the same numbers)
    _, pullback = jax.vjp(lambda z: manual.conv2d(z, w_t, stride=STRIDE), jnp.zeros_like(y))
    (adjoint,) = pullback(x)  # A^T x: the convolution's input gradient with x as its output gradient
    return {
        "x": np.asarray(x[0, :, :, 0]),
        "w": np.asarray(w[:, :, 0, 0]),
        "y": np.asarray(y[0, :, :, 0]),
        "adjoint": np.asarray(adjoint[0, :, :, 0]),
    }


def draw(g: dict[str, np.ndarray], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(2, 3, figsize=(13.5, 8.6), constrained_layout=True)

    from jaxbp.figure import numbered_comparison, numbered_heatmap as heat, save_png

    u, v = 2, 2  # the worked output cell: every input cell's stamp reaches it
    x, w = g["x"], g["w"]
    k = w.shape[0]
    top = max(float(np.abs(x).max()), float(np.abs(w).max()))
    im = heat(axes[0, 0], x, "input x (2x2)\noutlined: x(1, 1), whose stamp is outlined in y", top)
    axes[0, 0].add_patch(Rectangle((0.5, 0.5), 1, 1, fill=False, ec="black", lw=3))
    heat(axes[0, 1], w, "filter w (3x3)", top)
    fig.colorbar(im, ax=list(axes[0, :2]), shrink=0.8, label="value (one scale for the row)")

    terms, total = [], 0.0
    for (o, p), xv in np.ndenumerate(x):
        i, j = u - STRIDE * o, v - STRIDE * p  # the tap of w that x(o, p)'s stamp puts on (u, v)
        if 0 <= i < k and 0 <= j < k:
            terms.append(f"x({o},{p}) w({i},{j}) = ({xv:g})({w[i, j]:g})")
            total += xv * w[i, j]
    axes[0, 2].axis("off")
    axes[0, 2].text(
        0.0,
        0.95,
        "each x(o, p) stamps x(o, p) * w onto the 3x3 block\n"
        "of y from (2 o, 2 p); where stamps overlap they add:\n\n"
        f"y({u}, {v}) = sum x(o, p) w({u} - 2 o, {v} - 2 p)\n\n  = "
        + "\n  + ".join(terms)
        + f"\n\n  = {total:g}"
        + "\n\nThe same sum is the input gradient of a stride-2\n"
        "convolution (section 8) with x in the place of dy.",
        va="top",
        ha="left",
        fontsize=9.5,
        family="monospace",
        transform=axes[0, 2].transAxes,
    )

    numbered_comparison(
        fig,
        axes[1],
        g["y"],
        f"manual conv_transpose2d(x, w, stride=2) (5x5)\noutlined: x(1, 1) * w's block; dashed: y({u}, {v})",
        g["adjoint"],
        "input gradient of A = conv2d(., w^T, stride=2)\nat dOutput = x (jax.vjp): A^T x",
        "output (one scale for the row)",
    )
    axes[1, 0].add_patch(Rectangle((1.5, 1.5), k, k, fill=False, ec="black", lw=3))
    axes[1, 0].add_patch(Rectangle((v - 0.4, u - 0.4), 0.8, 0.8, fill=False, ec="black", lw=1.5, ls="--"))

    fig.suptitle(
        "y(u, v) = sum_{o, p, i, j: 2 o + i = u, 2 p + j = v} x(o, p) w(i, j) = (A^T x)(u, v): "
        "the transposed convolution is the convolution's input-gradient map",
        fontsize=11,
    )
    return save_png(fig, out, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/conv_transpose.png"))
    args = parser.parse_args(argv)
    g = outputs()
    draw(g, args.out)
    print(f"wrote {args.out}; max |difference| = {float(np.abs(g['y'] - g['adjoint']).max()):g}")


if __name__ == "__main__":
    main()
