"""The portability check: the same gradients and the same training run on every device.

``jaxbp devices`` lists the backends and devices JAX sees and, on each device:

1. runs the layer check suite there (manual VJP against ``jax.grad`` on that
   device, :func:`jaxbp.suite.verify_layer`);
2. computes the manual VJP of every registry case with a fixed cotangent and
   compares it with the **golden** float64 gradients computed on the CPU and
   shipped in the package (``jaxbp/golden/golden.npz``). A device without float64
   (TPU) computes in float32 and is held to the layer's float32 tolerance;
3. runs a short fixed-seed training run (``cnn`` on digits, manual gradients,
   float32) and compares its loss curve with the golden CPU losses.

Nothing assumes a backend: the devices come from ``jax.devices(backend)`` for
every backend that initialises, and every computation is placed with
``jax.default_device``. ``write_golden`` regenerates the golden file on the CPU.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import registry, suite as layer_suite
from jaxbp.cases.kit import Case, LayerSpec
from jaxbp.choices import BACKENDS
from jaxbp.verify import numerics
from jaxbp.verify.compiled import checker_jit, x64_scope

GOLDEN_PATH = Path(__file__).parent / "golden" / "golden.npz"
GOLDEN_VERSION = 1

# The golden training run: short, fixed, and cheap enough for every device.
TRAIN_RUN = {"model": "cnn", "dataset": "digits", "batch_size": 32, "steps": 20, "learning_rate": 0.05, "seed": 0}
# float32 losses after 20 steps on another backend: reductions and conv algorithms
# differ in summation order, so the curves drift apart by a few ulps per step.
LOSS_RTOL = 1e-4
GOLDEN_F64_RTOL = 1e-10


@dataclass
class Row:
    """One check on one device."""

    check: str  # "layer[case]" or "train:cnn/digits"
    dtype: str
    error: float | None  # against the golden values
    tolerance: float
    autodiff_ok: bool | None = None  # the layer check suite on this device (None: not run)
    note: str = ""

    @property
    def passed(self) -> bool:
        golden_ok = self.error is not None and self.error <= self.tolerance
        return golden_ok and self.autodiff_ok is not False


@dataclass
class DeviceReport:
    backend: str
    device: str
    device_kind: str
    matmul_precision: str
    float64: bool
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def worst_gradient_error(self) -> float | None:
        errs = [r.error for r in self.rows if not r.check.startswith("train:") and r.error is not None]
        return max(errs, default=None)

    @property
    def loss_difference(self) -> float | None:
        errs = [r.error for r in self.rows if r.check.startswith("train:")]
        return errs[0] if errs else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows):
            row["passed"] = r.passed
        d.update(
            passed=self.passed, worst_gradient_error=self.worst_gradient_error, loss_difference=self.loss_difference
        )
        return d


# ------------------------------------------------------------------ discovery


def list_devices() -> list[jax.Device]:
    """Every device of every backend that initialises here, CPU included."""
    found = []
    for backend in BACKENDS:
        try:
            found += jax.devices(backend)
        except RuntimeError:  # backend not present
            continue
    return found


def supports_float64(device: jax.Device) -> bool:
    try:
        with jax.enable_x64(True), jax.default_device(device):
            x = jnp.arange(3, dtype=jnp.float64)
            return bool(jax.jit(lambda v: v * 2.0)(x).dtype == jnp.float64)
    except Exception:  # noqa: BLE001 - a backend without f64 raises in compilation
        return False


# ------------------------------------------------------------------ the computations


def _cases(layers: Iterable[str] | None) -> list[tuple[LayerSpec, Case]]:
    specs = registry.REGISTRY.values() if layers is None else [registry.get(n) for n in layers]
    return [(spec, case) for spec in specs for case in spec.cases]


def _golden_key(spec: LayerSpec, case: Case, arg: int) -> str:
    return f"grad/{spec.name}/{case.name}/{arg}"


def case_gradients(spec: LayerSpec, case: Case, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The manual VJP of one case with a fixed (seeded) cotangent, per differentiable argument.

    Forward and backward compile as one program (an op-by-op forward would compile every op)."""
    with x64_scope(True):
        args = case.args(seed)
    with x64_scope(dtype == "float64"):
        cast = tuple(jax.tree.map(lambda a: numerics.cast(a, dtype), a) for a in args)  # a list arg: each leaf
        fn = lambda *d: spec.manual(*numerics.substitute(cast, case.argnums, d), **case.kwargs)  # noqa: E731
        diff = tuple(cast[i] for i in case.argnums)
        rng = np.random.default_rng(seed + 1)
        ct = jax.tree.map(lambda o: rng.standard_normal(o.shape).astype(o.dtype), jax.eval_shape(fn, *diff))
        grads = checker_jit(lambda d, c: jax.vjp(fn, *d)[1](c), ())(diff, ct)
        return {_golden_key(spec, case, i): _golden_array(g) for i, g in zip(case.argnums, grads)}


