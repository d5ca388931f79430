"""Gradient pictures, manual vs autodiff (matplotlib through :mod:`jaxbp.figure`, imported lazily).

:func:`plot_gradient_heatmaps` draws gradients side by side (manual | autodiff |
difference), :func:`plot_pool_routing` shows where max pooling sends each window's
gradient, and :func:`gradient_plots` writes the figures of ``jaxbp check --plot``
(and experiments/gradient_routing.py). The training curves are :mod:`jaxbp.curves`'.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxbp import figure

__all__ = [
    "ROUTING_INPUT",
    "gradient_plots",
    "plot_gradient_heatmaps",
    "plot_pool_routing",
    "plot_target_gradients",
]


def _annotate(ax, a, fmt: str, *, color_of=None, fontsize: float = 8.0) -> None:
    for (r, c), v in np.ndenumerate(a):
        color = color_of(v) if color_of else "black"
        ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=fontsize, color=color)


def _grid(ax, shape, every: tuple[int, int] = (1, 1), **kwargs) -> None:
    """Lines between cells, every ``every`` cells (window borders)."""
    kwargs = {"color": "black", "lw": 0.5, **kwargs}
    for r in range(0, shape[0] + 1, every[0]):
        ax.axhline(r - 0.5, **kwargs)
    for c in range(0, shape[1] + 1, every[1]):
        ax.axvline(c - 0.5, **kwargs)


def _cells(ax, shape) -> None:
    ax.set_xticks(range(shape[1]))
    ax.set_yticks(range(shape[0]))
    ax.tick_params(labelsize=7, length=0)


def plot_gradient_heatmaps(
    rows: Sequence[Mapping[str, Any] | tuple[str, Any, Any]], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Heat maps side by side, one row per gradient: [input |] manual | autodiff | manual - autodiff.

    A row is ``(label, manual, autodiff)`` or a dict with those keys plus, optionally,
    ``input`` (a 2-D array drawn first, e.g. the layer's input) and ``windows`` (draw
    a grid every that many cells: the pooling windows). Arrays are 2-D slices.
    Manual and autodiff share one diverging colour scale, so equal gradients look
    equal; the difference has its own scale, symmetric around 0, and its title
    gives the largest entry. Small grids are annotated with the values.
    """
    plt = figure.pyplot()
    rows = [r if isinstance(r, Mapping) else dict(zip(("label", "manual", "autodiff"), r)) for r in rows]
    with_input = any("input" in r for r in rows)
    ncols = 3 + with_input
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(3.9 * ncols, 3.6 * len(rows) + 0.6), constrained_layout=True, squeeze=False
    )
    for row, ax_row in zip(rows, axes):
        label = row["label"]
        manual, autodiff = np.asarray(row["manual"], np.float64), np.asarray(row["autodiff"], np.float64)
        diff = manual - autodiff
        scale = float(np.max(np.abs(autodiff))) or 1.0
        small = manual.size <= 81
        k = row.get("windows")
        if with_input:
            ax = ax_row[0]
            if "input" in row:
                a = np.asarray(row["input"], np.float64)
                spread = float(np.ptp(a)) or 1.0  # light greys: black text stays readable
                ax.imshow(a, cmap="Greys", vmin=float(a.min()), vmax=float(a.max()) + 1.5 * spread)
                ax.set_title(row.get("input_label", f"{label}: input"), fontsize=10)
                _cells(ax, a.shape)
                if a.size <= 81:
                    _annotate(ax, a, ".2f", fontsize=7)
                if k:
                    _grid(ax, a.shape, (k, k), lw=2)
            else:
                ax.axis("off")
        body = ax_row[with_input:]
        for ax, a, name in ((body[0], manual, "manual (custom_vjp)"), (body[1], autodiff, "autodiff (jax.grad)")):
            im = ax.imshow(a, cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_title(f"{label}: {name}", fontsize=10)
            _cells(ax, a.shape)
            if small:
                for (r, c), v in np.ndenumerate(a):
                    color = "0.6" if v == 0 else "white" if abs(v) > 0.6 * scale else "black"
                    ax.text(c, r, "0" if v == 0 else f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
            if k:
                _grid(ax, a.shape, (k, k), lw=2)
        fig.colorbar(im, ax=list(body[:2]), shrink=0.85, label="gradient")
        d = float(np.max(np.abs(diff)))
        ax = body[2]
        _cells(ax, diff.shape)
        if d == 0:
            ax.imshow(np.zeros_like(diff), cmap="Greys", vmin=0, vmax=1)
            ax.text(
                (diff.shape[1] - 1) / 2,
                (diff.shape[0] - 1) / 2,
                "identical\n(every entry\nexactly 0)",
                ha="center",
                va="center",
                fontsize=11,
                color="0.35",
            )
            ax.set_title(f"{label}: manual - autodiff", fontsize=10)
        else:
            im = ax.imshow(diff, cmap="PuOr_r", vmin=-d, vmax=d)
            ax.set_title(f"{label}: manual - autodiff\nmax |diff| {d:.1e} ({d / scale:.1e} of max |grad|)", fontsize=10)
            fig.colorbar(im, ax=ax, shrink=0.85, format="%.0e", label="difference")
    if title:
        fig.suptitle(title, fontsize=12)
    return figure.save_png(fig, path)


def _as_2d(a: np.ndarray, max_rows: int = 32) -> tuple[np.ndarray, str]:
    """A gradient as a 2-D picture: scalars 1x1, vectors one row, higher ranks flattened to
    ``[-1, last axis]`` (the first ``max_rows`` rows), and the words for what is shown."""
    a = np.real(np.asarray(a, np.complex128 if np.iscomplexobj(a) else np.float64))
    if a.ndim < 2:
        return a.reshape(1, -1), ""
    flat = a.reshape(-1, a.shape[-1])
    cut = f" (first {max_rows} of {flat.shape[0]} rows)" if flat.shape[0] > max_rows else ""
    return flat[:max_rows], (f" as [{flat.shape[0]}, {a.shape[-1]}]" if a.ndim > 2 else "") + cut


def plot_target_gradients(
    path: str | os.PathLike,
    manual_fn,
    reference_fn,
    args: Sequence[Any],
    *,
    name: str = "",
    seed: int = 0,
    max_leaves: int = 8,
) -> Path:
    """The gradients of a user's pair (``jaxbp check --target ... --plot DIR``), manual | autodiff |
    difference, one row per differentiable leaf (at most ``max_leaves``), in float64 at the
    example arguments for one seeded random cotangent."""
    import jax

    from jaxbp.verify.api import arg_names
    from jaxbp.verify.compiled import x64_scope
    from jaxbp.verify.numerics import is_inexact
    from jaxbp.verify.structure import Inputs, Outputs

    with x64_scope(True):
        args = tuple(jax.tree.map(lambda a: np.asarray(a, np.float64) if is_inexact(a) and not np.iscomplexobj(a)
                                  else a, a) for a in args)  # fmt: skip
        names = arg_names(manual_fn, reference_fn, len(args))
        argnums = tuple(i for i, a in enumerate(args) if any(is_inexact(x) for x in jax.tree.leaves(a)))
        inputs = Inputs(args, argnums, names)
        layout = inputs.layout(args)
        diff, rest = layout.split(args)
        outputs = Outputs(jax.eval_shape(lambda *d: reference_fn(*layout.build(d, rest)), *diff))
        ct = outputs.random_cotangent(np.random.default_rng([seed, 2]))
        rows = []
        grads = [
            jax.vjp(lambda *d, fn=fn: fn(*layout.build(d, rest)), *diff)[1](outputs.layout.full(ct))
            for fn in (manual_fn, reference_fn)
        ]
    for label, g_man, g_ref in list(zip(inputs.labels, *grads))[:max_leaves]:
        (m, how), (r, _) = _as_2d(g_man), _as_2d(g_ref)
        rows.append((f"d{label}{how}", m, r))
    return plot_gradient_heatmaps(rows, path, title=f"{name}: manual vs autodiff gradients (float64)" if name else None)


# A hand-made 6x6 input for the routing picture: 2x2 windows, two of them tied.
ROUTING_INPUT = np.array(
    [
        [0.1, 0.7, 0.9, 0.9, 0.2, 0.4],
        [0.3, 0.2, 0.1, 0.5, 0.8, 0.6],
        [0.6, 0.4, 0.3, 0.2, 0.5, 0.1],
        [0.8, 0.5, 0.7, 0.9, 0.3, 0.2],
        [0.2, 0.3, 0.4, 0.1, 0.6, 0.7],
        [0.9, 0.1, 0.6, 0.8, 0.6, 0.7],
    ]
)


def plot_pool_routing(x, dy, dx, window: int, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """How max pooling routes its gradient: input with the window grid | upstream ``dy`` | ``dx``.

    ``x`` [H, W] is cut into non-overlapping ``window`` x ``window`` windows; ``dy``
    holds one value per window; ``dx`` is the layer's input gradient. Each window has
    its own colour in all three panels: in ``x`` its winning cell (the cell that
    received the window's gradient) is outlined, and other cells tied with the
    maximum are hatched, so the first-maximum rule is visible.
    """
    plt = figure.pyplot()
    from matplotlib.patches import Rectangle

    x, dy, dx = (np.asarray(a, np.float64) for a in (x, dy, dx))
    k = window
    ho, wo = dy.shape
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(
        1, 3, figsize=(14, 5.0), constrained_layout=True, gridspec_kw={"width_ratios": [6, 3.4, 6]}
    )
    ax_x, ax_dy, ax_dx = axes

    ax_x.imshow(np.zeros_like(x), cmap="Greys", vmin=0, vmax=1)
    ax_dx.imshow(np.zeros_like(dx), cmap="Greys", vmin=0, vmax=1)
    ax_dy.imshow(np.zeros_like(dy), cmap="Greys", vmin=0, vmax=1)
    for o in range(ho):
        for p in range(wo):
            color = colors[(o * wo + p) % len(colors)]
            r0, c0 = o * k, p * k
            win = x[r0 : r0 + k, c0 : c0 + k]
            got = dx[r0 : r0 + k, c0 : c0 + k]
            # window background tint in x and dx, the dy cell in full colour
            for ax in (ax_x, ax_dx):
                ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), k, k, color=color, alpha=0.15, lw=0))
            ax_dy.add_patch(Rectangle((p - 0.5, o - 0.5), 1, 1, color=color, alpha=0.55, lw=0))
            ax_dy.text(p, o, f"{dy[o, p]:g}", ha="center", va="center", fontsize=13, weight="bold")
            ties = np.argwhere(win == win.max())
            winners = np.argwhere(got != 0)
            for i, j in ties:
                if not any((i, j) == tuple(w) for w in winners):
                    ax_x.add_patch(
                        Rectangle(
                            (c0 + j - 0.45, r0 + i - 0.45), 0.9, 0.9, fill=False, ec=color, lw=1.5, ls="--", hatch="//"
                        )
                    )
                    ax_x.text(c0 + j, r0 + i + 0.32, "tied, not first", ha="center", va="center", fontsize=6.5)
            for i, j in winners:
                for ax in (ax_x, ax_dx):
                    ax.add_patch(Rectangle((c0 + j - 0.45, r0 + i - 0.45), 0.9, 0.9, fill=False, ec=color, lw=3))
                if len(ties) > 1:
                    ax_x.text(c0 + j, r0 + i + 0.32, "first max", ha="center", va="center", fontsize=6.5)
    _annotate(ax_x, x, ".1f", fontsize=11)
    for (r, c), v in np.ndenumerate(dx):
        ax_dx.text(
            c,
            r,
            f"{v:g}",
            ha="center",
            va="center",
            fontsize=12 if v else 9,
            weight="bold" if v else "normal",
            color="black" if v else "0.6",
        )
    for ax, shape, every in ((ax_x, x.shape, (k, k)), (ax_dx, dx.shape, (k, k)), (ax_dy, dy.shape, (1, 1))):
        _grid(ax, shape, color="0.75", lw=0.5)
        _grid(ax, shape, every, color="black", lw=2.0)
        _cells(ax, shape)
    ax_x.set_title(f"input x, {k}x{k} windows (stride {k})\nthick outline: the window's maximum", fontsize=10)
    ax_dy.set_title("upstream gradient dy\n(one value per window)", fontsize=10)
    ax_dx.set_title(
        "dx: each window's dy lands on its first maximum\n(row-major order), every other cell gets 0", fontsize=10
    )
    if title:
        fig.suptitle(title, fontsize=12)
    return figure.save_png(fig, path)


