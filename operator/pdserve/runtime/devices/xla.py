"""The XLA device through torch_xla (TPU with PJRT_DEVICE=TPU; XLA's CPU backend in tests).

torch_xla is imported only here and only when the device is used: the main install has no
torch_xla. XLA traces each step lazily and compiles one graph per distinct shape, so the
engine runs it through the bucketed runner (engine/bucketed_runner.py) and cuts each step's
graph with `sync`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch

# A directory for XLA's persistent compilation cache: a restarted pod reuses its graphs.
CACHE_DIR_ENV = "PDSERVE_XLA_CACHE_DIR"


def _torch_xla() -> Any:
    import torch_xla  # the optional dependency (pdserve[tpu])

    return torch_xla


def device() -> torch.device:
    cache = os.environ.get(CACHE_DIR_ENV)
    if cache:
        _persistent_cache(cache)
    return torch.device(_torch_xla().device())


@functools.cache
def _persistent_cache(path: str) -> None:
    import torch_xla.runtime as xr

    xr.initialize_cache(path, readonly=False)


def backend() -> str:
    """"TPU" or "CPU": which PJRT backend the XLA device runs on."""
    _torch_xla()
    import torch_xla.runtime as xr

    return str(xr.device_type())


def sync() -> None:
    """Compile (or fetch from the cache) and run the graph traced since the last sync."""
    _torch_xla().sync()


@dataclass(frozen=True)
class CompileStats:
    graphs: int  # compilations so far in this process
    seconds: float  # their total compile time

    def __str__(self) -> str:
        return f"XLA: {self.graphs} graphs compiled in {self.seconds:.1f}s"


def compile_stats() -> CompileStats:
    _torch_xla()
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    if data is None:
        return CompileStats(0, 0.0)
    count, total_ns = data[0], data[1]
    return CompileStats(int(count), float(total_ns) / 1e9)


def memory_bytes(xla_device: torch.device) -> tuple[int, int] | None:
    """(free, total) device memory where the backend reports it (TPU), else None."""
    _torch_xla()
    import torch_xla.core.xla_model as xm

    try:
        info = xm.get_memory_info(xla_device)
    except (RuntimeError, ValueError, KeyError):
        return None
    limit, used = info.get("bytes_limit"), info.get("bytes_used")
    if not limit or used is None:
        return None
    return int(limit) - int(used), int(limit)