def _golden_array(grad) -> np.ndarray:
    """One argument's gradient as one float64 array: an array as it is, a pytree's leaves
    (``concatenate``'s list of inputs) raveled and joined in tree order."""
    leaves = jax.tree.leaves(grad)
    if len(leaves) == 1 and leaves[0] is grad:
        return np.asarray(grad, np.float64)
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


@functools.lru_cache(maxsize=1)
def _golden_run():
    """Data, model, optimizer and jitted step of the golden run (built once per process)."""
    import optax

    from jaxbp import data, models, train

    run = TRAIN_RUN
    ds = data.load(run["dataset"], seed=run["seed"])
    model = models.get_model(run["model"], ds.num_classes)
    optimizer = optax.sgd(run["learning_rate"], momentum=0.9)
    return ds, model, optimizer, train.make_train_step(model, optimizer, grad="manual")


def training_losses(steps: int | None = None) -> np.ndarray:
    """The float32 losses of the golden training run (manual gradients) on the default device."""
    from jaxbp import data

    run = TRAIN_RUN
    ds, model, optimizer, step_fn = _golden_run()
    _, params, state = model.init(jax.random.key(run["seed"]), ds.input_shape)
    opt_state = optimizer.init(params)
    losses: list[float] = []
    n = steps or run["steps"]
    epoch = 0
    while len(losses) < n:
        batches = data.batches(ds.x_train, ds.y_train, run["batch_size"], seed=run["seed"], epoch=epoch, drop_last=True)
        for xb, yb, n_valid in batches:
            params, opt_state, state, m = step_fn(
                params, opt_state, state, xb, yb, jnp.asarray(n_valid, jnp.int32), jax.random.key(len(losses))
            )
            losses.append(float(m["loss"]))
            if len(losses) == n:
                break
        epoch += 1
    return np.asarray(losses, np.float32)


# ------------------------------------------------------------------ golden file


def write_golden(
    path: str | Path = GOLDEN_PATH,
    *,
    seed: int = 0,
    layers: Iterable[str] | None = None,
    train_steps: int | None = None,
) -> Path:
    """Compute the golden values on the CPU (float64 gradients, float32 losses) and save them atomically.

    ``layers`` and ``train_steps`` restrict the file (the tests write small ones);
    the shipped file covers every registered layer and the whole training run.
    """
    from jaxbp import checkpoint

    cpu = jax.devices("cpu")[0]
    arrays: dict[str, np.ndarray] = {}
    with jax.default_device(cpu):
        for spec, case in _cases(layers):
            arrays.update(case_gradients(spec, case, "float64", seed))
        arrays["train/losses"] = training_losses(train_steps)
    meta = {"version": GOLDEN_VERSION, "seed": seed, "train_run": TRAIN_RUN, "jax": jax.__version__}
    # A checkpoint file: atomic, pickle-free, and checksummed, so a damaged golden file is caught.
    return checkpoint.save(path, arrays, step=0, epoch=0, config=meta)


