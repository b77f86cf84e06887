"""Memory plans: what a piece of work will take, against what the machine can give, before any of
it starts.

Every command that can be asked for more than the machine holds (``simulate.grid``,
``simulate.recommend``, ``simulate.train.run``) estimates its memory from these sizes and refuses,
in one line, what does not fit (:func:`refusal`), instead of being ended by the kernel's
out-of-memory killer or a MemoryError after minutes of work. The estimates are upper bounds of the
arrays the work holds at once; the limit is :func:`available_memory`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

JAX_PROCESS_BYTES = 500e6
"""Memory of a process that has trained with JAX, beyond the arrays (measured: 520 MB peak for a
tiny network on digits)."""


def network_weights(input_dim: int, width: int, depth: int, n_classes: int) -> int:
    """Weights of a training network of ``depth`` hidden layers of ``width``:
    P = d N + (L - 1) N^2 + N C."""
    return input_dim * width + (depth - 1) * width**2 + width * n_classes


def train_workspace(
    input_dim: int, n_classes: int, n_train: int, n_test: int, width: int, depth: int, batch: int
) -> float:
    """Bytes of one training run, an upper estimate in float32: the weights, their gradients and
    the optimiser's two moments (4 P); what the backward pass keeps (3 arrays of batch x width per
    layer); a forward pass over a whole set (2 arrays of n x width at a time); the images twice
    (numpy and JAX); and the JAX process itself (:data:`JAX_PROCESS_BYTES`)."""
    floats = 4 * network_weights(input_dim, width, depth, n_classes) + 3 * batch * depth * width
    floats += 2 * max(n_train, n_test) * width + 2 * (n_train + n_test) * input_dim
    return 4 * floats + JAX_PROCESS_BYTES


def engine_output(nets: int, depth: int, inputs: int) -> int:
    """Bytes of a Monte Carlo engine's output for one cell (``simulate.engines.Outputs``): every
    per-network variable at every layer 0..depth, in float64."""
    from simulate.schema import CELL_VARIABLES  # (the schema imports the engines: not at import)

    lengths = {"net": nets, "layer": depth + 1, "input": inputs}
    lengths["pair"] = inputs * (inputs - 1) // 2
    return sum(8 * math.prod(lengths[d] for d in var.dims) for var in CELL_VARIABLES.values())


def available_memory() -> int | None:
    """The memory a command may take, in bytes: MemAvailable from /proc/meminfo, or less where this
    process's control group (a container, a batch job) has a memory limit nearer its usage
    (:func:`cgroup_room`); None where neither can be read."""
    room = list(cgroup_room())
    try:
        with open("/proc/meminfo") as f:
            room += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    return min(room, default=None)


def cgroup_room() -> Iterator[int]:
    """Limit minus usage of this process's memory cgroup and of each one above it (cgroup v2:
    ``memory.max`` and ``memory.current``; v1: ``memory.limit_in_bytes`` and
    ``memory.usage_in_bytes``), where they can be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, files = Path("/sys/fs/cgroup"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        group = base / path.lstrip("/")
        for where in (group, *group.parents[: len(group.parents) - len(base.parents)]):
            try:
                limit, usage = ((where / name).read_text().strip() for name in files)
                if limit != "max":
                    yield int(limit) - int(usage)
            except (OSError, ValueError):
                continue


def refusal(need: float, what: str, change: str) -> str | None:
    """The one-line refusal of work that needs ``need`` bytes where less is available
    (``what`` names the work, ``change`` the flags that shrink it), or None when it fits or the
    limit cannot be read."""
    available = available_memory()
    if available is None or need <= available:
        return None
    return (
        f"{what} needs about {human_size(need)} of memory, {human_size(available)} is available "
        f"(lower {change})"
    )


def human_size(n: float) -> str:
    """Bytes for people: 12.3 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
