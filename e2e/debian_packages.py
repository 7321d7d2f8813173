"""Debian packages the tests need, installed with apt-get when missing (CI runs as root on a
clean machine; elsewhere a missing package is a clear error, never a silent skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class MissingPackageError(RuntimeError):
    pass


def ensure(files_by_package: dict[str, str]) -> None:
    """Installs each package whose file (an absolute path or a command name) is missing."""
    missing = [pkg for pkg, probe in files_by_package.items() if not _present(probe)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise MissingPackageError(
            f"missing Debian packages {', '.join(missing)}; installing them needs root "
            f"(apt-get install {' '.join(missing)})")
    if shutil.which("apt-get") is None:
        raise MissingPackageError(f"missing {', '.join(missing)} and no apt-get to install "
                                  f"them: install {' '.join(missing)} with your package manager")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MissingPackageError(f"`{' '.join(command)}` failed: {proc.stderr[-2000:]}")
    still = [pkg for pkg, probe in files_by_package.items() if not _present(probe)]
    if still:
        raise MissingPackageError(f"apt-get installed {', '.join(still)} but "
                                  f"{', '.join(files_by_package[p] for p in still)} is missing")


def _present(probe: str) -> bool:
    return Path(probe).exists() if probe.startswith("/") else shutil.which(probe) is not None