def load_golden(path: str | Path = GOLDEN_PATH) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The golden arrays and their metadata; a missing or damaged file is a clear error."""
    from jaxbp import checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"golden file {path} not found; create it with `jaxbp devices --write-golden`")
    arrays, meta = checkpoint.load(path)
    golden_meta = meta["config"]
    if golden_meta.get("version") != GOLDEN_VERSION:
        raise ValueError(f"golden file {path} has version {golden_meta.get('version')}, expected {GOLDEN_VERSION}")
    return arrays, golden_meta


# ------------------------------------------------------------------ the check


def check_device(
    device: jax.Device,
    golden: dict[str, np.ndarray],
    *,
    layers: Iterable[str] | None = None,
    matmul_precision: str = "highest",
    seed: int = 0,
    suite: bool = True,
    train_steps: int | None = None,
) -> DeviceReport:
    """Every check on one device. ``suite=False`` skips the manual-vs-autodiff suite (golden only)."""
    f64 = supports_float64(device)
    dtype = "float64" if f64 else "float32"
    report = DeviceReport(device.platform, str(device), device.device_kind, matmul_precision, f64)
    jobs = _cases(layers)
    case = functools.partial(
        _case_row, device=device, golden=golden, dtype=dtype, seed=seed, suite=suite, matmul_precision=matmul_precision
    )
    # cases side by side, as in `jaxbp check`: compiling dominates and runs outside the GIL; the
    # device and precision contexts are per thread, so each case enters them itself
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, len(jobs) or 1))) as pool:
        report.rows += pool.map(lambda job: case(*job), jobs)
    with jax.default_device(device), jax.default_matmul_precision(matmul_precision):
        if "train/losses" in golden:
            want = golden["train/losses"]
            got = training_losses(train_steps or len(want))
            err = float(np.max(np.abs(got - want[: len(got)]) / np.abs(want[: len(got)])))
            run = TRAIN_RUN
            report.rows.append(
                Row(f"train:{run['model']}/{run['dataset']}", "float32", err, LOSS_RTOL, note=f"{len(got)} steps")
            )
    return report


def _case_row(spec, case, *, device, golden, dtype, seed, suite, matmul_precision) -> Row:
    """One registry case on one device: its gradients against the golden ones, and the suite's verdict."""
    with jax.default_device(device), jax.default_matmul_precision(matmul_precision):
        grads = case_gradients(spec, case, dtype, seed)
        errs = []
        for key, g in grads.items():
            if key not in golden:
                raise KeyError(f"golden file has no entry {key}: regenerate it with `jaxbp devices --write-golden`")
            errs.append(numerics.rel_err(g, golden[key])[1])
        tol = GOLDEN_F64_RTOL if dtype == "float64" else spec.rtol_float32
        ok = None
        if suite:
            ok = layer_suite.verify_layer(
                spec, case, dtypes=(dtype,), seed=seed, matmul_precision=matmul_precision
            ).passed
        return Row(f"{spec.name}[{case.name}]", dtype, max(errs, default=0.0), tol, ok)


def check_devices(
    *,
    layers: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    matmul_precision: str = "highest",
    golden_path: str | Path = GOLDEN_PATH,
    suite: bool = True,
    train_steps: int | None = None,
) -> list[DeviceReport]:
    """Every check on every device of ``backends`` (default: all). ``ValueError`` naming the
    flag, before any check runs, for a backend with no device here (``--backend``) or more
    training steps than the golden run holds (``--train-steps``)."""
    golden, _ = load_golden(golden_path)
    available = list_devices()
    devices = [d for d in available if backends is None or d.platform in backends]
    missing = [b for b in backends or () if not any(d.platform == b for d in available)]
    if missing:
        seen = ", ".join(sorted({d.platform for d in available})) or "none"
        raise ValueError(f"--backend {', '.join(missing)}: JAX sees no such device here (backends: {seen})")
    if train_steps is not None and "train/losses" in golden and train_steps > len(golden["train/losses"]):
        raise ValueError(f"--train-steps {train_steps}: the golden run holds only {len(golden['train/losses'])} steps")
    return [
        check_device(d, golden, layers=layers, matmul_precision=matmul_precision, suite=suite, train_steps=train_steps)
        for d in devices
    ]


def format_reports(reports: Sequence[DeviceReport]) -> str:
    lines = []
    for r in reports:
        worst = "-" if r.worst_gradient_error is None else f"{r.worst_gradient_error:.1e}"
        loss = "-" if r.loss_difference is None else f"{r.loss_difference:.1e}"
        lines += [
            f"{r.backend} {r.device} ({r.device_kind}), matmul precision {r.matmul_precision}, "
            f"float64 {'yes' if r.float64 else 'no'}: {'PASS' if r.passed else 'FAIL'} "
            f"(worst gradient error {worst}, loss-curve difference {loss})",
            f"  {'check':<44} {'dtype':<8} {'vs golden':>10} {'tol':>8} {'autodiff':>9}  result",
        ]
        for row in r.rows:
            err = "-" if row.error is None else f"{row.error:.1e}"
            ad = {True: "ok", False: "FAIL", None: "-"}[row.autodiff_ok]
            note = f"  ({row.note})" if row.note else ""
            lines.append(
                f"  {row.check:<44} {row.dtype:<8} {err:>10} {row.tolerance:8.0e} {ad:>9}  "
                f"{'ok' if row.passed else 'FAIL'}{note}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()
