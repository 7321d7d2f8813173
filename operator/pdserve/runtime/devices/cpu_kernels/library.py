"""The CPU kernel library (paged_decode.c, elementwise.c): built once per machine with the
system C compiler, cached, and called through ctypes.

The build links libgomp, the OpenMP runtime torch ships and has already loaded, so the kernels
share torch's threads instead of starting a second pool. Without a C compiler (or with
PDSERVE_CPU_KERNELS=0) `load` returns None and the model runs the torch ops CUDA runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "paged_decode.c", HERE / "elementwise.c")
HEADERS = (HERE / "rows.h",)
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
# Linked apart, without -ffast-math: linked with it, GCC adds crtfastmath.o, whose constructor
# turns on flush-to-zero for the whole process that loads the library (every float op of the
# worker, Python's included, then loses subnormals).
LINK_FLAGS = ("-shared", "-fopenmp")
# The storage dtypes the kernels take, as their `bf16` flag.
DTYPE_FLAGS = {torch.float32: 0, torch.bfloat16: 1}

_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "paged_decode": (ctypes.c_int, [_P] * 6 + [_I64] * 6 + [_F32, _INT, _INT]),
    "add_rms_norm": (None, [_P] * 4 + [_I64] * 2 + [_F32, _INT, _INT]),
    "silu_mul": (None, [_P] * 2 + [_I64] * 2 + [_INT, _INT]),
    "rotate_halves": (None, [_P] * 3 + [_I64] * 4 + [_INT, _INT]),
}


def _cache_dir() -> Path:
    configured = os.environ.get("PDSERVE_KERNEL_CACHE")
    if configured:
        return Path(configured)
    home = Path.home() / ".cache" / "pdserve" / "kernels"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"pdserve-kernels-{os.getuid()}"  # read-only home


def _cpu_signature() -> str:
    """-march=native code is only valid on this CPU model: the cache key includes it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    first = {line.split(":")[0].strip(): line for line in reversed(lines) if ":" in line}
    return f"{first.get('model name', '')}\n{first.get('flags', '')}"


def _build(compiler: str) -> Path:
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        digest.update(path.read_bytes())
    digest.update(" ".join((compiler, *COMPILE_FLAGS, *LINK_FLAGS)).encode()
                  + _cpu_signature().encode())
    target = _cache_dir() / f"pdserve-cpu-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a unique name and renamed: workers starting together never load a partial file.
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(dir=target.parent) as objects:
        outputs = []
        for source in SOURCES:
            output = Path(objects) / f"{source.stem}.o"
            subprocess.run([compiler, *COMPILE_FLAGS, "-c", str(source), "-o", str(output)],
                           check=True, capture_output=True, text=True, timeout=120)
            outputs.append(str(output))
        subprocess.run([compiler, *LINK_FLAGS, *outputs, "-o", str(partial), "-lm"],
                       check=True, capture_output=True, text=True, timeout=120)
    partial.replace(target)
    return target


@functools.cache
def load() -> ctypes.CDLL | None:
    """The built kernel library, or None (logged once) where it cannot be built here."""
    if os.environ.get("PDSERVE_CPU_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler found: the CPU runs the slower torch-only path")
        return None
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building the CPU kernels failed (%s): using the torch-only path", detail)
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    return library


def for_tensor(x: torch.Tensor) -> ctypes.CDLL | None:
    """The library when the kernels can take this tensor (CPU, float32/bfloat16), else None."""
    if x.device.type != "cpu" or x.dtype not in DTYPE_FLAGS:
        return None
    return load()
