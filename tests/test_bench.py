"""The benchmark's bookkeeping: the layer plan a PyTorch twin is built from, the per-layer
table with extra columns, and a (tiny) train-step benchmark that records the flags and the
matmul peak it is compared with."""

import math

import pytest

from jaxbp import bench, models, xla_flags
from tests.cli_helpers import assert_one_line_error, run_cli


def test_layer_plan_names_kinds_and_shapes_of_the_cnn():
    plan = bench.layer_plan(models.get_model("cnn", 10), (28, 28, 1))
    assert [p.kind for p in plan] == [
        "conv", "relu", "max_pool2d", "conv", "relu", "max_pool2d", "flatten", "dense", "relu", "dense",
    ]  # fmt: skip
    assert plan[0].name == "conv1" and plan[0].param_shapes == {"w": (3, 3, 1, 32), "b": (32,)}
    assert plan[2].input_shape == (28, 28, 32) and plan[2].output_shape == (14, 14, 32)
    assert plan[6].output_shape == (3136,) and plan[-1].output_shape == (10,)
    assert [p.kind for p in bench.layer_plan(models.get_model("cnn-bn", 10), (28, 28, 1))][:3] == ["conv", "bn", "relu"]


def test_format_layers_adds_a_column_per_extra_call_and_the_sums():
    rows = [
        bench._layer_row("conv1", "conv", (2, 4, 4, 1), _timings(forward=1, manual=2, autodiff=4, pytorch=3)),
        bench._layer_row("loss", "softmax_cross_entropy", (2, 10), _timings(forward=1, manual=1, autodiff=1)),
    ]
    assert rows[0]["extra_ms"] == {"pytorch": pytest.approx(3e3)} and rows[1]["extra_ms"] == {}
    text = bench.format_layers(rows)
    assert "pytorch" in text.splitlines()[1]
    assert text.splitlines()[-1].split()[1:] == ["2000.00", "3000.00", "5000.00", "1.67x", "3000.00"]


def _timings(**seconds):
    return {k: bench.Timing(v, v, v, v, 1) for k, v in seconds.items()}


def test_bench_train_step_records_the_flags_and_the_peak_it_is_a_fraction_of():
    result = bench.bench_train_step("mlp", batch_size=4, repeats=1, warmup=0, peak_size=64)
    assert result["xla"] == xla_flags.describe()
    peak = result["matmul_peak"]
    assert peak["size"] == 64 and peak["gflops_per_s"] > 0
    for g in ("manual", "autodiff"):
        assert math.isclose(result[g]["fraction_of_peak"], result[g]["gflops_per_s"] / peak["gflops_per_s"])


def test_flag_options_spell_xla_flags_as_compile_options():
    flags = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,eltwise --xla_cpu_prefer_vector_width=512"
    assert bench.flag_options(flags) == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE",
        "xla_cpu_prefer_vector_width": 512,
    }
    assert bench.flag_options("--xla_cpu_experimental_ynn_fusion_type=") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert bench.flag_options("--xla_cpu_use_thunk_runtime=true") == {"xla_cpu_use_thunk_runtime": True}
    assert bench.flag_options("") == {}


def test_bench_takes_a_users_model_as_train_does_and_a_bad_one_is_one_line(tmp_path, capsys):
    path = tmp_path / "bench_user_model.py"
    path.write_text(
        "from jaxbp import models\n\n\ndef make(num_classes):\n"
        "    return models.serial(models.Flatten, models.Dense(num_classes))\n"
    )
    tiny = ["--batch-size", "2", "--input-shape", "4,4,1", "--repeats", "1", "--warmup", "0", "--no-layers"]
    code, out, err = run_cli(["bench", "--model", f"{path}:make", *tiny], capsys)
    assert code == 0, err
    assert out.startswith(f"train step: model {path}:make, batch 2")
    for spec, message in (
        (f"{tmp_path}/absent.py:make", "--model: "),
        (f"{path}:absent", "has no attribute 'absent'"),
        ("vgg", "--model: unknown model 'vgg'"),
    ):
        code, _, err = run_cli(["bench", "--model", spec, *tiny], capsys)
        assert code == 2
        assert_one_line_error(err, "jaxbp bench: error: ", message)


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c"], ["manual", "autodiff", "pytorch", "x", "y"]])
def test_timed_rounds_never_run_a_call_twice_in_a_row_and_vary_who_goes_first(names):
    orders = bench.round_orders(names, 200)
    assert all(sorted(o) == sorted(names) for o in orders)  # every call once a round
    sequence = [name for order in orders for name in order]
    assert all(a != b for a, b in zip(sequence, sequence[1:])), "a call ran right after itself"
    predecessors = {(a, b) for a, b in zip(sequence, sequence[1:])}
    assert predecessors == {(a, b) for a in names for b in names if a != b}  # each follows every other
    assert bench.round_orders(names, 200) == orders  # seeded: a rerun times the same sequence


def test_time_interleaved_times_every_call_in_the_rounds_order(monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "round_orders", lambda names, rounds: [["b", "a"], ["a", "b"]][:rounds])
    timings = bench.time_interleaved({"a": lambda: ran.append("a"), "b": lambda: ran.append("b")}, repeats=2, warmup=1)
    assert ran == ["a", "b", "b", "a", "a", "b"]  # the warm-up round, then the rounds as ordered
    assert set(timings) == {"a", "b"} and all(t.median >= 0 for t in timings.values())
