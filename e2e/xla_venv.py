"""`python -m e2e.xla_venv`: the virtual environment XLA runs in for the tests (`pdserve[tpu]`:
the torch / torch_xla pair PyPI serves together, and libtpu), beside the main one, whose torch
is newer. Created with uv (its cache keeps a rebuild cheap) and reused while pyproject.toml is
unchanged. The tests run it with PJRT_DEVICE=CPU: XLA's CPU backend.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV = REPO_ROOT / ".venv-xla"
STAMP = VENV / ".installed"
INSTALL_TIMEOUT_S = 1800  # cold: torch and its CUDA libraries, several GB


def python() -> Path:
    return VENV / "bin" / "python"


def _wanted() -> str:
    return hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure() -> Path:
    """The environment's python, installed first when missing or stale."""
    if STAMP.is_file() and STAMP.read_text() == _wanted() and python().exists():
        return python()
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to create .venv-xla: `make venv` installs it")
    if not python().exists():
        subprocess.run([uv, "venv", "--quiet", "--python", "python3.11", str(VENV)], check=True,
                       timeout=300)
    subprocess.run([uv, "pip", "install", "--quiet", "-e", f"{REPO_ROOT}[tpu]"], check=True,
                   timeout=INSTALL_TIMEOUT_S, env={**os.environ, "VIRTUAL_ENV": str(VENV)})
    STAMP.write_text(_wanted())
    return python()


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
