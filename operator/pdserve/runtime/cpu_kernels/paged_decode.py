"""The CPU paged-decode attention kernel (paged_decode.c): built once per machine with the
system C compiler, cached, and called through ctypes.

The build links libgomp, the OpenMP runtime torch ships and has already loaded, so the kernel
shares torch's threads instead of starting a second pool. Without a C compiler (or with
PDSERVE_CPU_KERNELS=0) `load` returns None and decodes go through the gather + SDPA path that
CUDA uses.
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

SOURCE = Path(__file__).with_name("paged_decode.c")
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")
# The limits paged_decode.c checks; shapes past them use the SDPA path.
MAX_Q_HEADS, MAX_HEAD_DIM, MAX_Q_WIDTH, MAX_BLOCK_SIZE, MAX_SCORES = 256, 512, 16384, 128, 8192
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def supports(num_q_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> bool:
    return (
        dtype in _DTYPES
        and num_q_heads <= MAX_Q_HEADS
        and head_dim <= MAX_HEAD_DIM
        and num_q_heads * head_dim <= MAX_Q_WIDTH
        and block_size <= MAX_BLOCK_SIZE
        and num_q_heads * block_size <= MAX_SCORES
    )


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
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join((compiler, *FLAGS)).encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"paged_decode-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a unique name and renamed: workers starting together never load a partial file.
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], check=True,
                   capture_output=True, text=True, timeout=120)  # fmt: skip
    partial.replace(target)
    return target


@functools.cache
def load() -> ctypes.CDLL | None:
    """The built kernel library, or None (logged once) where it cannot be built here."""
    if os.environ.get("PDSERVE_CPU_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler found: CPU decode attention uses the slower gather + SDPA path")
        return None
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building the CPU attention kernel failed (%s): using gather + SDPA", detail)
        return None
    function = library.paged_decode
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6 + [
        ctypes.c_float, ctypes.c_int, ctypes.c_int
    ]  # fmt: skip
    return library


def paged_decode(
    library: ctypes.CDLL,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    out: torch.Tensor,
    scale: float,
) -> None:
    """out[s] = attention of q[s] [Hq, D] over the first context_lens[s] tokens of its blocks.

    q, out [S, Hq, D]; caches [num_blocks, block_size, Hkv, D]; block_tables int64 [S, width];
    context_lens int64 [S]. All contiguous, on CPU, same dtype (float32 or bfloat16)."""
    num_seqs, num_q_heads, head_dim = q.shape
    status = library.paged_decode(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),
        context_lens.data_ptr(), out.data_ptr(), num_seqs, num_q_heads, k_cache.shape[2],
        head_dim, k_cache.shape[1], block_tables.shape[1], scale, _DTYPES[q.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise ValueError("paged_decode: shapes over the kernel's limits (check supports())")
