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
