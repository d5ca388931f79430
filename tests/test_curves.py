"""jaxbp.curves: the run-overlay figure (plot_runs), the compare panel of plot_training, `jaxbp plot`."""

from __future__ import annotations

import json

import pytest

from jaxbp import curves, figure, files

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder, *, epochs=3, val=False, compare_rtol=None, compare=False, accuracy=True):
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
    if not accuracy:  # a model that reconstructs its input records losses only
        records = [{k: v for k, v in r.items() if not k.endswith("accuracy")} for r in records]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if compare_rtol is not None:
        (folder / "config.json").write_text(json.dumps({"grad": "compare", "compare_rtol": compare_rtol}))
    return folder


class Saved(dict):
    """A saved figure's panels by title, with its ``legend`` entries and its ``title``."""

    legend: list[str]
    title: str


@pytest.fixture
def figures(monkeypatch):
    """The figures the curves save, kept open for inspection (every figure goes through
    ``figure.save_png``: a test that reads ``figures[-1]`` fails if the patch misses)."""
    saved = []
    save = figure.save_png

    def keep(fig, path):
        entry = Saved({ax.get_title(): ax for ax in fig.axes})
        entry.legend = [t.get_text() for legend in fig.legends for t in legend.texts]
        entry.title = fig._suptitle.get_text() if fig._suptitle else ""
        saved.append(entry)
        for ax in fig.axes:  # what the test reads, before the figure is closed
            ax.lines_seen = [
                (ln.get_label(), ln.get_linewidth(), ln.get_zorder(), list(ln.get_ydata())) for ln in ax.lines
            ]
            ax.legend_seen = ax.get_legend()
            ax.ylim_seen = ax.get_ylim()
        return save(fig, path)

    monkeypatch.setattr(figure, "save_png", keep)
    return saved


def test_plot_runs_overlays_runs_with_and_without_validation_and_draws_the_target(tmp_path, figures):
    a = write_run(tmp_path / "a", val=True)
    b = write_run(tmp_path / "b")
    out = curves.plot_runs([a, b], tmp_path / "runs.png", labels=["manual", "autodiff"], target=0.93)
    assert out.read_bytes()[:8] == PNG_MAGIC and len(figures) == 1
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
    # one legend: an entry per run, then the key to the curves (not three entries per run and panel)
    assert figures[-1].legend == ["manual", "autodiff", "train", "validation", "test", "target accuracy 93.0 %"]
    assert loss.legend_seen is None and acc.legend_seen is None
    assert figures[-1].title == "manual vs autodiff"  # no config.json: the runs' labels


def test_plot_runs_titles_the_figure_with_the_data_set_and_model_the_runs_share(tmp_path, figures):
    runs = [write_run(tmp_path / name) for name in ("manual", "autodiff")]
    for run in runs:
        (run / "config.json").write_text(json.dumps({"dataset": "digits", "model": "cnn"}))
    curves.plot_runs(runs, tmp_path / "runs.png")
    assert figures[-1].title == "digits / cnn: manual vs autodiff"
    assert figures[-1].legend == ["manual", "autodiff", "train", "test"]
    curves.plot_runs(runs, tmp_path / "runs.png", title="mine")
    assert figures[-1].title == "mine"


