"""Figure for docs/derivations.md section 7: the filter gradient of a convolution is a convolution.

For a 6x6 image and a 3x3 filter (one image, one channel, stride 1, no padding), two rows,
each on one colour scale with its colour bar:

    top:     the Image (outlined: the 4x4 patch that dOutput multiplies, cell by cell, for dFilter(0, 0))
             and the upstream gradient dL/dOutput (4x4), with dFilter(0, 0) worked out beside them
    bottom:  jaxbp's manual dL/dFilter, the same computed as conv2d(Image, dL/dOutput) (the output
             gradient used as the filter), and their difference

Every value is printed in its cell, so any entry of dL/dFilter can be recomputed from the top row.

    python experiments/conv_gradient_figure.py [--out docs/figures/conv_weight_gradient.png]
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


def gradients(seed: int = 0) -> dict[str, np.ndarray]:
    """Image [6, 6], dOutput [4, 4], manual dFilter [3, 3] and conv2d(Image, dOutput) [3, 3]."""
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.integers(-3, 4, (1, 6, 6, 1)), jnp.float32)
    filt = jnp.asarray(rng.integers(-2, 3, (3, 3, 1, 1)), jnp.float32)
    out, pullback = jax.vjp(manual.conv2d, image, filt)
    dout = jnp.asarray(rng.integers(-2, 3, out.shape), jnp.float32)
    _, dfilt = pullback(dout)
    as_conv = manual.conv2d(image, dout.reshape(4, 4, 1, 1))  # dOutput plays the filter
    return {
        "image": np.asarray(image[0, :, :, 0]),
        "dout": np.asarray(dout[0, :, :, 0]),
        "dfilter": np.asarray(dfilt[:, :, 0, 0]),
        "as_conv": np.asarray(as_conv[0, :, :, 0]),
    }


def draw(g: dict[str, np.ndarray], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(2, 3, figsize=(13.5, 8.6), constrained_layout=True)

    from jaxbp.figure import numbered_comparison, numbered_heatmap as heat, save_png

    top = max(float(np.abs(g["image"]).max()), float(np.abs(g["dout"]).max()))
    im = heat(axes[0, 0], g["image"], "Image (6x6)\noutlined: the patch under dOutput for dFilter(0, 0)", top)
    axes[0, 0].add_patch(Rectangle((-0.5, -0.5), 4, 4, fill=False, ec="black", lw=3))
    heat(axes[0, 1], g["dout"], "upstream gradient dL/dOutput (4x4)", top)
    fig.colorbar(im, ax=list(axes[0, :2]), shrink=0.8, label="value (one scale for the row)")

    patch = g["image"][:4, :4]
    terms = [f"({p:g})({d:g})" for p, d in zip(patch.ravel(), g["dout"].ravel()) if p and d]
    lines = [" + ".join(terms[i : i + 4]) for i in range(0, len(terms), 4)]
    axes[0, 2].axis("off")
    axes[0, 2].text(
        0.0,
        0.95,
        "dFilter(0, 0) = sum_op dOutput(o, p) * Image(o, p)\n"
        "(the outlined patch times dOutput, cell by cell;\n zero products left out)\n\n  = "
        + "\n  + ".join(lines)
        + f"\n\n  = {float(np.sum(patch * g['dout'])):g}"
        + "\n\ndFilter(i, j) is the same with the patch\nmoved i rows down and j columns right.",
        va="top",
        ha="left",
        fontsize=9.5,
        family="monospace",
        transform=axes[0, 2].transAxes,
    )

    numbered_comparison(
        fig,
        axes[1],
        g["dfilter"],
        "manual dL/dFilter (3x3)",
        g["as_conv"],
        "conv2d(Image, dL/dOutput)\n(dOutput used as the filter)",
        "gradient (one scale for the row)",
    )

    fig.suptitle(
        "dL/dFilter(i, j) = sum_op dL/dOutput(o, p) * Image(o + i, p + j): a correlation of the image with dOutput",
        fontsize=11,
    )
    return save_png(fig, out, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/conv_weight_gradient.png"))
    args = parser.parse_args(argv)
    g = gradients()
    draw(g, args.out)
    print(f"wrote {args.out}; max |difference| = {float(np.abs(g['dfilter'] - g['as_conv']).max()):g}")


if __name__ == "__main__":
    main()
