"""Training curves (matplotlib through :mod:`jaxbp.figure`, imported lazily).

:func:`plot_training` draws the loss and accuracy curves of one or more runs from
their ``metrics.jsonl`` records: the train curves per logged step and the test
points per epoch, one colour per run (``manual`` and ``autodiff`` side by side).
Runs made in compare mode also get a panel with the gradient agreement per step
and the tolerance it was held to.

:func:`plot_runs` overlays the per-epoch curves of several run folders (train, test
and, where recorded, validation loss and accuracy), drawn so that identical curves
stay distinguishable, with an accuracy target if given; :func:`plot_curves` draws
the same figure from :class:`RunCurves` built by hand.

Used by ``jaxbp train`` (``training.png``), ``jaxbp plot`` and experiments/fashion_mnist.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxbp import figure, files


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a run folder is accepted too), read by
    :func:`jaxbp.files.read_json_lines`: a torn last line (a run killed mid-write) is left
    out (:func:`run_notes` says so), any other bad line is an ``InputError`` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [line.record for line in files.read_json_lines(path).records]


def run_notes(run_dir: str | os.PathLike) -> list[str]:
    """What a reader of the run folder should know: that its run was killed (its summary
    still says "running" but no process holds its lock), and a torn last line of its metrics."""
    folder = Path(run_dir)
    notes = []
    if files.killed_run(folder):
        notes.append(f'{folder}: the run was killed (its summary.json says "running" but no process holds its lock)')
    try:
        lines = files.read_json_lines(folder / "metrics.jsonl")
    except files.InputError:
        return notes  # reading it for the plot says what is wrong
    if lines.torn_line is not None:
        notes.append(
            f"{folder / 'metrics.jsonl'}: left out a torn last line {lines.torn_line} ({lines.torn_bytes} bytes)"
        )
    return notes


def plot_training(
    runs: Mapping[str, str | os.PathLike | Iterable[Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    tolerance: float | None = None,
) -> Path:
    """Loss and accuracy against the step for each run; returns the PNG's path.

    ``runs`` maps a label (``"manual"``) to a run folder, a ``metrics.jsonl`` file or
    the records themselves. Train records (``kind == "train"``) are lines, test
    records (``kind == "eval"``) are dots joined by dashes, and validation ones (a run
    with a validation split) squares joined by dots. Where records carry
    ``loss_autodiff`` (compare mode) the autodiff loss is drawn too, and where they
    carry ``grad_max_rel_err`` a third panel shows the agreement on a log scale with
    the ``tolerance`` it must stay under (by default the ``compare_rtol`` of the
    ``config.json`` next to a run's ``metrics.jsonl``, if there is one).
    """
    plt = figure.pyplot()
    loaded = {
        label: read_metrics(src) if isinstance(src, (str, os.PathLike)) else list(src) for label, src in runs.items()
    }
    if tolerance is None:
        tolerance = next(filter(None, (_compare_rtol(src) for src in runs.values())), None)
    compare = any("grad_max_rel_err" in r for recs in loaded.values() for r in recs)
    ncols = 3 if compare else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, recs) in enumerate(loaded.items()):
        c = colors[i % len(colors)]
        train = [r for r in recs if r.get("kind") == "train"]
        evals = [r for r in recs if r.get("kind") == "eval"]
        steps = [r["step"] for r in train]
        both = any("loss_autodiff" in r for r in train)  # the autodiff loss is drawn thin on top of a wide manual line
        axes[0].plot(
            steps, [r["loss"] for r in train], color=c, lw=3.5 if both else 1, alpha=0.45 if both else 0.8,
            label=f"{label} train",
        )  # fmt: skip
        if both:
            axes[0].plot(
                steps, [r.get("loss_autodiff") for r in train], color="black", lw=1, ls=":",
                label=f"{label} train, loss by autodiff",
            )  # fmt: skip
        axes[1].plot(steps, [r["accuracy"] for r in train], color=c, lw=1, alpha=0.8, label=f"{label} train")
        if evals:
            es = [r["step"] for r in evals]
            axes[0].plot(es, [r["test_loss"] for r in evals], "o--", color=c, ms=4, label=f"{label} test")
            axes[1].plot(es, [r["test_accuracy"] for r in evals], "o--", color=c, ms=4, label=f"{label} test")
            if all("val_loss" in r for r in evals):  # a run with a validation split
                axes[0].plot(es, [r["val_loss"] for r in evals], "s:", color=c, ms=4, label=f"{label} validation")
                axes[1].plot(es, [r["val_accuracy"] for r in evals], "s:", color=c, ms=4, label=f"{label} validation")
        if compare and any("grad_max_rel_err" in r for r in train):
            axes[2].semilogy(
                steps,
                [max(r.get("grad_max_rel_err", 0.0), 1e-12) for r in train],
                color=c,
                lw=1,
                marker=".",
                ms=3,
                label=f"{label}: worst parameter's max|g_manual - g_autodiff| / max|g_autodiff|",
            )
    axes[0].set(xlabel="step", ylabel="cross-entropy", title="loss")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="step", ylabel="accuracy", title="accuracy")
    if compare:
        if tolerance:
            axes[2].axhline(
                tolerance, color="crimson", ls="--", lw=1.5, label=f"tolerance (compare_rtol {tolerance:g})"
            )
        axes[2].set(xlabel="step", ylabel="relative error (log scale)", title="gradient agreement, manual vs autodiff")
    return _finish(fig, axes, title, path)


def _compare_rtol(src) -> float | None:
    """``compare_rtol`` from the ``config.json`` beside a run's ``metrics.jsonl`` (or in its folder)."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    folder = Path(src) if Path(src).is_dir() else Path(src).parent
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("compare_rtol")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


# ------------------------------------------------------ several runs, per epoch

SPLITS = ("train", "test", "val")  # the prefixes of an eval record's loss and accuracy fields


class RunCurves(NamedTuple):
    """One run's per-epoch curves: ``series`` maps ``"<split>_loss"`` / ``"<split>_accuracy"``
    (split one of :data:`SPLITS`) to one value per epoch (``None`` where not recorded)."""

    label: str
    epochs: Sequence[float]
    series: Mapping[str, Sequence[float | None]]


def run_curves(run_dir: str | os.PathLike, label: str | None = None) -> RunCurves:
    """The per-epoch curves of a run folder, from the ``kind: eval`` records of its ``metrics.jsonl``.

    Raises ``FileNotFoundError`` when the folder has no ``metrics.jsonl`` and ``ValueError``
    when it holds no eval record (no epoch finished yet).
    """
    folder = Path(run_dir)
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is it a run folder of `jaxbp train`?)")
    evals = [r for r in read_metrics(path) if r.get("kind") == "eval"]
    if not evals:
        raise ValueError(f"{run_dir}: metrics.jsonl holds no eval record yet (no epoch has finished)")
    keys = [f"{split}_{m}" for split in SPLITS for m in ("loss", "accuracy")]
    for r in evals:
        bad = [k for k in ("epoch", *keys) if not _number(r.get(k), optional=k != "epoch")]
        if bad:
            step = r.get("step")
            raise files.InputError(
                f"{path}: the eval record of step {step!r} has no number in {bad[0]!r} (got {r.get(bad[0])!r})"[:300]
            )
    series = {k: [r.get(k) for r in evals] for k in keys if any(r.get(k) is not None for r in evals)}
    return RunCurves(label if label is not None else folder.name, [r["epoch"] for r in evals], series)


