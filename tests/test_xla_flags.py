"""The XLA flag policy: the instruction set read from /proc/cpuinfo picks the flags, the
user's own XLA_FLAGS (even empty) win, and `describe` says which flags are in effect and why."""

from jaxbp import xla_flags

AVX512 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl\n"
AVX2 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse2 avx avx2 fma\n"
NEITHER = "processor\t: 0\nmodel name\t: old\nflags\t\t: fpu sse2 avx\n"


def test_the_instruction_set_comes_from_the_cpuinfo_flags():
    assert xla_flags.cpu_isa(AVX512) == "avx512"
    assert xla_flags.cpu_isa(AVX2) == "avx2"
    assert xla_flags.cpu_isa(NEITHER) == "other"
    assert xla_flags.cpu_isa("") == "other"  # no /proc/cpuinfo (macOS, a sandbox)
    assert xla_flags.cpu_isa("flags\t: avx512_bf16 avx2\n") == "avx2"  # avx512f itself, not any avx512* flag
    assert xla_flags.cpu_model(AVX512) == "AMD EPYC"


def test_each_measured_instruction_set_has_its_flags_and_the_rest_get_avx2s():
    for isa in ("avx2", "avx512"):
        choice = xla_flags.flags_for(isa)
        assert choice.flags and "measured" in choice.reason
    other = xla_flags.flags_for("other")
    assert other.flags == xla_flags.CPU_XLA_FLAGS_BY_ISA["avx2"].flags and "no measurement" in other.reason
    assert xla_flags.CPU_XLA_FLAGS == xla_flags.flags_for(xla_flags.CPU_ISA).flags  # this machine's choice


def test_describe_says_whose_flags_are_in_effect():
    ours = xla_flags.describe({"XLA_FLAGS": xla_flags.CPU_XLA_FLAGS})
    assert ours["flags"] == xla_flags.CPU_XLA_FLAGS and ours["why"].startswith(f"jaxbp's flags for {xla_flags.CPU_ISA}")
    assert "XLA's defaults" in xla_flags.describe({"XLA_FLAGS": ""})["why"]
    assert "XLA's defaults" in xla_flags.describe({})["why"]
    assert xla_flags.describe({"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"})["why"] == "the user's own XLA_FLAGS"
