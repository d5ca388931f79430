"""The progress display of a run: what the bar and the log lines say while a run starts."""

import io
import sys

from jaxbp.train import display


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_names_the_run_folder_and_says_the_first_step_compiles(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    shown = display.Display(None, 10, 0, "mlp/manual")
    shown.folder("runs/digits-mlp-manual-2")
    shown.compiling()
    assert "run folder: runs/digits-mlp-manual-2" in term.getvalue()
    assert term.getvalue().rstrip().endswith("compiling the train step]")  # the bar, at 0 %, says why
    shown.compiled()
    shown.advance(1, {"loss": 2.0, "accuracy": 0.5})
    shown.close()
    last = term.getvalue().rstrip().split("\r")[-1]  # the bar as it stands
    assert "compiling" not in last and "loss=2.0000" in last


def test_log_lines_name_the_folder_and_the_compile_and_quiet_says_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    lines = display.Display(None, 10, 0, "mlp/manual")
    lines.folder("runs/x")
    lines.compiling()
    lines.compiled()
    assert log.getvalue() == "run folder: runs/x\ncompiling the train step (the first step)\n"
    quiet = display.Display(False, 10, 0, "mlp/manual")
    quiet.folder("runs/x")
    quiet.compiling()
    assert log.getvalue().count("\n") == 2


def test_log_lines_show_accuracies_where_the_records_have_them():
    train = {"kind": "train", "epoch": 1, "step": 5, "loss": 0.25, "examples_per_s": 100.0}
    assert display.format_record(train) == "epoch   1  step      5  loss 0.2500  100 ex/s"  # a reconstruction
    assert "acc 0.5000  100 ex/s" in display.format_record({**train, "accuracy": 0.5})
    ev = {"kind": "eval", "epoch": 1, "step": 5, "train_loss": 0.3, "test_loss": 0.2, "examples_per_s": 100.0}
    assert display.format_record(ev) == "epoch   1  step      5  train loss 0.3000  test loss 0.2000  100 ex/s"
    scored = {**ev, "train_accuracy": 0.9, "test_accuracy": 0.8, "val_loss": 0.1, "val_accuracy": 0.7}
    assert display.format_record(scored) == (
        "epoch   1  step      5  train loss 0.3000  train acc 0.9000  val loss 0.1000  val acc 0.7000  "
        "test loss 0.2000  test acc 0.8000  100 ex/s"
    )
