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

Both figures share one legend below the panels: an entry per run (its colour) and a key
to the curves, the same everywhere: train solid, validation dotted with squares, test
dashed with circles. Log axes are labelled in plain numbers (:func:`jaxbp.figure.log_axis`).

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
    ``config.json`` next to a run's ``metrics.jsonl``, if there is one). Runs whose records
    carry no accuracy (a model that reconstructs its input) get no accuracy panel, and
    their loss is labelled mean squared error.
    """
    plt = figure.pyplot()
    loaded = {
        label: read_metrics(src) if isinstance(src, (str, os.PathLike)) else list(src) for label, src in runs.items()
    }
    if tolerance is None:
        tolerance = next(filter(None, (_compare_rtol(src) for src in runs.values())), None)
    compare = any("grad_max_rel_err" in r for recs in loaded.values() for r in recs)
    scored = any("accuracy" in r for recs in loaded.values() for r in recs)
    names = ["loss"] + ["accuracy"] * scored + ["agreement"] * compare
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), constrained_layout=True, squeeze=False)
    axes = axes[0]
    panel = dict(zip(names, axes))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs_drawn, splits, by_autodiff, errors = [], set(), False, []
    for i, (label, recs) in enumerate(loaded.items()):
        c = colors[i % len(colors)]
        train = [r for r in recs if r.get("kind") == "train"]
        evals = [r for r in recs if r.get("kind") == "eval"]
        steps = [r["step"] for r in train]
        both = any("loss_autodiff" in r for r in train)  # the autodiff loss is drawn thin on top of a wide manual line
        line = {"color": c, "lw": 3.5 if both else 1.2, "alpha": 0.45 if both else 0.8}
        runs_drawn.append((label, line))
        splits.add("train")
        panel["loss"].plot(steps, [r["loss"] for r in train], **line, label=f"{label} train")
        if both:
            by_autodiff = True
            panel["loss"].plot(
                steps,
                [r.get("loss_autodiff") for r in train],
                **_AUTODIFF_LOSS,
                label=f"{label} train, loss by autodiff",
            )
        if scored:
            accuracy = [r.get("accuracy", np.nan) for r in train]
            panel["accuracy"].plot(steps, accuracy, color=c, lw=1.2, alpha=0.8, label=f"{label} train")
        if evals:
            es = [r["step"] for r in evals]
            validated = all("val_loss" in r for r in evals)  # a run with a validation split
            for split in ("test", "val") if validated else ("test",):
                splits.add(split)
                style = {**SPLIT_STYLE[split], "color": c, "ms": 4}
                name = f"{label} {SPLIT_NAMES[split]}"
                panel["loss"].plot(es, [r[f"{split}_loss"] for r in evals], **style, label=name)
                if scored:
                    accuracy = [r.get(f"{split}_accuracy", np.nan) for r in evals]
                    panel["accuracy"].plot(es, accuracy, **style, label=name)
        if compare and any("grad_max_rel_err" in r for r in train):
            err = [max(r.get("grad_max_rel_err", 0.0), 1e-12) for r in train]
            errors += err
            panel["agreement"].plot(steps, err, color=c, lw=1, marker=".", ms=3, label=f"{label} gradient agreement")
    panel["loss"].set(xlabel="step", ylabel="cross-entropy" if scored else "mean squared error", title="loss")
    figure.log_axis(panel["loss"])
    if scored:
        panel["accuracy"].set(xlabel="step", ylabel="accuracy", title="accuracy")
    extra = [("train loss by autodiff", _AUTODIFF_LOSS)] if by_autodiff else []
    if compare:
        ax = panel["agreement"]
        figure.log_axis(ax)
        if tolerance:
            ax.axhline(tolerance, **_TOLERANCE_LINE, label=f"tolerance (compare_rtol {tolerance:g})")
            extra.append((f"tolerance, compare_rtol {tolerance:g}", _TOLERANCE_LINE))
        # the tolerance line in view, however far below it the errors stay
        shown = [v for v in (*errors, tolerance) if v]
        if shown:
            ax.set_ylim(min(shown) / 3, max(shown) * 3)
        ax.set(xlabel="step", ylabel="max|g_manual - g_autodiff| / max|g_autodiff|",
               title="gradient agreement, manual vs autodiff\n(the worst parameter, every logged step)")  # fmt: skip
    _legend(fig, runs_drawn, splits, extra)
    return _finish(fig, axes, title, path)


# How a split's curve is drawn in every figure, and what the legend calls it.
SPLIT_STYLE = {
    "train": {"ls": "-", "marker": None},
    "val": {"ls": ":", "marker": "s"},
    "test": {"ls": "--", "marker": "o"},
}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
_AUTODIFF_LOSS = {"color": "black", "lw": 0.9, "ls": "-."}  # thin, inside the wide band of the manual loss
_TOLERANCE_LINE = {"color": "crimson", "ls": "--", "lw": 1.5}


def _legend(fig, runs: Sequence[tuple[str, Mapping[str, Any]]], splits: Iterable[str], extra=()) -> None:
    """One legend below the panels: an entry per run in its colour, then the key to the curves
    (each split present, in the order train, validation, test) and any ``(label, style)`` in ``extra``."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **{**line, "ls": "-", "marker": None}, label=label) for label, line in runs]
    handles += [
        Line2D([], [], color="0.35", lw=1.2, ms=4, **SPLIT_STYLE[split], label=SPLIT_NAMES[split])
        for split in ("train", "val", "test")
        if split in splits
    ]
    handles += [Line2D([], [], **style, label=label) for label, style in extra]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), fontsize=9, frameon=False)