def gradient_plots(directory: str | os.PathLike, *, seed: int = 0, dtype: str = "float32") -> list[Path]:
    """Write the gradient pictures of ``jaxbp check --plot`` into ``directory``; returns their paths.

    * ``conv2d_gradients.png``: dx and dw of a 3x3 convolution over a 6x6 input
      (stride 1), and dx at stride 2 with SAME padding, manual | autodiff | difference;
    * ``max_pool2d_gradients.png``: dx of 2x2/stride-2 pooling over an input with
      ties and of 3x3/stride-1 (overlapping) pooling, manual | autodiff | difference;
    * ``max_pool2d_routing.png``: :data:`ROUTING_INPUT` with its window grid, dy = 1..9
      and where each window's dy lands.

    Computed in ``dtype`` (float32 by default, the training dtype), so the difference
    panels show rounding-level noise where the two backwards round differently.
    """
    import jax

    from jaxbp import autodiff, manual

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    enable = jax.enable_x64(dtype == "float64")

    def grads(man, ref, args, argnums, dy):
        out = []
        for fn in (man, ref):

            def f(*d, fn=fn):
                return fn(*[d[argnums.index(i)] if i in argnums else a for i, a in enumerate(args)])

            _, pull = jax.vjp(f, *[args[i] for i in argnums])
            out.append([np.asarray(g) for g in pull(dy)])
        return out

    paths = []
    with enable:

        def cast(a):
            return jax.numpy.asarray(a, dtype)

        # conv2d: x [1, 6, 6, 1], a non-symmetric 3x3 kernel, no bias
        x = cast(rng.standard_normal((1, 6, 6, 1)))
        w = cast(rng.standard_normal((3, 3, 1, 1)))
        rows = []
        for stride, padding in ((1, "VALID"), (2, "SAME")):

            def man(x_, w_, stride=stride, padding=padding):
                return manual.conv2d(x_, w_, None, stride=stride, padding=padding)

            def ref(x_, w_, stride=stride, padding=padding):
                return autodiff.conv2d(x_, w_, None, stride=stride, padding=padding)

            y = ref(x, w)
            dy = cast(rng.standard_normal(y.shape))
            (gx_m, gw_m), (gx_r, gw_r) = grads(man, ref, (x, w), [0, 1], dy)
            rows.append(
                {
                    "label": f"dx (stride {stride}, {padding})",
                    "manual": gx_m[0, :, :, 0],
                    "autodiff": gx_r[0, :, :, 0],
                    "input": np.asarray(w)[:, :, 0, 0],
                    "input_label": "kernel w (3x3, not symmetric)",
                }
            )
            if stride == 1:
                rows.append(
                    {
                        "label": "dw (stride 1)",
                        "manual": gw_m[:, :, 0, 0],
                        "autodiff": gw_r[:, :, 0, 0],
                        "input": np.asarray(x)[0, :, :, 0],
                        "input_label": "input x (6x6)",
                    }
                )
        paths.append(
            plot_gradient_heatmaps(
                rows,
                directory / "conv2d_gradients.png",
                title=f"conv2d, x 6x6, 3x3 kernel, random dy ({dtype}, seed {seed})",
            )
        )

        # max_pool2d: a 6x6 input with ties, non-overlapping and overlapping windows
        xp = cast(np.round(rng.random((1, 6, 6, 1)) * 4) / 4)  # quarter steps: ties are likely
        rows = []
        for window, stride in ((2, 2), (3, 1)):

            def man(x_, window=window, stride=stride):
                return manual.max_pool2d(x_, window=window, stride=stride)

            def ref(x_, window=window, stride=stride):
                return autodiff.max_pool2d(x_, window=window, stride=stride)

            dy = cast(rng.standard_normal(ref(xp).shape))
            (gm,), (gr,) = grads(man, ref, (xp,), [0], dy)
            rows.append(
                {
                    "label": f"dx ({window}x{window}, stride {stride})",
                    "manual": gm[0, :, :, 0],
                    "autodiff": gr[0, :, :, 0],
                    "input": np.asarray(xp)[0, :, :, 0],
                    "input_label": f"input x ({window}x{window} windows, stride {stride})",
                    "windows": window if window == stride else None,
                }
            )
        paths.append(
            plot_gradient_heatmaps(
                rows,
                directory / "max_pool2d_gradients.png",
                title=f"max_pool2d, x 6x6 in quarter steps (ties), random dy ({dtype}, seed {seed})",
            )
        )

        # the routing picture
        xr = cast(ROUTING_INPUT[None, :, :, None])
        dyr = cast(np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1))
        (gm,), (gr,) = grads(
            lambda a: manual.max_pool2d(a, window=2, stride=2),
            lambda a: autodiff.max_pool2d(a, window=2, stride=2),
            (xr,),
            [0],
            dyr,
        )
        same = bool(np.array_equal(gm, gr))
        paths.append(
            plot_pool_routing(
                ROUTING_INPUT,
                np.asarray(dyr)[0, :, :, 0],
                gm[0, :, :, 0],
                2,
                directory / "max_pool2d_routing.png",
                title="max_pool2d backward: the gradient is routed to each window's first maximum "
                f"(manual {'==' if same else '!='} autodiff)",
            )
        )
    return paths
