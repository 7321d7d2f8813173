"""Process handling of the local cluster: nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.cluster import processes

pytestmark = pytest.mark.timeout(30)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A shell that ignores SIGTERM and has a child: both must be gone after stop().
    pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 60 & echo $! > {pid_file}; wait"
    leader = processes.start("group", ["bash", "-c", script], tmp_path)
    processes.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 5, "child")
    child = int(pid_file.read_text())

    processes.stop(leader.pid, grace_s=1)

    assert not processes.alive(leader.pid)
    assert not processes.alive(child)


def test_tied_processes_die_with_a_killed_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "tied.pid"
    parent_code = (
        "import sys, time; from pathlib import Path; from e2e.cluster import processes; "
        f"p = processes.start('tied', ['sleep', '60'], Path({str(tmp_path)!r}), "
        "tie_to_parent=True); "
        f"Path({str(pid_file)!r}).write_text(str(p.pid)); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=Path(__file__).parents[1])
    try:
        processes.wait_for(lambda: pid_file.exists(), 10, "the tied process")
        tied = int(pid_file.read_text())
        assert processes.alive(tied)

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()

        processes.wait_for(lambda: not processes.alive(tied), 5, "the tied process to die")
    finally:
        parent.kill()


def test_wait_for_reports_a_dead_process_with_its_log(tmp_path: Path) -> None:
    dead = processes.start("broken", ["bash", "-c", "echo bad flag >&2; exit 3"], tmp_path)

    with pytest.raises(processes.ProcessError, match=r"(?s)broken exited.*bad flag"):
        processes.wait_for(lambda: False, 5, "readiness", {"broken": dead.pid}, tmp_path)