def _compare_rtol(src) -> float | None:
    """``compare_rtol`` from the ``config.json`` beside a run's ``metrics.jsonl`` (or in its folder)."""
    value = _stored_config(src).get("compare_rtol")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _stored_config(src) -> dict[str, Any]:
    """The ``config.json`` beside a run's ``metrics.jsonl`` (or in its folder); ``{}`` where
    there is none or it does not read as a JSON object (the figure goes without it)."""
    if not isinstance(src, (str, os.PathLike)):
        return {}
    folder = Path(src) if Path(src).is_dir() else Path(src).parent
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


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
    ``target`` (an accuracy, e.g. 0.93) is drawn as a line on the accuracy panel. The
    ``title`` defaults to the runs' labels, after the data set and model of their
    ``config.json`` where all share them (``digits / cnn: manual vs autodiff``).
    """
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"plot_runs: {len(labels)} labels for {len(run_dirs)} run folders")
    names = labels if labels is not None else [None] * len(run_dirs)
    runs = [run_curves(d, n) for d, n in zip(run_dirs, names)]
    if title is None:  # the runs, after the data set and model they share
        shared = {(c.get("dataset"), c.get("model")) for c in map(_stored_config, run_dirs)}
        (dataset, model), *others = shared
        prefix = f"{dataset} / {model}: " if not others and dataset and model else ""
        title = prefix + " vs ".join(run.label for run in runs)
    return plot_curves(runs, out, target=target, title=title)


def plot_curves(
    runs: Sequence[RunCurves], out: str | os.PathLike, *, target: float | None = None, title: str | None = None
) -> Path:
    """Loss (log scale) and accuracy per epoch of each run, side by side; returns the PNG's path.

    Identical curves stay visible: the first run is drawn widest, underneath, and each
    later one narrower on top in its own colour, so a perfect overlap shows as a thin
    line inside a wide band. Train curves are solid, test dashed with circles,
    validation dotted with squares; ``target`` is a dashed red line on the accuracy panel.
    The legend has an entry per run and a key to those styles; the ``title`` defaults to
    the runs' labels. Runs without accuracies (models that reconstruct their input) get the
    loss panel only, labelled mean squared error.
    """
    plt = figure.pyplot()
    from matplotlib import ticker

    metrics = ("loss", "accuracy") if any(k.endswith("accuracy") for run in runs for k in run.series) else ("loss",)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(11.5 if len(metrics) > 1 else 8.0, 4.8), constrained_layout=True, squeeze=False
    )
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs_drawn, splits = [], set()
    band = len(runs) > 1  # the first of several runs is a wide band the others are drawn inside
    for i, run in enumerate(runs):
        lw, ms = (4.5, 9.0) if i == 0 else (max(1.0, 2.6 - 0.8 * i), max(3.0, 6.5 - 1.5 * i))
        if not band:
            lw, ms = 1.8, 5.0
        line = {"lw": lw, "color": colors[i % len(colors)], "alpha": 0.45 if i == 0 and band else 1.0}
        runs_drawn.append((run.label, line))
        for ax, metric in zip(axes, metrics):
            for split in SPLITS:
                values = run.series.get(f"{split}_{metric}")
                if values is None:
                    continue
                splits.add(split)
                y = [np.nan if v is None else v for v in values]
                ax.plot(
                    run.epochs, y, **SPLIT_STYLE[split], **line, ms=ms, zorder=2 + i, label=f"{run.label} {split}",
                    mfc="none" if i == 0 and band else None, mew=2.0 if i == 0 and band else 1.0,
                )  # fmt: skip
    extra = []
    if target is not None and len(axes) > 1:
        target_line = {"color": "crimson", "ls": "--", "lw": 1.2}
        axes[1].axhline(target, **target_line, zorder=1, label=f"target {100 * target:.1f} %")
        extra.append((f"target accuracy {100 * target:.1f} %", target_line))
    axes[0].set(xlabel="epoch", ylabel="cross-entropy" if len(axes) > 1 else "mean squared error", title="loss")
    figure.log_axis(axes[0])
    if len(axes) > 1:
        axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in axes:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # epochs are whole numbers
    _legend(fig, runs_drawn, splits, extra)
    return _finish(fig, axes, title if title is not None else " vs ".join(run.label for run in runs), out)


def _finish(fig, axes, title: str | None, path: str | os.PathLike) -> Path:
    """Grid on every panel, the title, and the atomic PNG write."""
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    if title:
        fig.suptitle(title)
    return figure.save_png(fig, path)
