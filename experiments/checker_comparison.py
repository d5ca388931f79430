"""jaxbp.verify_vjp vs jax.test_util.check_grads vs torch.autograd.gradcheck/gradgradcheck, measured.

Each case is a planted bug (or a correct function) from tests/test_verify_structures.py and
tests/test_verify_checks.py, whose JAX definitions are imported from there, run through

  (a) ``jaxbp.verify_vjp(manual, reference, *args, ...)``: pass/fail and the failing checks;
  (b) ``jax.test_util.check_grads(manual, args, order=2, modes=["rev"])``: reference-free,
      it only has the manual function (finite differences of its forward vs its VJP);
  (c) when torch is importable, a ``torch.autograd.Function`` with the same planted bug through
      ``gradcheck`` and ``gradgradcheck`` with their defaults, plus the options the README
      names for the case. Where no faithful torch equivalent exists the reason is recorded.

Outcomes: "pass", "fail" (the checker reported a mismatch), "error: Type: message" (it raised
something else). Writes

    experiments/results/checker_comparison.json   every outcome, versions, CPU model
    experiments/results/checker_comparison.md     the table (Markdown)

Usage: python experiments/checker_comparison.py [--out DIR] [--case NAME ...]
Tiny float64 inputs; about a minute on one CPU core. torch is never a jaxbp dependency:
without it column (c) says "torch not installed".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import jaxbp  # noqa: E402
from tests import test_verify_checks as C, test_verify_structures as S  # noqa: E402

try:
    import torch
    from torch.autograd.gradcheck import GradcheckError
except ImportError:  # the torch column then says so
    torch = None

F64 = {"dtypes": ("float64",)}


# ------------------------------------------------------------ outcomes


def outcome(call: Callable[[], object], failure_types: tuple[type, ...]) -> str:
    """Run one checker: "pass", "fail: <first line>" for its mismatch exception, else "error: ..."."""
    try:
        call()
    except failure_types as e:
        return "fail: " + first_line(e)
    except Exception as e:  # noqa: BLE001 - every other exception is a measured outcome
        return f"error: {type(e).__name__}: {first_line(e)}"
    return "pass"


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:160]


def jaxbp_outcome(report) -> str:
    """pass, or fail with the checks that failed (grad rows by leaf, transforms, explored regions, errors)."""
    if report.passed:
        return "pass"
    failed: dict[str, list[str]] = {}  # check -> dtypes it failed in
    for name, dtype in (
        [(f"grad {g.arg}", g.dtype) for g in report.grads if not g.passed]
        + [(t.name, t.dtype) for t in report.transforms if t.passed is False]
        + [(f"explore {e.region}", e.dtype) for e in report.explored if e.passed is False]
    ):
        failed.setdefault(name, []).append(dtype)
    dtypes = {tuple(d) for d in failed.values()}
    if len(dtypes) == 1:
        what = [", ".join(failed) + f" ({', '.join(dtypes.pop())})"] if failed else []
    else:
        what = [f"{name} ({', '.join(d)})" for name, d in failed.items()]
    what += [f"error: {err.splitlines()[0][:120]}" for err in report.errors]
    return "fail: " + "; ".join(what)


def run_jaxbp(manual, reference, *args, **options) -> Callable[[], dict]:
    def go():
        return {"options": {k: str(v) for k, v in options.items()}, "outcome": jaxbp_outcome(
            jaxbp.verify_vjp(manual, reference, *args, **options))}  # fmt: skip

    return go


def run_check_grads(f, args, x64: bool = True, label: str = "", order: int = 2) -> Callable[[], dict]:
    def go():
        with jax.enable_x64(x64):
            result = outcome(lambda: check_grads(f, args, order=order, modes=["rev"]), (AssertionError,))
        return {"setup": label or f"order={order}", "order": order, "outcome": result}

    return go


# ------------------------------------------------------------ torch twins of the planted bugs


def torch_custom(fwd, bwd, materialize_grads: bool = True):
    """``Function.apply`` whose forward is ``fwd(*args)`` and backward ``bwd(*args, *grads)``.

    Tensor arguments are saved with ``save_for_backward`` (so the backward is differentiable,
    as gradgradcheck needs); ``bwd`` returns one gradient (or None) per argument.
    """

    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            ctx.set_materialize_grads(materialize_grads)
            ctx.tensor_at = [i for i, a in enumerate(args) if torch.is_tensor(a)]
            ctx.save_for_backward(*(args[i] for i in ctx.tensor_at))
            ctx.others = args
            return fwd(*args)

        @staticmethod
        def backward(ctx, *grads):
            args = list(ctx.others)
            for i, t in zip(ctx.tensor_at, ctx.saved_tensors, strict=True):
                args[i] = t
            return tuple(bwd(*args, *grads))

    return Custom.apply


def torch_runs(f, inputs, extra: dict[str, dict] | None = None, grad: bool = True, gradgrad: bool = True) -> dict:
    """gradcheck and gradgradcheck with their defaults, then each named set of extra options."""
    gc = torch.autograd.gradcheck
    fail = (GradcheckError,)
    runs = {}
    if grad:
        runs["gradcheck"] = outcome(lambda: gc(f, inputs), fail)
    if gradgrad:
        runs["gradgradcheck"] = outcome(lambda: torch.autograd.gradgradcheck(f, inputs), fail)
    for name, (checker, options) in (extra or {}).items():
        fn = gc if checker == "gradcheck" else torch.autograd.gradgradcheck
        runs[name] = outcome(lambda fn=fn, options=options: fn(f, inputs, **options), fail)
    return runs


def t64(a, grad: bool = True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def torch_sin(kind: str):
    """sin with the backward bugs of test_verify_checks.make_sin (``vmap``: the cotangent through Ident)."""

    def bwd(x, g):
        if kind == "stop_g":
            return (g.detach() * torch.cos(x),)  # like stop_gradient(g)
        if kind == "stop_x":
            return (g * torch.cos(x.detach()),)  # like stop_gradient(x)
        if kind == "off1pct":
            return (g * torch.cos(x) * torch.tensor([1, 1, 1.01, 1], dtype=x.dtype),)
        if kind == "off1e-7":
            return (g * torch.cos(x) * (1 + 1e-7),)
        return ((Ident.apply(g) if kind == "vmap" else g) * torch.cos(x),)

    return torch_custom(torch.sin, bwd)


if torch is not None:

    class Ident(torch.autograd.Function):
        """Identity whose vmap rule reverses the batch: the vmap-only bug of make_sin("vmap")."""

        @staticmethod
        def forward(g):
            return g.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, gg):
            return gg

        @staticmethod
        def vmap(info, in_dims, g):
            return g.flip(in_dims[0]) if in_dims[0] is not None else g, in_dims[0]


# ------------------------------------------------------------ the cases


@dataclass
class Case:
    """One row: what is planted, a thunk per checker, and ``notes`` where torch cannot say it the same way."""

    name: str
    row: str  # the README row it measures
    bug: bool
    jaxbp: Callable[[], dict]
    check_grads: list[Callable[[], dict]]
    torch: Callable[[], dict]
    notes: str = ""
    no_reference: Callable[[], dict] | None = None  # jaxbp with reference_fn=None as well
    results: dict = field(default_factory=dict)


def torch_vmap_runs() -> dict:
    """gradcheck's batched-grad options on the vmap-only bug, and torch.func.vmap of the backward vs a loop."""
    f, x = torch_sin("vmap"), t64(C.X)
    runs = torch_runs(f, (x,), {
        "gradcheck(check_batched_grad=True)": ("gradcheck", {"check_batched_grad": True}),
        "gradgradcheck(check_batched_grad=True)": ("gradgradcheck", {"check_batched_grad": True})})  # fmt: skip
    gs = torch.eye(len(C.X), dtype=torch.float64)

    def backward(g):  # the backward's formula; torch.func.vmap refuses the old-style Function around it
        return Ident.apply(g) * torch.cos(x.detach())

    same = torch.allclose(torch.func.vmap(backward)(gs), torch.stack([backward(g) for g in gs]))
    runs["torch.func.vmap(backward) vs a loop"] = "pass" if same else "fail: batched cotangents come back reversed"
    return runs


