"""`nixl` transport: the decode worker READs the missing blocks from the prefill worker's pool
straight into its own reserved blocks with NIXL (UCX underneath: shared memory or cross-memory
attach between processes of one host, TCP or RDMA between hosts, CUDA IPC / GPUDirect for device
memory).

Each worker process has one NIXL agent with its KV pool registered once (host memory on CPU
pools, device memory on CUDA pools). Right after ACCEPT (and AUTH) both sides send an XFER_META
frame: the agent's metadata, where the pool lies (base address, blocks, memory kind) and the
operation (READ; an older peer, which writes instead, is refused), so no metadata service is
needed. Per transfer, after NEED, the prefill side sends its source block ids (XFER_BLOCKS);
the decode side checks them against the prefill's region, builds descriptor lists by block id
(runs of consecutive blocks on both sides merged, one descriptor per (layer, K/V) plane and
run), posts one READ carrying a notification tag and polls it to completion. The prefill side,
holding its blocks until ACK, polls for the tag's notification meanwhile (which also progresses
its agent: UCX's TCP transport needs the read's target to progress), then both go on to DONE/ACK
as with tcp. The tag is `<connection id>/<transfer number>`: one connection carries one transfer
at a time.

Why READ: the operation that lands data in the decode pool is the decode side's own. When a
transfer fails (peer dead, push cancelled, timeout), the decode side waits for its READ to leave
flight before it raises, so the receiver frees the reserved blocks only once nothing can land in
them. A WRITE posted by the prefill side could still land after that (UCX over TCP applies it
when the decode agent next progresses, RDMA at any time), into blocks another sequence holds.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import itertools
import logging
import os
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pdserve.runtime.disagg.kv_transfer.protocol import (
    XFER_BLOCKS,
    XFER_META,
    FramedSocket,
    KVTransferError,
)
from pdserve.runtime.disagg.kv_transfer.transport import (
    NIXL_PACKAGE,
    KVPool,
    Transport,
    block_nbytes,
)

if TYPE_CHECKING:
    import torch

NIXL_MODULE = f"{NIXL_PACKAGE}._api"
POLL_SECONDS = 0.0002  # between completion checks: short next to a transfer, kind to 2 cores
SETTLE_POLL_SECONDS = 0.01  # between checks of a failed READ still in flight (may take long)
SETTLE_WARN_SECONDS = 30.0
OPERATION = "READ"  # XFER_META's `op`: who moves the blocks (the decode side reads)
log = logging.getLogger(__name__)
_CONNECTIONS = itertools.count()


def nixl_missing() -> str | None:
    """Why NIXL cannot be used in this process (its package absent), or None."""
    try:
        importlib.import_module(NIXL_MODULE)
    except ImportError as exc:
        return (f"the nixl KV transport needs the {NIXL_PACKAGE} module ({exc}); pdserve's "
                "runtime extra installs it; or use --kv-transport tcp")
    return None


def pool_unusable(pool: KVPool) -> str | None:
    """Why NIXL cannot move `pool`'s blocks, or None."""
    missing = nixl_missing()
    if missing:
        return missing
    memory = pool.memory()
    if memory is None:
        return ("the nixl KV transport needs the KV pool in one host or CUDA tensor; a "
                "tensor-parallel replica's shards or an XLA device's pool move with "
                "--kv-transport tcp")
    if memory.device.type not in ("cpu", "cuda"):
        return f"the nixl KV transport cannot register {memory.device.type} memory; use tcp"
    return None


