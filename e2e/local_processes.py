"""Real `pdserve worker` / `pdserve router` processes on free loopback ports (tests, bench)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Process:
        log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        return self

    def wait_ready(self, path: str = "/ready", timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if http_get(self.url + path)[0] == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait()


def pdserve(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "pdserve", *args]


def worker(
    role: str, model: str, logs: Path, *extra: str, env: dict[str, str] | None = None,
    python: str = sys.executable, device: str = "cpu",
) -> Process:
    port, kv_port = free_port(), free_port()
    args = pdserve(
        "worker",
        "--role",
        role,
        "--model",
        model,
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--kv-port",
        str(kv_port),
        "--device",
        device,
        "--kv-timeout",
        "10",
        *extra,
        python=python,
    )
    return Process(f"{role}-{port}", args, logs / f"{role}-{port}.log", env or {}, port)


def router(prefill: list[Process], decode: list[Process], logs: Path, *extra: str) -> Process:
    """A `pdserve router` on loopback. Its disaggregation is `always` unless `extra` names one:
    the tests that run it check the KV handoff, which the conditional mode skips on an idle
    decode worker."""
    port = free_port()
    if "--disaggregation" not in extra:
        extra = (*extra, "--disaggregation", "always")
    args = pdserve(
        "router",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--resolve-interval",
        "1",
        "--decode-endpoints",
        ",".join(p.address for p in decode),
        *extra,
    )
    if prefill:
        args += ["--prefill-endpoints", ",".join(p.address for p in prefill)]
    return Process(f"router-{port}", args, logs / f"router-{port}.log", {}, port)


@contextlib.contextmanager
def running(*processes: Process, ready_path: str = "/ready") -> Iterator[None]:
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready(ready_path)
        yield
    finally:
        for process in processes:
            process.stop()


def metric(url: str, name: str) -> float:
    """Sum of a metric's samples in a /metrics page."""
    total = 0.0
    for line in http_get(url + "/metrics")[1].splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_by_label(url: str, name: str, label: str) -> dict[str, float]:
    """A labelled metric's samples in a /metrics page, by one label's value."""
    counts: dict[str, float] = {}
    for line in http_get(url + "/metrics")[1].splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            key = labels.split(f'{label}="')[1].split('"')[0]
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def engine_debug(process: Process) -> dict:
    return json.loads(http_get(process.url + "/debug/engine")[1])


def wait_for_tiers(gateway: Process, timeout: float = 30.0) -> None:
    """Until the router has discovered a ready prefill and a ready decode worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(http_get(gateway.url + "/ready")[1])
        if status.get("prefill") and status.get("decode"):
            return
        time.sleep(0.2)
    raise TimeoutError("the router did not discover both tiers")


@contextlib.contextmanager
def pd_stack(model: str, logs: Path, *, prefill_args: tuple[str, ...] = (),
             both_args: tuple[str, ...] = (), short_prompt_threshold: int = 8
             ) -> Iterator[dict[str, Process]]:
    """A prefill and a decode worker behind the router, and a `both` worker beside them to
    compare against (the same model): {"prefill", "decode", "both", "router"}."""
    prefill, decode, both = (worker("prefill", model, logs, *prefill_args),
                             worker("decode", model, logs), worker("both", model, logs, *both_args))
    with running(prefill, decode, both):
        gateway = router([prefill], [decode], logs, "--short-prompt-threshold",
                         str(short_prompt_threshold))
        with running(gateway):
            wait_for_tiers(gateway)
            yield {"prefill": prefill, "decode": decode, "both": both, "router": gateway}
