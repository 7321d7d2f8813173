"""The one place that picks the torch device and dtype for the runtime.

The device follows `probe.choose_device` (`auto` resolves only when unambiguous, never to the
host CPU beside accelerators the container holds); `auto` dtype means bfloat16 on CUDA and TPU
and float32 on CPU and XLA's CPU backend (CPU bfloat16 matmuls are slow on most hosts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from pathlib import Path

import torch

from pdserve.runtime.devices.probe import choose_device, probe

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto", devices: int = 1) -> torch.device:
    """Turn a device choice into a torch.device for a replica over `devices` devices; a
    DeviceError for an unusable one."""
    kind = choose_device(name, probe(), devices)
    if kind == "xla":
        from pdserve.runtime.devices import xla

        return xla.device()
    return torch.device(kind)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn a dtype choice into a torch.dtype for `device`."""
    if name == "auto":
        return torch.bfloat16 if _has_bfloat16_units(device) else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    if name == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 is not supported on CPU; use float32 or bfloat16")
    return _DTYPES[name]


def _has_bfloat16_units(device: torch.device) -> bool:
    if device.type == "xla":
        from pdserve.runtime.devices import xla

        return xla.backend() == "TPU"
    return device.type == "cuda"


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype for "float32" | "bfloat16" | "float16"."""
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype name {name!r}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a torch dtype, as used on the command line and in the KV handshake."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU); used around timings."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_cpu_memory_mapped() -> bool:
    """Make glibc serve large allocations from its heap and keep freed memory: otherwise every
    multi-megabyte activation tensor is a fresh mmap whose page faults cost more than the math.
    Process-wide; returns False where glibc's mallopt is unavailable."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 31))


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpus_from_cgroup_quota(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") allows, rounded up."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def torch_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: `requested`, else (unless OMP_NUM_THREADS is set) no more
    than the container's CPU limit and the CPUs this process may run on. torch alone counts
    every core of the node, and a pod limited to 4 CPUs running 64 threads is throttled into
    crawling."""
    if requested is None and "OMP_NUM_THREADS" not in os.environ:
        limits = [torch.get_num_threads(), len(os.sched_getaffinity(0))]
        try:
            quota = cpus_from_cgroup_quota(CGROUP_CPU_MAX.read_text())
        except (OSError, ValueError):
            quota = None
        requested = min(limits + ([quota] if quota else []))
    if requested is not None:
        torch.set_num_threads(requested)
    return torch.get_num_threads()