def sin_cases() -> list[Case]:
    x = C.X
    sin = C.sin_reference
    jax_off = {}
    for kind, factor in (("off1pct", None), ("off1e-7", 1 + 1e-7)):
        f = jax.custom_vjp(sin)
        scale = jnp.array([1, 1, 1.01, 1]) if factor is None else factor
        f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g, scale=scale: (g * jnp.cos(x) * scale,))
        jax_off[kind] = f
    cases = []
    for kind, row in (("ok", "correct sin"), ("stop_g", "stop_gradient(dy)"), ("stop_x", "stop_gradient(x)")):
        f = C.make_sin(kind)
        cases.append(Case(f"sin_{kind}", row, kind != "ok", run_jaxbp(f, sin, x, explore=False, **F64),
                          [run_check_grads(f, (x,)), run_check_grads(f, (x,), order=1)],
                          lambda kind=kind: torch_runs(torch_sin(kind), (t64(x),))))  # fmt: skip
    f = C.make_sin("vmap")
    cases.append(Case("sin_vmap", "bug only under vmap", True,
                      run_jaxbp(f, sin, x, transforms=["jit", "vmap"], explore=False, **F64),
                      [run_check_grads(f, (x,)), run_check_grads(f, (x,), order=1)], torch_vmap_runs,
                      notes="jaxbp runs jit and vmap only here: custom_vmap cannot be differentiated twice. torch's "
                      "check_batched_grad batches the cotangents with the legacy torch._vmap_internals.vmap, which "
                      "does not call an autograd.Function's vmap rule; torch.func.vmap does (the last torch entry "
                      "shows the planted bug is real)."))  # fmt: skip
    for kind, row in (("off1pct", "no reference: one element 1% off"), ("off1e-7", "whole gradient 1e-7 off")):
        f = jax_off[kind]
        cases.append(Case(f"sin_{kind}", row, True, run_jaxbp(f, None if kind == "off1pct" else sin, x,
                          transforms=False, explore=False, **F64), [run_check_grads(f, (x,))],
                          lambda kind=kind: torch_runs(torch_sin(kind), (t64(x),))))  # fmt: skip
    f = jax_off["off1e-7"]
    cases[-1].no_reference = run_jaxbp(f, None, x, transforms=False, explore=False, **F64)
    return cases


