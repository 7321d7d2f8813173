"""A real `pdserve worker` in a subprocess, for the server tests (not a test module)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_NAME = "tiny"


def tiny_model_dir(tmp_path_factory) -> Path:
    """`pdserve model init` once per test session, shared by the server test modules."""
    directory = tmp_path_factory.getbasetemp() / "pdserve-tiny-model"
    if not (directory / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "pdserve", "model", "init", str(directory)],
                       check=True, capture_output=True)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    def __init__(self, model_dir: Path, *extra_args: str, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pdserve", "worker", "--role", "both", "--model",
             str(model_dir), "--served-model-name", MODEL_NAME, "--host", "127.0.0.1",
             "--port", str(self.port), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if self.get_status("/ready") == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def get_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
            return json.loads(response.read())

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as response:
            return response.read().decode()

    def wait_engine_idle(self, timeout: float = 30.0) -> dict:
        """Poll /debug/engine until no request holds a KV block; returns the last stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.get_json("/debug/engine")
            if is_idle(stats) or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def is_idle(stats: dict) -> bool:
    return (stats["num_running"] == 0 and stats["num_waiting"] == 0
            and stats["active_streams"] == 0 and stats["num_free_blocks"] == stats["num_blocks"])


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return 0.0
