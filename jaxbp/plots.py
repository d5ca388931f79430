"""Plots (matplotlib, Agg backend, imported lazily so that importing jaxbp stays cheap).

:func:`plot_training` draws the loss and accuracy curves of one or more runs from
their ``metrics.jsonl`` records: the train curves per logged step and the test
points per epoch, one colour per run (``manual`` and ``autodiff`` side by side).
Runs made in compare mode also get a panel with the gradient agreement per step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a run folder is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(
    runs: Mapping[str, str | os.PathLike | Iterable[Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Loss and accuracy against the step for each run; returns the PNG's path.

    ``runs`` maps a label (``"manual"``) to a run folder, a ``metrics.jsonl`` file or
    the records themselves. Train records (``kind == "train"``) are lines, test
    records (``kind == "eval"``) are dots joined by dashes. Where records carry
    ``loss_autodiff`` (compare mode) the autodiff loss is drawn too, and where they
    carry ``grad_max_rel_err`` a third panel shows the agreement on a log scale.
    """
    plt = _pyplot()
    loaded = {
        label: read_metrics(src) if isinstance(src, (str, os.PathLike)) else list(src) for label, src in runs.items()
    }
    compare = any("grad_max_rel_err" in r for recs in loaded.values() for r in recs)
    ncols = 3 if compare else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, recs) in enumerate(loaded.items()):
        c = colors[i % len(colors)]
        train = [r for r in recs if r.get("kind") == "train"]
        evals = [r for r in recs if r.get("kind") == "eval"]
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], color=c, lw=1, alpha=0.8, label=f"{label} train")
        if any("loss_autodiff" in r for r in train):
            axes[0].plot(
                steps, [r.get("loss_autodiff") for r in train], color=c, lw=1, ls=":", label=f"{label} train (autodiff)"
            )
        axes[1].plot(steps, [r["accuracy"] for r in train], color=c, lw=1, alpha=0.8, label=f"{label} train")
        if evals:
            es = [r["step"] for r in evals]
            axes[0].plot(es, [r["test_loss"] for r in evals], "o--", color=c, ms=4, label=f"{label} test")
            axes[1].plot(es, [r["test_accuracy"] for r in evals], "o--", color=c, ms=4, label=f"{label} test")
        if compare and any("grad_max_rel_err" in r for r in train):
            axes[2].semilogy(
                steps, [max(r.get("grad_max_rel_err", 0.0), 1e-12) for r in train], color=c, lw=1, label=label
            )
    axes[0].set(xlabel="step", ylabel="cross-entropy", title="loss")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="step", ylabel="accuracy", title="accuracy")
    if compare:
        axes[2].set(xlabel="step", ylabel="max |g_manual - g_autodiff| / max |g_autodiff|", title="gradient agreement")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