def dense_case() -> Case:
    params, x = S.DENSE_ARGS

    def torch_go():
        def bwd(w, b, x, g):
            return x.T @ g, 2.0 * g.sum(0), g @ w.T  # the bug: db doubled

        flat = torch_custom(lambda w, b, x: x @ w + b, bwd)

        def bwd_dict(p, x, g):  # a dict argument: autograd.Function gets no gradient slot for its tensors
            return None, g @ p["w"].T

        as_dict = torch_custom(lambda p, x: x @ p["w"] + p["b"], bwd_dict)
        tp = {k: t64(v) for k, v in params.items()}
        runs = {
            f"flat (w, b, x): {k}": v for k, v in torch_runs(flat, (t64(params["w"]), t64(params["b"]), t64(x))).items()
        }
        runs.update({f"dict argument: {k}": v for k, v in torch_runs(as_dict, (tp, t64(x))).items()})
        return runs

    f = S.make_dense(True)
    return Case("dense_params_dict", "wrong db inside a params dict", True,
                run_jaxbp(f, S.dense_reference, params, x, **F64), [run_check_grads(f, (params, x))], torch_go,
                notes="torch: an autograd.Function differentiates tensor arguments only; given the dict, its "
                "tensors are not inputs of the Function and get no gradient at all, so both check x alone. "
                "Passed as separate tensors (w, b, x), gradcheck finds the bug.")  # fmt: skip