def _number(value: Any, *, optional: bool) -> bool:
    return (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    target: float | None = None,
    title: str | None = None,
) -> Path:
    """Overlay the loss and accuracy per epoch of several run folders; returns the PNG's path.

    Each folder's ``metrics.jsonl`` gives train, test and (where recorded) validation
    curves (:func:`run_curves`); ``labels`` name the runs (default: the folder names);
    ``target`` (an accuracy, e.g. 0.93) is drawn as a line on the accuracy panel.
    """
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"plot_runs: {len(labels)} labels for {len(run_dirs)} run folders")
    names = labels if labels is not None else [None] * len(run_dirs)
    return plot_curves([run_curves(d, n) for d, n in zip(run_dirs, names)], out, target=target, title=title)


def plot_curves(
    runs: Sequence[RunCurves], out: str | os.PathLike, *, target: float | None = None, title: str | None = None
) -> Path:
    """Loss (log scale) and accuracy per epoch of each run, side by side; returns the PNG's path.

    Identical curves stay visible: the first run is drawn widest, underneath, and each
    later one narrower on top in its own colour, so a perfect overlap shows as a thin
    line inside a wide band. Train curves are solid, test dashed with circles,
    validation dotted with squares; ``target`` is a dashed red line on the accuracy panel.
    """
    plt = figure.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    split_style = {"train": ("-", None), "test": ("--", "o"), "val": (":", "s")}
    for i, run in enumerate(runs):
        lw, ms = (4.5, 9.0) if i == 0 else (max(1.0, 2.6 - 0.8 * i), max(3.0, 6.5 - 1.5 * i))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split in SPLITS:
                values = run.series.get(f"{split}_{metric}")
                if values is None:
                    continue
                ls, marker = split_style[split]
                y = [np.nan if v is None else v for v in values]
                ax.plot(
                    run.epochs, y, ls=ls, marker=marker, ms=ms, lw=lw, color=colors[i % len(colors)],
                    alpha=0.45 if i == 0 else 1.0, zorder=2 + i, label=f"{run.label} {split}",
                    mfc="none" if i == 0 else None, mew=2.0 if i == 0 else 1.0,
                )  # fmt: skip
    if target is not None:
        axes[1].axhline(target, color="crimson", ls="--", lw=1.2, zorder=1, label=f"target {100 * target:.1f} %")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    return _finish(fig, axes, title, out)


def _finish(fig, axes, title: str | None, path: str | os.PathLike) -> Path:
    """Grid and legend on every panel, the title, and the atomic PNG write."""
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return figure.save_png(fig, path)