@dataclass(frozen=True)
class PoolRegion:
    """Where a KV pool lies: planes of `num_blocks` blocks, `plane_block_bytes` per block."""

    base: int
    num_blocks: int
    plane_block_bytes: int  # one block of one layer's K or V
    num_planes: int  # layers x 2
    memory: str  # "DRAM" | "VRAM"
    device: int

    @classmethod
    def of(cls, memory: torch.Tensor) -> PoolRegion:
        on_cuda = memory.device.type == "cuda"
        return cls(memory.data_ptr(), memory.shape[2],
                   memory[0, 0, 0].numel() * memory.element_size(),
                   memory.shape[0] * memory.shape[1], "VRAM" if on_cuda else "DRAM",
                   (memory.device.index or 0) if on_cuda else 0)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "num_blocks": self.num_blocks,
                "plane_block_bytes": self.plane_block_bytes, "num_planes": self.num_planes,
                "memory": self.memory, "device": self.device}

    @classmethod
    def from_json(cls, obj: Any) -> PoolRegion:
        try:
            region = cls(int(obj["base"]), int(obj["num_blocks"]), int(obj["plane_block_bytes"]),
                         int(obj["num_planes"]), str(obj["memory"]), int(obj["device"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KVTransferError(f"malformed XFER_META region: {exc!r}") from None
        if region.memory not in ("DRAM", "VRAM"):
            raise KVTransferError(f"XFER_META names memory {region.memory!r}")
        return region

    def addresses(self, block_ids: list[int], runs: list[tuple[int, int]]) -> np.ndarray:
        """(address, length, device) rows for `runs` (index into block_ids, length) per plane."""
        rows = np.empty((self.num_planes * len(runs), 3), dtype=np.uint64)
        row = 0
        for plane in range(self.num_planes):
            plane_base = self.base + plane * self.num_blocks * self.plane_block_bytes
            for first, count in runs:
                rows[row] = (plane_base + block_ids[first] * self.plane_block_bytes,
                             count * self.plane_block_bytes, self.device)
                row += 1
        return rows


def common_runs(src_ids: list[int], dst_ids: list[int]) -> list[tuple[int, int]]:
    """Runs (first index, length) where both id lists count up by one: one descriptor each."""
    runs: list[tuple[int, int]] = []
    for i in range(len(src_ids)):
        if (runs and src_ids[i] == src_ids[i - 1] + 1 and dst_ids[i] == dst_ids[i - 1] + 1):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


class _LocalAgent:
    """The NIXL agent of one KV pool, registered once (a worker process has one pool; tests
    and benchmarks may hold two in one process)."""

    _by_pool: dict[int, _LocalAgent] = {}
    _create_lock = threading.Lock()

    def __init__(self, memory: torch.Tensor) -> None:
        api = importlib.import_module(NIXL_MODULE)
        self.name = f"pdserve-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # No progress thread: UCX's busy-polls a whole core for as long as the agent lives
        # (measured: 100% of a core per idle agent); send_blocks and recv_blocks progress the
        # agent themselves as they poll for completion or notification.
        config = api.nixl_agent_config(
            enable_prog_thread=False, backends=["UCX"],
            sync_mode=api.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT)
        self.agent = api.nixl_agent(self.name, config)
        self.memory = memory
        self.region = PoolRegion.of(memory)
        self.agent.register_memory([memory])
        self.metadata: bytes = self.agent.get_agent_metadata()
        self._peers: dict[bytes, str] = {}  # metadata -> agent name, each loaded once
        self._notes_lock = threading.Lock()

    @classmethod
    def for_pool(cls, pool: KVPool) -> _LocalAgent:
        memory = pool.memory()
        if memory is None:
            raise KVTransferError(pool_unusable(pool) or "no KV pool memory")
        with cls._create_lock:
            agent = cls._by_pool.get(memory.data_ptr())
            if agent is None or agent.memory is not memory:
                agent = cls._by_pool[memory.data_ptr()] = cls(memory)
            return agent

    def add_peer(self, metadata: bytes) -> str:
        with self._create_lock:
            name = self._peers.get(metadata)
            if name is None:
                loaded = self.agent.add_remote_agent(metadata)
                name = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
                self._peers[metadata] = name
            return name

    def notified(self, peer: str, tag: bytes) -> bool:
        with self._notes_lock:  # the agent's notification map is shared by all connections
            return bool(self.agent.check_remote_xfer_done(peer, tag, tag_is_prefix=False))

    def describe(self, connection: str) -> dict[str, Any]:
        return {"agent": base64.b64encode(self.metadata).decode(), "connection": connection,
                "region": self.region.to_json(), "op": OPERATION}


def _read_meta(conn: FramedSocket) -> tuple[bytes, str, PoolRegion]:
    meta = conn.recv_json(XFER_META)
    try:
        metadata = base64.b64decode(str(meta["agent"]), validate=True)
        connection = str(meta["connection"])
    except (KeyError, ValueError) as exc:
        raise KVTransferError(f"malformed XFER_META: {exc!r}") from None
    if meta.get("op") != OPERATION:
        raise KVTransferError("the peer's nixl transport writes into the decode pool (an older "
                              "pdserve): run prefill and decode on one version")
    return metadata, connection, PoolRegion.from_json(meta.get("region"))


class NixlTransport(Transport):
    name = "nixl"

    def __init__(self) -> None:
        self._agent: _LocalAgent | None = None
        self._peer = ""
        self._peer_region: PoolRegion | None = None
        self._connection = ""
        self._transfers = itertools.count()

    def unusable_with(self, pool: KVPool) -> str | None:
        return pool_unusable(pool)

    def on_accept(self, conn: FramedSocket, pool: KVPool) -> None:
        self._agent = _LocalAgent.for_pool(pool)
        self._connection = f"{self._agent.name}#{next(_CONNECTIONS)}"
        conn.send_json(XFER_META, self._agent.describe(self._connection))
        metadata, _, self._peer_region = _read_meta(conn)
        self._peer = self._load(metadata)

    def on_accepted(self, conn: FramedSocket, pool: KVPool) -> None:
        self._agent = _LocalAgent.for_pool(pool)
        metadata, self._connection, self._peer_region = _read_meta(conn)
        self._peer = self._load(metadata)
        conn.send_json(XFER_META, self._agent.describe(self._connection))

    def _load(self, metadata: bytes) -> str:
        assert self._agent is not None
        try:
            return self._agent.add_peer(metadata)
        except Exception as exc:  # NIXL raises its own types for metadata it cannot load
            raise KVTransferError(f"cannot load the peer's NIXL agent: {exc}") from None

    def send_blocks(self, conn: FramedSocket, pool: KVPool, src_ids: list[int],
                    dst_ids: list[int]) -> int:
        agent = self._agent
        assert agent is not None, "send_blocks before the handshake"
        tag = self._next_tag()
        if not src_ids:  # both sides know the list is empty: nothing to read or notify
            return 0
        conn.send_json(XFER_BLOCKS, {"block_ids": src_ids})
        deadline = time.monotonic() + (conn.sock.gettimeout() or 30.0)
        # The caller holds the blocks until ACK; polling for the READ's notification progresses
        # this agent, which UCX's TCP transport needs to serve the read.
        while not agent.notified(self._peer, tag):
            if time.monotonic() > deadline:
                raise KVTransferError("the decode worker's NIXL read did not complete in time")
            # A cancelled push, or a decode worker gone or failing the read, stops waiting now.
            _fail_if_closed(conn.sock)
            time.sleep(POLL_SECONDS)
        return len(src_ids) * block_nbytes(pool)

    def recv_blocks(self, conn: FramedSocket, pool: KVPool, dst_ids: list[int]) -> int:
        agent, remote = self._agent, self._peer_region
        assert agent is not None and remote is not None, "recv_blocks before the handshake"
        tag = self._next_tag()
        if not dst_ids:
            return 0
        src_ids = self._source_ids(conn, len(dst_ids))
        runs = common_runs(src_ids, dst_ids)
        api = agent.agent
        local = api.get_xfer_descs(agent.region.addresses(dst_ids, runs), agent.region.memory)
        peer = api.get_xfer_descs(remote.addresses(src_ids, runs), remote.memory)
        deadline = time.monotonic() + (conn.sock.gettimeout() or 30.0)
        handle = api.initialize_xfer("READ", local, peer, self._peer, tag)
        try:
            state = api.transfer(handle)
            while state == "PROC":
                if time.monotonic() > deadline:
                    raise KVTransferError("NIXL read did not complete in time")
                _fail_if_closed(conn.sock)  # the prefill worker died or cancelled the push
                time.sleep(POLL_SECONDS)
                state = api.check_xfer_state(handle)
            if state != "DONE":
                raise KVTransferError(f"NIXL read failed ({state})")
        except BaseException:
            _settle(api, handle)
            raise
        finally:
            with contextlib.suppress(Exception):  # NIXL refuses to release some failed reads
                handle.release()
        return len(dst_ids) * block_nbytes(pool)

    def _source_ids(self, conn: FramedSocket, count: int) -> list[int]:
        """The prefill side's block ids for this transfer, checked against its region so that a
        buggy or hostile peer cannot make this side read outside the pool it registered."""
        agent, remote = self._agent, self._peer_region
        assert agent is not None and remote is not None
        ids = conn.recv_json(XFER_BLOCKS).get("block_ids")
        if not isinstance(ids, list) or len(ids) != count:
            raise KVTransferError(f"XFER_BLOCKS must list {count} block ids")
        if remote.plane_block_bytes != agent.region.plane_block_bytes or \
                remote.num_planes != agent.region.num_planes:
            raise KVTransferError("the prefill worker's NIXL region does not fit the blocks")
        if not all(type(b) is int and 0 <= b < remote.num_blocks for b in ids):
            raise KVTransferError("XFER_BLOCKS names blocks outside the prefill worker's pool")
        return ids

    def _next_tag(self) -> bytes:
        return f"{self._connection}/{next(self._transfers)}".encode()


def _settle(api: Any, handle: Any) -> None:
    """Return once a failed READ can land nothing more in this side's blocks. UCX cannot cancel
    an RMA operation in flight (releasing its handle leaves it running), so wait for it to
    finish or fail: a dead peer fails it (UCX's peer error handling), a live one serves it."""
    started = warned = time.monotonic()
    while True:
        try:
            if api.check_xfer_state(handle) != "PROC":
                return
        except Exception:  # NIXL raises for a failed transfer, which is over too
            return
        if time.monotonic() - warned > SETTLE_WARN_SECONDS:
            warned = time.monotonic()
            log.warning("a failed NIXL read is still in flight after %.0fs; its blocks stay "
                        "reserved until it ends", warned - started)
        time.sleep(SETTLE_POLL_SECONDS)


def _fail_if_closed(sock: socket.socket) -> None:
    """A peer that died mid-transfer (or our own push, cancelled) shows as a closed socket."""
    readable, _, _ = select.select([sock], [], [], 0)
    if readable and not sock.recv(1, socket.MSG_PEEK):
        raise KVTransferError("connection closed by the peer mid-transfer")