def zero_cotangent_cases() -> list[Case]:
    cases = []
    for handles in (True, False):

        def bwd(x, ga, gb, handles=handles):
            if handles:
                ga = torch.zeros_like(x) if ga is None else ga
                gb = torch.zeros_like(x) if gb is None else gb
            return (ga * torch.cos(x) - gb * torch.sin(x),)  # None * tensor: TypeError unless handled

        f = C.make_two(handles)
        two = (
            None
            if torch is None
            else torch_custom(lambda x: (torch.sin(x), torch.cos(x)), bwd, materialize_grads=False)
        )
        cases.append(Case(f"two_outputs_{'handles' if handles else 'crashes_on'}_zero", "symbolic-zero cotangent crash",
                          not handles, run_jaxbp(f, C.two_reference, C.X, explore=False, **F64),
                          [run_check_grads(f, (C.X,))],
                          lambda two=two: torch_runs(two, (t64(C.X),), {
                              "gradcheck(check_undefined_grad=False)": ("gradcheck", {"check_undefined_grad": False})})))  # fmt: skip
    return cases


def softplus_cases() -> list[Case]:
    cases = []
    for bug in (False, True):

        def bwd(x, g, bug=bug):
            d = g * torch.sigmoid(x)
            return (torch.where(x > 20, torch.zeros_like(d), d) if bug else d,)

        f = C.make_softplus(bug)
        sp = None if torch is None else torch_custom(lambda x: torch.logaddexp(x, torch.zeros_like(x)), bwd)
        cases.append(Case(f"softplus_{'branch_bug' if bug else 'ok'}", "softplus 0 for x > 20, examples in [-3, 3]", bug,
                          run_jaxbp(f, C.softplus_reference, C.EXAMPLES, **F64), [run_check_grads(f, (C.EXAMPLES,))],
                          lambda sp=sp: torch_runs(sp, (t64(C.EXAMPLES),))))  # fmt: skip
    cases[-1].no_reference = run_jaxbp(C.make_softplus(True), None, C.EXAMPLES, **F64)
    return cases


def dropout_case() -> Case:
    x = S.RNG.standard_normal((4, 4))
    key = jax.random.key(3)
    f = S.make_dropout(False)

    def torch_go():
        class GlobalRNG(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):  # the usual torch dropout: a mask from the global RNG, saved for backward
                mask = (torch.rand(x.shape, dtype=x.dtype) < 0.5).to(x.dtype)
                ctx.save_for_backward(mask)
                return x * mask / 0.5

            @staticmethod
            def backward(ctx, g):
                (mask,) = ctx.saved_tensors
                return g * mask / 0.5

        def seeded(x, seed):  # the seed as an argument: the same mask on every call
            mask = torch.rand(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(seed)) < 0.5
            return mask.to(x.dtype)

        seeded_fn = torch_custom(lambda x, s: x * seeded(x, s) / 0.5, lambda x, s, g: (g * seeded(x, s) / 0.5, None))
        runs = {f"global RNG: {k}": v for k, v in torch_runs(GlobalRNG.apply, (t64(x),)).items()}
        runs.update({f"seed argument: {k}": v for k, v in torch_runs(seeded_fn, (t64(x), 3)).items()})
        return runs

    return Case("dropout_prng_key", "correct dropout with a PRNG key", False,
                run_jaxbp(f, S.dropout_reference, x, key, **F64),
                [run_check_grads(f, (x, key), label="key as an argument"),
                 run_check_grads(lambda x: f(x, key), (x,), label="key closed over")], torch_go,
                notes="torch has no key argument: the usual dropout draws its mask from the global RNG, so "
                "every forward call of the finite differences draws a new mask and a correct function fails; "
                "an int seed argument with a torch.Generator passes.")  # fmt: skip


