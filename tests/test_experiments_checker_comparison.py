"""experiments/checker_comparison.py's table builder: how an outcome is classified and written.

The experiment itself (every checker on every case) is not a test; these check only that a
mismatch, a crash and a pass are told apart and reach the Markdown table intact.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from jaxbp import verify

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "checker_comparison.py"
_spec = importlib.util.spec_from_file_location("checker_comparison_experiment", SCRIPT)
cc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cc  # its dataclasses look their module up there
_spec.loader.exec_module(cc)


def raiser(e):
    def go():
        raise e

    return go


def test_a_checker_s_mismatch_is_a_fail_and_anything_else_it_raises_an_error():
    assert cc.outcome(lambda: None, (AssertionError,)) == "pass"
    assert cc.outcome(raiser(AssertionError("\nNot equal\nmore")), (AssertionError,)) == "fail: Not equal"
    assert cc.outcome(raiser(TypeError("bad key")), (AssertionError,)) == "error: TypeError: bad key"


def test_jaxbp_failures_name_each_check_and_group_dtypes_only_when_they_agree():
    grad = verify.GradCheck("params['b']", "float64", 1.0, 1.0, (0,), 1.0, 2.0, 1e-10, "default")
    vmap64 = verify.TransformCheck("vmap", "float64", 1.0, 1e-10, False)
    assert cc.jaxbp_outcome(verify.Report("f", [grad], [vmap64])) == "fail: grad params['b'], vmap (float64)"
    vmap32 = verify.TransformCheck("vmap", "float32", 1.0, 1e-5, False)
    mixed = verify.Report("f", [grad], [vmap64, vmap32], errors=["boom\ntrace"])
    assert cc.jaxbp_outcome(mixed) == "fail: grad params['b'] (float64); vmap (float64, float32); error: boom"
    ok = verify.GradCheck("x", "float64", 0.0, 0.0, (0,), 1.0, 1.0, 1e-10, "default")
    assert cc.jaxbp_outcome(verify.Report("f", [ok], [verify.TransformCheck("fwd_mode", "float64", None, None, None)]))\
        == "pass"  # fmt: skip


def test_the_markdown_row_keeps_every_outcome_escapes_pipes_and_lists_notes():
    row = {"name": "case", "planted_bug": True, "notes": "why torch differs",
           "jaxbp": {"outcome": "fail: vmap (float64)"}, "jaxbp_no_reference": {"outcome": "pass"},
           "check_grads": [{"setup": "order=2", "outcome": "fail: a|b"}, {"setup": "order=1", "outcome": "pass"}],
           "torch": {"gradcheck": "pass", "gradgradcheck": "fail: x"}}  # fmt: skip
    text = cc.markdown([row], {"jax": "0", "cpu": "cpu model"})
    line = next(t for t in text.splitlines() if t.startswith("| case |") and "yes" in t)
    assert "fail: vmap (float64)<br>reference_fn=None: pass" in line and "fail: a\\|b<br>order=1: pass" in line
    assert "gradcheck: pass<br>gradgradcheck: fail: x" in line and "CPU: cpu model" in text
    assert text.rstrip().endswith("- case: why torch differs")
