"""Starting, watching and stopping the control-plane processes (one process group each)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent dies, so even
    a killed test run leaves no component behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(
    name: str, argv: list[str], log_dir: Path, tie_to_parent: bool = False
) -> subprocess.Popen[bytes]:
    """Starts `argv` in its own session (so its whole group can be stopped), logging to
    `log_dir/<name>.log`; with `tie_to_parent` it also dies when this process dies."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"
    return True


def runs(pid: int, executable: str) -> bool:
    """Whether `pid` is alive and was started from `executable`."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return argv0 == executable and alive(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group led by `pid`, SIGKILL after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(
        _pgid_of(entry.name) == pgid
        for entry in os.scandir("/proc")
        if entry.name.isdigit() and alive(int(entry.name))
    )


def _pgid_of(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def log_tail(log_dir: Path, name: str, lines: int = 20) -> str:
    path = log_dir / f"{name}.log"
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    watched: dict[str, int] | None = None,
    log_dir: Path | None = None,
) -> None:
    """Polls `check` until it is true; fails early (with the log tail) if a watched process
    dies, and after `timeout_s` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for name, pid in (watched or {}).items():
            _reap(pid)
            if not alive(pid):
                tail = log_tail(log_dir, name) if log_dir else ""
                raise ProcessError(f"{name} exited while waiting for {what}:\n{tail}")
        time.sleep(0.2)
    raise ProcessError(f"timed out after {timeout_s:.0f}s waiting for {what}")
