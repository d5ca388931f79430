"""Figure for docs/derivations.md section 7: the filter gradient of a convolution is a convolution.

Draws, for a 6x6 input and a 3x3 filter: the input, the upstream gradient dOutput,
jaxbp's manual dL/dFilter, and the same computed as conv2d(input, dOutput) (the
output gradient used as the filter), with their difference.

    python experiments/conv_gradient_figure.py [--out docs/figures/conv_weight_gradient.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import manual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/conv_weight_gradient.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.integers(-3, 4, (1, 6, 6, 1)), jnp.float32)
    filt = jnp.asarray(rng.integers(-2, 3, (3, 3, 1, 1)), jnp.float32)
    out, pullback = jax.vjp(manual.conv2d, image, filt)
    dout = jnp.asarray(rng.integers(-2, 3, out.shape), jnp.float32)
    _, dfilt = pullback(dout)
    as_conv = manual.conv2d(image, dout.reshape(4, 4, 1, 1))  # dOutput plays the filter

    panels = [
        ("Image (6x6)", image[0, :, :, 0]),
        ("dL/dOutput (4x4)", dout[0, :, :, 0]),
        ("manual dL/dFilter (3x3)", dfilt[:, :, 0, 0]),
        ("conv2d(Image, dL/dOutput)", as_conv[0, :, :, 0]),
        ("difference", dfilt[:, :, 0, 0] - as_conv[0, :, :, 0]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, a) in zip(axes, panels):
        a = np.asarray(a)
        lim = max(float(np.abs(a).max()), 1e-9)
        ax.imshow(a, cmap="coolwarm", vmin=-lim, vmax=lim)
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("dL/dFilter(x, y) = sum_ij dL/dOutput(i, j) * Image(i + x, j + y): a convolution", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}; max |difference| = {float(jnp.max(jnp.abs(dfilt[:, :, 0, 0] - as_conv[0, :, :, 0]))):g}")


if __name__ == "__main__":
    main()