def xent_cases() -> list[Case]:
    logits, labels = S.RNG.standard_normal((3, 4)), np.array([0, 3, 1])
    cases = []
    for bug in (False, True):

        def bwd(z, y, g, bug=bug):
            n = 1 if bug else z.shape[0]
            return g * (torch.softmax(z, 1) - torch.nn.functional.one_hot(y, z.shape[1]).to(z.dtype)) / n, None

        def fwd(z, y):
            return -torch.log_softmax(z, 1).gather(1, y[:, None]).mean()

        f = S.make_xent(bug)
        xent = None if torch is None else torch_custom(fwd, bwd)
        cases.append(Case(f"xent_int_labels_{'bug' if bug else 'ok'}", "int labels", bug,
                          run_jaxbp(f, S.xent_reference, logits, labels, **F64),
                          [run_check_grads(f, (logits, labels), label="labels as an argument"),
                           run_check_grads(lambda z, f=f: f(z, labels), (logits,), label="labels closed over")],
                          lambda xent=xent: torch_runs(xent, (t64(logits), torch.tensor(labels)))))  # fmt: skip
    return cases


def complex_cases() -> list[Case]:
    z = S.RNG.standard_normal(3) + 1j * S.RNG.standard_normal(3)
    cases = []
    for bug in (False, True):
        # JAX's convention: dz = g * f'(z); torch's (conjugate Wirtinger): dz = g * conj(f'(z)).
        # The planted bug is the other framework's convention, so the torch bug has no conj.
        def bwd(z, g, bug=bug):
            return (g * (2 * z if bug else torch.conj(2 * z)),)

        f = S.make_square(bug)
        sq = None if torch is None else torch_custom(lambda z: z**2, bwd)
        cases.append(Case(f"complex_square_{'wrong_convention' if bug else 'ok'}", "complex", bug,
                          run_jaxbp(f, S.square_reference, z, **F64), [run_check_grads(f, (z,))],
                          lambda sq=sq: torch_runs(sq, (torch.tensor(z, dtype=torch.complex128, requires_grad=True),)),
                          notes="the conventions differ: JAX's dz = g f'(z), torch's dz = g conj(f'(z)); the "
                          "planted bug in each is the other's convention."))  # fmt: skip
    return cases


def zero_size_case() -> Case:
    x, w = np.zeros((0, 4)), S.RNG.standard_normal(4)
    f = S.make_scale(False)
    scale = None if torch is None else torch_custom(lambda x, w: x * w, lambda x, w, g: (g * w, (g * x).sum(0)))

    def torch_go():  # torch.zeros: torch.tensor of an empty numpy array has zero strides, which gradcheck refuses
        return torch_runs(scale, (torch.zeros((0, 4), dtype=torch.float64, requires_grad=True), t64(w)))

    return Case("zero_size_ok", "zero-size", False, run_jaxbp(f, S.scale_reference, x, w, **F64),
                [run_check_grads(f, (x, w))], torch_go)  # fmt: skip


def low_precision_cases() -> list[Case]:
    x = S.RNG.standard_normal(5)
    cases = []
    for bug in (False, True):
        f = S.make_tanh(bug)

        def bwd(x, g, bug=bug):
            return (g * (1 - torch.tanh(x) ** 2) * (1.1 if bug else 1.0),)

        th = None if torch is None else torch_custom(torch.tanh, bwd)

        def torch_go(th=th):
            runs = {}
            for dt in ("float32", "bfloat16"):
                t = torch.tensor(x, dtype=getattr(torch, dt), requires_grad=True)
                runs.update({f"{dt}: {k}": v for k, v in torch_runs(th, (t,), gradgrad=False).items()})
            return runs

        checks = [run_check_grads(f, (jnp.asarray(x, dt),), x64=False, label=f"{dt} inputs")
                  for dt in ("float32", "bfloat16")]  # fmt: skip
        cases.append(Case(f"tanh_low_precision_{'bug_10pct' if bug else 'ok'}", "float32 and bfloat16", bug,
                          run_jaxbp(f, S.tanh_reference, x, dtypes=("float32", "bfloat16")), checks, torch_go,
                          notes="jaxbp's twin runs in the low dtype with the dtype's tolerance and finite differences "
                          "in float64; check_grads and gradcheck take finite differences in the input's dtype "
                          "(gradcheck warns that it wants float64; gradgradcheck not run)."))  # fmt: skip
    return cases


