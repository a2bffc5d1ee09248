"""How much memory a size would need, against what this process can have: a size that cannot
fit (a TTT chunk of 10⁹ frames, a day-long demo) is refused up front with the figure it needs,
instead of a traceback from the allocator deep in the run (or a host swapping for hours).

What the process can have on the CPU is the smallest of: the kernel's ``MemAvailable``, the
cgroup's limit less its usage (a SLURM job's allocation), and the address-space limit
(``ulimit -v``) less the address space already mapped. On CUDA it is the device's free memory.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path


class MemoryFitError(ValueError):
    """A configured size whose buffers cannot fit in the memory this process can have."""


def gigabytes(n: int | float) -> str:
    x = n / 1e9
    return f"{x:.3g} GB" if x < 1000 else f"{x:,.0f} GB"


def available_bytes(device: str = "cpu") -> int | None:
    """Bytes this process can still allocate on ``device`` (None when it cannot be told)."""
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    limits = [_meminfo_kb("MemAvailable"), _cgroup_headroom(), _address_space_headroom()]
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def refuse_unless_fits(needed: int, device: str, what: str) -> None:
    """Raise :class:`MemoryFitError` (``what``: the key and value, e.g. ``ttt.chunk_size
    1000000000``) when ``needed`` bytes exceed what ``device`` has available."""
    have = available_bytes(device)
    if have is not None and needed > have:
        raise MemoryFitError(f"{what}: needs at least {gigabytes(needed)} of memory on {device}, "
                             f"{gigabytes(have)} available")


def _meminfo_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """cgroup v2 ``memory.max`` less ``memory.current`` of this process's group."""
    try:
        rel = Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip()
        group = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((group / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _address_space_headroom() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = _status_kb("VmSize")
    return soft - (mapped or 0)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


__all__ = ["MemoryFitError", "available_bytes", "gigabytes", "refuse_unless_fits"]
