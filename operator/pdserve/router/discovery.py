"""Worker discovery and health for one tier (prefill or decode).

Workers come from a static `host:port` list or from the DNS name of a headless Service, re-resolved
every interval (each A record is one ready pod). Every interval each worker's `GET /load` (JSON:
readiness, queue, KV usage, KV port; `GET /ready` for a worker without it) is polled; a worker
that fails it is out of rotation until a later poll succeeds. A proxied request that cannot
connect takes its worker out at once.

PDSERVE_RESOLVE_OVERRIDE (JSON `{"name:port": ["host:port", ...]}`) replaces DNS answers for the
given names: running the operator's rendered command lines as local processes, where cluster DNS
names must point at loopback ports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass, field

import aiohttp

from pdserve.router.routing import WorkerLoad

log = logging.getLogger(__name__)
RESOLVE_OVERRIDE_ENV = "PDSERVE_RESOLVE_OVERRIDE"


def parse_endpoints(value: str) -> list[str]:
    """`h:p,h:p` -> ["h:p", ...], with a clear error for anything else."""
    endpoints = [item.strip() for item in value.split(",") if item.strip()]
    for item in endpoints:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad endpoint {item!r}: expected host:port")
    return endpoints


@dataclass
class WorkerState:
    address: str  # host:port of the worker's HTTP server
    healthy: bool = False
    kv_port: int | None = None
    load: WorkerLoad = field(default_factory=WorkerLoad)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def kv_address(self) -> str | None:
        if self.kv_port is None:
            return None
        return f"{self.address.rpartition(':')[0]}:{self.kv_port}"


class WorkerSet:
    """The workers of one tier, from a static list or a DNS name."""

    def __init__(self, tier: str, endpoints: list[str] | None = None,
                 service: str | None = None) -> None:
        if endpoints and service:
            raise ValueError(f"{tier}: give static endpoints or a service name, not both")
        if service:
            parse_endpoints(service)
        self.tier = tier
        self.service = service
        self.workers: dict[str, WorkerState] = {a: WorkerState(a) for a in endpoints or []}

    @property
    def configured(self) -> bool:
        return bool(self.service or self.workers)

    def healthy_loads(self) -> dict[str, WorkerLoad]:
        return {a: w.load for a, w in self.workers.items() if w.healthy}

    def mark_unhealthy(self, address: str) -> None:
        worker = self.workers.get(address)
        if worker is not None and worker.healthy:
            log.warning("%s worker %s taken out of rotation", self.tier, address)
            worker.healthy = False

    async def resolve(self) -> None:
        if not self.service:
            return
        try:
            addresses = await resolve_service(self.service)
        except OSError as exc:
            log.warning("cannot resolve %s service %s: %s", self.tier, self.service, exc)
            return
        for address in addresses:
            self.workers.setdefault(address, WorkerState(address))
        for gone in set(self.workers) - set(addresses):
            del self.workers[gone]

    async def poll(self, session: aiohttp.ClientSession, timeout: float = 2.0) -> None:
        await asyncio.gather(*(self._poll_one(session, w, timeout)
                               for w in list(self.workers.values())))

    async def _poll_one(self, session: aiohttp.ClientSession, worker: WorkerState,
                        timeout: float) -> None:
        limit = aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.get(f"{worker.url}/load", timeout=limit) as resp:
                payload = await resp.json() if resp.status in (200, 503) else None
            if payload is None:  # a worker without /load (role both): readiness only
                async with session.get(f"{worker.url}/ready", timeout=limit) as resp:
                    payload = {"ready": resp.status == 200}
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError):
            payload = {}
        ready = bool(payload.get("ready"))
        if ready != worker.healthy:
            log.info("%s worker %s %s", self.tier, worker.address,
                     "is ready" if ready else "is not ready: out of rotation")
        worker.healthy = ready
        if ready:
            kv_port = payload.get("kv_port")
            worker.kv_port = int(kv_port) if kv_port else None
            worker.load.waiting = int(payload.get("num_waiting", 0))
            worker.load.running = int(payload.get("num_running", 0))
            worker.load.kv_usage = float(payload.get("kv_usage", 0.0))
            worker.load.max_num_seqs = int(payload.get("max_num_seqs", 0))
            free_blocks = payload.get("num_free_blocks")
            worker.load.free_blocks = int(free_blocks) if free_blocks is not None else None
            worker.load.block_size = int(payload.get("block_size") or 0)
            identity = payload.get("identity")
            worker.load.identity = str(identity) if identity else None


async def resolve_service(service: str) -> list[str]:
    """All `ip:port` a `name:port` resolves to (a headless Service: one per ready pod)."""
    override = os.environ.get(RESOLVE_OVERRIDE_ENV)
    if override:
        table = json.loads(override)
        if service in table:
            return list(table[service])
    host, _, port = service.rpartition(":")
    infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if address not in addresses:
            addresses.append(address)
    return addresses
