"""jaxbp.plots: the run-overlay figure (plot_runs) and the compare panel of plot_training."""

from __future__ import annotations

import json

import pytest

from jaxbp import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder, *, epochs=3, val=False, compare_rtol=None, compare=False):
    folder.mkdir(parents=True)
    records = []
    for e in range(1, epochs + 1):
        train = {"kind": "train", "step": 10 * e, "epoch": e, "loss": 1.0 / e, "accuracy": 0.5 + 0.1 * e}
        if compare:
            train.update(loss_autodiff=1.0 / e, grad_max_rel_err=1e-6 * e, grad_worst_param="conv1.w")
        records.append(train)
        ev = {"kind": "eval", "step": 10 * e, "epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + 0.1 * e,
              "test_loss": 1.2 / e, "test_accuracy": 0.45 + 0.1 * e}  # fmt: skip
        if val:
            ev.update(val_loss=1.1 / e, val_accuracy=0.47 + 0.1 * e)
        records.append(ev)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if compare_rtol is not None:
        (folder / "config.json").write_text(json.dumps({"grad": "compare", "compare_rtol": compare_rtol}))
    return folder


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots save, kept open for inspection."""
    saved = []
    save = plots._save

    def keep(fig, path):
        saved.append({ax.get_title(): ax for ax in fig.axes})
        for ax in fig.axes:  # what the test reads, before the figure is closed
            ax.lines_seen = [
                (ln.get_label(), ln.get_linewidth(), ln.get_zorder(), list(ln.get_ydata())) for ln in ax.lines
            ]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_plot_runs_overlays_runs_with_and_without_validation_and_draws_the_target(tmp_path, figures):
    a = write_run(tmp_path / "a", val=True)
    b = write_run(tmp_path / "b")
    out = plots.plot_runs([a, b], tmp_path / "runs.png", labels=["manual", "autodiff"], target=0.93)
    assert out.read_bytes()[:8] == PNG_MAGIC
    loss, acc = figures[-1]["loss"], figures[-1]["accuracy"]
    labels = {ln[0]: ln for ln in acc.lines_seen}
    assert {"manual train", "manual test", "manual val", "autodiff train", "autodiff test"} <= set(labels)
    assert "autodiff val" not in labels
    assert labels["target 93.0 %"][3] == [0.93, 0.93]
    assert labels["manual val"][3] == pytest.approx([0.57, 0.67, 0.77])
    # identical curves stay visible: the first run wide and underneath, the second narrower on top
    m, d = labels["manual train"], labels["autodiff train"]
    assert m[3] == d[3] and m[1] > 2 * d[1] and m[2] < d[2]
    assert {ln[0] for ln in loss.lines_seen} >= {"manual val", "autodiff test"}


def test_plot_runs_names_the_folder_without_metrics_and_the_one_without_an_epoch(tmp_path):
    good = write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no metrics.jsonl"):
        plots.plot_runs([good, tmp_path / "empty"], tmp_path / "x.png")
    started = write_run(tmp_path / "started", epochs=0)
    with pytest.raises(ValueError, match=r"started: metrics.jsonl holds no eval record"):
        plots.plot_runs([started], tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 labels for 1 run folders"):
        plots.plot_runs([good], tmp_path / "x.png", labels=["a", "b"])
    assert not (tmp_path / "x.png").exists()
    assert plots.run_curves(good).label == "good"


def test_the_compare_panel_names_its_series_and_draws_the_run_s_tolerance(tmp_path, figures):
    run = write_run(tmp_path / "cmp", compare=True, compare_rtol=1e-4)
    plots.plot_training({"manual": run / "metrics.jsonl"}, tmp_path / "training.png")
    panel = figures[-1]["gradient agreement, manual vs autodiff"]
    labels = {ln[0]: ln for ln in panel.lines_seen}
    assert labels["tolerance (compare_rtol 0.0001)"][3] == [1e-4, 1e-4]
    assert labels["manual: worst parameter's max|g_manual - g_autodiff| / max|g_autodiff|"][3] == pytest.approx(
        [1e-6, 2e-6, 3e-6]
    )
    plots.plot_training({"manual": run}, tmp_path / "t2.png", tolerance=1e-3)  # an explicit tolerance wins
    assert "tolerance (compare_rtol 0.001)" in {
        ln[0] for ln in figures[-1]["gradient agreement, manual vs autodiff"].lines_seen
    }
