"""Data parallelism through JAX's own sharding, and several hosts through ``jax.distributed``.

jaxbp writes no communication code. A training run over ``D`` devices builds a
1-D :class:`jax.sharding.Mesh` with axis ``"data"``, places each global batch
with ``NamedSharding(mesh, P("data"))`` (rows split over the devices) and the
parameters with ``NamedSharding(mesh, P())`` (replicated), and lets ``jax.jit``
compile the same train step it compiles for one device: the step is written over
the *global* batch, so the mean loss, the batch-norm statistics and the gradient
reductions become cross-device all-reduces that XLA inserts. The hand-derived
VJPs run unchanged: they see global arrays, exactly as on one device.

With several processes (hosts), :func:`initialize` calls
``jax.distributed.initialize`` (on CPU with gloo collectives), every process
builds the mesh over all global devices, and each process supplies only its own
slice of every global batch (:func:`global_batch`), so no process ever loads
another's rows into memory.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxbp.choices import DEFAULT_COORDINATOR_TIMEOUT_S

DATA_AXIS = "data"


class CoordinatorUnreachable(RuntimeError):
    """The coordinator of a multi-process run did not answer within the timeout."""


@dataclass(frozen=True)
class DistributedConfig:
    """Where the processes of a multi-host run find each other (all None: one process)."""

    coordinator: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = DEFAULT_COORDINATOR_TIMEOUT_S  # how long to wait for the coordinator and the other processes

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DistributedConfig:
        """Read ``JAXBP_COORDINATOR``, ``JAXBP_NUM_PROCESSES`` and ``JAXBP_PROCESS_ID``;
        ``ValueError`` naming the variable when a count is not an integer.

        Cluster environments that ``jax.distributed.initialize`` detects by itself
        (SLURM, Open MPI, Cloud TPU) need none of these: pass ``auto=True`` there.
        """
        env = os.environ if environ is None else environ

        def count(name: str) -> int | None:
            text = env.get(name)
            if not text:
                return None
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{name}={text!r} is not an integer") from None

        return cls(env.get("JAXBP_COORDINATOR") or None, count("JAXBP_NUM_PROCESSES"), count("JAXBP_PROCESS_ID"))

    @property
    def enabled(self) -> bool:
        return self.coordinator is not None or self.num_processes is not None


def initialize(config: DistributedConfig, *, auto: bool = False) -> None:
    """Join a multi-process run with ``jax.distributed.initialize``; a no-op for one process.

    Must run before anything touches a JAX device. On CPU, cross-process
    collectives go through gloo. A process other than 0 first checks that the
    coordinator accepts connections, and raises :class:`CoordinatorUnreachable` after
    ``config.timeout_s`` seconds if it does not (XLA's own client would wait minutes and
    then abort the process). Process 0 waits ``config.timeout_s`` seconds for the others;
    if they do not all join, XLA aborts the process (that cannot be caught from Python).
    """
    if not (config.enabled or auto):
        return
    if config.enabled:
        missing = [k for k in ("coordinator", "num_processes", "process_id") if getattr(config, k) is None]
        if missing:
            raise ValueError(
                f"a multi-process run needs --coordinator, --num-processes and --process-id; missing {missing}"
            )
        if not 0 <= config.process_id < config.num_processes:
            raise ValueError(f"--process-id {config.process_id} must be in [0, {config.num_processes})")
        if config.timeout_s < 1:
            raise ValueError(f"--coordinator-timeout must be >= 1 second, got {config.timeout_s}")
        if config.process_id != 0:
            wait_for_coordinator(config.coordinator, config.timeout_s)
    if _platforms_include_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if config.enabled:
        jax.distributed.initialize(
            config.coordinator, config.num_processes, config.process_id, initialization_timeout=config.timeout_s
        )
    else:
        jax.distributed.initialize()


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; :class:`CoordinatorUnreachable`
    after ``timeout_s`` seconds; ``ValueError`` for an address that is not ``host:port``."""
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit()):
        raise ValueError(f"--coordinator {address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout_s)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise CoordinatorUnreachable(
                    f"the coordinator {address} did not answer within {timeout_s:g} s ({err.strerror or err}); "
                    "start process 0 first, check the address, or raise --coordinator-timeout"
                ) from None
            time.sleep(0.2)


def _platforms_include_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or jax.config.jax_platforms or ""
    return platforms == "" or "cpu" in platforms.split(",")


def is_primary() -> bool:
    """Process 0 writes checkpoints, metrics and plots; the others only compute."""
    return jax.process_index() == 0


def make_mesh(devices: int | str | None = None) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (a count, ``"all"``, or None for one device).

    With several processes the count is global and must be ``"all"`` or a
    multiple of the process count (each process contributes its local devices).
    """
    available = jax.devices()
    if devices is None:
        chosen = [jax.local_devices()[0]] if jax.process_count() == 1 else available
    elif devices == "all":
        chosen = available
    else:
        n = int(devices)
        if n < 1:
            raise ValueError(f"--devices must be >= 1 or 'all', got {devices!r}")
        if n > len(available):
            raise ValueError(
                f"--devices {n} asks for more devices than the {len(available)} visible "
                f"({', '.join(sorted({d.platform for d in available}))})"
            )
        if jax.process_count() > 1 and n != len(available):
            raise ValueError(f"a multi-process run uses every device: pass --devices all, not {n}")
        chosen = available[:n]
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n} devices of the mesh; "
            f"choose a multiple of {n} (for example {max(n, batch_size // n * n)})"
        )
    local = jax.process_count()
    if batch_size % local:
        raise ValueError(f"batch size {batch_size} is not divisible by the {local} processes")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of ``tree`` (parameters, optimiser state) on every device of the mesh."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    # Every process holds the same host values; assemble the global replicated array from them.
    def place(x):
        if _is_key(x):  # typed PRNG keys travel as their raw key data
            data = place(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))

    return jax.tree.map(place, tree)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process supplies."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def global_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Shard global-batch arrays (host numpy, full batch on every process) over the mesh.

    Each process contributes only its own rows (``process_slice``); on one process
    this is a plain sharded ``device_put``.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, sharding) for a in arrays)
    out = []
    for a in arrays:
        rows = process_slice(a.shape[0])
        out.append(jax.make_array_from_process_local_data(sharding, np.ascontiguousarray(a[rows]), a.shape))
    return tuple(out)


def agree(ok: bool) -> bool:
    """Process 0's ``ok``, on every process (a broadcast; ``ok`` itself with one process):
    lets the others stop with process 0 when it refuses to start, instead of waiting for it
    in the first collective."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def max_over_processes(mesh: Mesh, value: int) -> int:
    """The largest ``value`` any process passes (``value`` itself with one process).

    A collective: every process calls it at the same point of the run. Each process places
    its value on its own devices of ``mesh`` (one global array, rows split over the data
    axis, as :func:`global_batch` does) and a jitted max reduces it over all of them. The
    training loop shares its stop decision this way after every step.
    """
    if jax.process_count() == 1:
        return value
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    rows = np.full((local,), value, np.int32)
    array = jax.make_array_from_process_local_data(batch_sharding(mesh), rows, (mesh.devices.size,))
    return int(to_host(_max(array)))


_max = jax.jit(lambda a: a.max())


def to_host(tree: Any) -> Any:
    """Fetch arrays to host numpy on every process (replicated ones from the local copy)."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)

    def fetch(x):
        if _is_key(x):  # a PRNG key stays a key (the checkpoint stores its key data)
            local = x.addressable_data(0) if not x.is_fully_addressable else x
            return jax.random.wrap_key_data(fetch(jax.random.key_data(local)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)