def test_plot_runs_names_the_folder_without_metrics_and_the_one_without_an_epoch(tmp_path):
    good = write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no metrics.jsonl"):
        curves.plot_runs([good, tmp_path / "empty"], tmp_path / "x.png")
    started = write_run(tmp_path / "started", epochs=0)
    with pytest.raises(ValueError, match=r"started: metrics.jsonl holds no eval record"):
        curves.plot_runs([started], tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 labels for 1 run folders"):
        curves.plot_runs([good], tmp_path / "x.png", labels=["a", "b"])
    assert not (tmp_path / "x.png").exists()
    assert curves.run_curves(good).label == "good"


AGREEMENT = "gradient agreement, manual vs autodiff\n(the worst parameter, every logged step)"


def test_the_compare_panel_names_its_series_and_draws_the_run_s_tolerance(tmp_path, figures):
    run = write_run(tmp_path / "cmp", compare=True, compare_rtol=1e-4)
    curves.plot_training({"manual": run / "metrics.jsonl"}, tmp_path / "training.png")
    assert len(figures) == 1
    panel = figures[-1][AGREEMENT]
    labels = {ln[0]: ln for ln in panel.lines_seen}
    assert labels["tolerance (compare_rtol 0.0001)"][3] == [1e-4, 1e-4]
    assert labels["manual gradient agreement"][3] == pytest.approx([1e-6, 2e-6, 3e-6])
    # the line lies inside the panel, clear of its frame, however far below it the errors stay
    low, high = panel.ylim_seen
    assert low < 1e-6 and high >= 2 * 1e-4
    assert figures[-1].legend == [
        "manual", "train", "test", "train loss by autodiff", "tolerance, compare_rtol 0.0001"
    ]  # fmt: skip
    curves.plot_training({"manual": run}, tmp_path / "t2.png", tolerance=1e-3)  # an explicit tolerance wins
    assert "tolerance (compare_rtol 0.001)" in {ln[0] for ln in figures[-1][AGREEMENT].lines_seen}
    assert figures[-1][AGREEMENT].ylim_seen[1] >= 2 * 1e-3


def test_training_png_shows_the_validation_split_where_the_run_has_one(tmp_path, figures):
    curves.plot_training({"manual": write_run(tmp_path / "v", val=True)}, tmp_path / "v.png")
    labels = {ln[0]: ln[3] for ln in figures[-1]["accuracy"].lines_seen}
    assert labels["manual validation"] == pytest.approx([0.57, 0.67, 0.77])
    assert figures[-1].legend == ["manual", "train", "validation", "test"]
    curves.plot_training({"manual": write_run(tmp_path / "n")}, tmp_path / "n.png")
    assert "manual validation" not in {ln[0] for ln in figures[-1]["accuracy"].lines_seen}
    assert figures[-1].legend == ["manual", "train", "test"]
    assert (tmp_path / "v.png").stat().st_mode & 0o777 == files.NEW_FILE_MODE  # not mkstemp's 0o600


def test_runs_without_accuracies_get_the_loss_panel_alone(tmp_path, figures):
    """An autoencoder's run: no accuracy panel (an empty one would read as a plot that failed),
    and the loss is called what it is."""
    run = write_run(tmp_path / "ae", val=True, compare=True, compare_rtol=1e-4, accuracy=False)
    curves.plot_training({"manual": run}, tmp_path / "training.png")
    assert list(figures[-1]) == ["loss", AGREEMENT]
    assert figures[-1]["loss"].get_ylabel() == "mean squared error"
    curves.plot_training({"manual": write_run(tmp_path / "ae-manual", accuracy=False)}, tmp_path / "m.png")
    assert list(figures[-1]) == ["loss"]  # --grad manual: one panel
    curves.plot_runs([run, write_run(tmp_path / "ae2", accuracy=False)], tmp_path / "runs.png", target=0.9)
    assert list(figures[-1]) == ["loss"] and figures[-1]["loss"].get_ylabel() == "mean squared error"
    assert {"ae train", "ae val", "ae test", "ae2 test"} <= {ln[0] for ln in figures[-1]["loss"].lines_seen}
    curves.plot_training({"manual": write_run(tmp_path / "cls")}, tmp_path / "cls.png")  # a classifier: both
    assert list(figures[-1]) == ["loss", "accuracy"] and figures[-1]["loss"].get_ylabel() == "cross-entropy"


# ------------------------------------------------------------------ jaxbp plot


def _plot_cli(argv, capsys):
    from jaxbp import cli

    code = cli.main(["plot", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_jaxbp_plot_overlays_run_folders(tmp_path, capsys, figures):
    manual, autodiff = write_run(tmp_path / "manual", val=True), write_run(tmp_path / "autodiff", val=True)
    out = tmp_path / "figs" / "compare.png"
    code, stdout, _ = _plot_cli([manual, autodiff, "--out", out, "--labels", "m,a", "--target", "0.93"], capsys)
    assert code == 0 and stdout == f"wrote {out}\n"
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in out.parent.iterdir() if p != out]  # no temp file left beside it
    assert figures[-1].legend == ["m", "a", "train", "validation", "test", "target accuracy 93.0 %"]
    assert figures[-1].title == "m vs a"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{run}", "--out", "{tmp}/x.png", "--labels", "a,b"], "--labels names 2 runs, but 1 RUN folders are given"),
        (["{run}", "--out", "{tmp}/x.png", "--target", "93"], "--target 93.0 is not an accuracy in (0, 1]"),
        (["{tmp}/absent", "--out", "{tmp}/x.png"], "absent: no metrics.jsonl"),
        (["{run}", "--out", "{tmp}"], "--out {tmp}: is a folder"),
        (["{torn}", "--out", "{tmp}/x.png"], "metrics.jsonl: line 2: is not valid JSON"),
        (["{unreadable}", "--out", "{tmp}/x.png"], "unreadable: no metrics.jsonl"),
    ],
)
def test_jaxbp_plot_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    run = write_run(tmp_path / "run")
    torn = write_run(tmp_path / "torn")
    with open(torn / "metrics.jsonl", "r+") as f:  # cut the second record in half
        lines = f.readlines()
        f.seek(0)
        f.truncate()
        f.write(lines[0] + lines[1][:20] + "\n" + lines[2])  # a bad line with a good one after it
    (tmp_path / "unreadable" / "metrics.jsonl").mkdir(parents=True)
    fill = {"run": run, "tmp": tmp_path, "torn": torn, "unreadable": tmp_path / "unreadable"}
    code, _, err = _plot_cli([a.format(**fill) for a in argv], capsys)
    assert code == 2
    assert err.startswith("jaxbp plot: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message.format(**fill) in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "ylim, labels",
    [
        ((0.45, 3.0), ["0.5", "0.6", "0.8", "1", "2", "3"]),  # under a decade: 2, 3, 4, 5, 6, 8 times a power
        ((0.62, 0.95), ["0.7", "0.8", "0.9"]),  # under half a decade, no power of ten: every tick between
        ((0.03, 4.0), ["0.05", "0.1", "0.2", "0.5", "1", "2"]),  # two powers of ten in view: the 2 and 5
        ((2e-7, 3e-4), ["$10^{-6}$", "$10^{-5}$", "$10^{-4}$"]),  # several decades: the powers of ten only
        ((0.15, 9.0), ["0.2", "0.3", "0.5", "1", "2", "3", "5"]),  # over a decade, one power of ten: 2, 3, 5
        # an axis reaching below 1e-3: every label in powers of ten
        ((4.5e-4, 2.5e-3), [rf"${m}\times10^{{-4}}$" for m in (5, 6, 8)] + ["$10^{-3}$", r"$2\times10^{-3}$"]),
    ],
)
def test_log_axes_are_labelled_in_plain_numbers_with_ticks_between_the_decades(ylim, labels):
    plt = figure.pyplot()
    fig, ax = plt.subplots()
    try:
        figure.log_axis(ax)
        ax.set_ylim(*ylim)
        fig.canvas.draw()
        ticks = [*ax.get_yticklabels(), *ax.get_yticklabels(minor=True)]
        shown = sorted((t for t in ticks if t.get_text() and ylim[0] <= t.get_position()[1] <= ylim[1]),
                       key=lambda t: t.get_position()[1])  # fmt: skip
    finally:
        plt.close(fig)
    assert [t.get_text() for t in shown] == labels