def int_output_case() -> Case:
    count = S.custom(lambda x: jnp.sum(x > 0), lambda x, g: (jnp.zeros_like(x),))
    x = S.RNG.standard_normal(3)
    tcount = None if torch is None else torch_custom(lambda x: (x > 0).sum(), lambda x, g: (torch.zeros_like(x),))
    return Case("integer_output", "an integer output", True,
                run_jaxbp(count, lambda x: jnp.sum(x > 0), x, **F64), [run_check_grads(count, (x,))],
                lambda: torch_runs(tcount, (t64(x),)),
                notes="torch's gradgradcheck error comes from calling the function with no arguments: with no "
                "differentiable output it has no cotangents to split off the inputs.")  # fmt: skip


def all_cases() -> list[Case]:
    from checker_trust_cases import all_trust_cases  # the cases of issue 24 (kinks, magnitudes, constants, shapes)

    return [dense_case(), *sin_cases(), *zero_cotangent_cases(), *softplus_cases(), dropout_case(), *xent_cases(),
            *complex_cases(), zero_size_case(), *low_precision_cases(), int_output_case(), *all_trust_cases()]  # fmt: skip


# ------------------------------------------------------------ running and writing


def run_case(case: Case) -> dict:
    case.results["jaxbp"] = case.jaxbp()
    if case.no_reference is not None:
        case.results["jaxbp_no_reference"] = case.no_reference()
    case.results["check_grads"] = [go() for go in case.check_grads]
    if torch is None:
        case.results["torch"] = {"not run": "torch not installed"}
    else:
        case.results["torch"] = case.torch()
    return {"name": case.name, "row": case.row, "planted_bug": case.bug, "notes": case.notes, **case.results}


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""  # fmt: skip
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "torch": torch.__version__ if torch else None,
            "jaxbp": getattr(jaxbp, "__version__", ""), "python": platform.python_version(), "cpu": cpu,
            "backend": jax.default_backend()}  # fmt: skip


def short(result: str) -> str:
    return result.replace("|", "\\|")


def markdown(rows: list[dict], env: dict) -> str:
    """The table: one line per case, each checker's outcomes as measured."""
    lines = [
        "# Gradient checkers compared (measured)",
        "",
        "`python experiments/checker_comparison.py`; "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k != "cpu")
        + f"; CPU: {env['cpu']}.",
        "",
        "jaxbp: `dtypes=('float64',)` unless the case is about dtypes; each case's options are in the JSON. "
        "check_grads: `check_grads(manual, args, order=2, modes=['rev'])` (it never sees the reference). "
        "torch: `gradcheck`/`gradgradcheck` with their defaults unless an option is named. "
        "fail = the checker reported a mismatch; error = it raised something else.",
        "",
        "| case | planted bug | jaxbp.verify_vjp | check_grads | torch |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        if r["notes"]:
            notes.append(f"- {r['name']}: {r['notes']}")
        jb = short(r["jaxbp"]["outcome"])
        if "jaxbp_no_reference" in r:
            jb += f"<br>reference_fn=None: {short(r['jaxbp_no_reference']['outcome'])}"
        cg = "<br>".join(f"{c['setup']}: {short(c['outcome'])}" if len(r["check_grads"]) > 1 else short(c["outcome"])
                         for c in r["check_grads"])  # fmt: skip
        th = "<br>".join(f"{k}: {short(v)}" for k, v in r["torch"].items())
        lines.append(f"| {r['name']} | {'yes' if r['planted_bug'] else 'no (correct)'} | {jb} | {cg} | {th} |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--case", action="append", help="only these cases (default: all)")
    args = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(1)
    start = time.perf_counter()
    cases = [c for c in all_cases() if not args.case or c.name in args.case]
    rows = []
    for case in cases:
        rows.append(run_case(case))
        print(f"{case.name}: jaxbp {rows[-1]['jaxbp']['outcome'][:60]}", file=sys.stderr, flush=True)
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"environment": env, "seconds": round(time.perf_counter() - start, 1), "cases": rows}
    (out / "checker_comparison.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / "checker_comparison.md").write_text(markdown(rows, env))
    print(f"wrote {out / 'checker_comparison.json'} and .md ({data['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
