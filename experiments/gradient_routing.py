"""Pictures of hand-derived gradients next to autodiff's: conv2d and max_pool2d.

Writes to experiments/results/ (or --out):

    conv2d_gradients.png      dx and dw of a 3x3 convolution over a 6x6 input (stride 1, VALID)
                              and dx at stride 2 (SAME): manual | autodiff | manual - autodiff
    max_pool2d_gradients.png  dx of 2x2/stride-2 and 3x3/stride-1 max pooling over an input with
                              ties: input | manual | autodiff | difference
    max_pool2d_routing.png    an annotated 6x6 example: the input with its 2x2 window grid, the
                              upstream gradient (1..9, one per window) and where each lands: on
                              the window's FIRST maximum in row-major order (ties included)

Same pictures as `jaxbp check --plot DIR`. Usage: python experiments/gradient_routing.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxbp import plots


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args(argv)
    for path in plots.gradient_plots(args.out, seed=args.seed, dtype=args.dtype):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
