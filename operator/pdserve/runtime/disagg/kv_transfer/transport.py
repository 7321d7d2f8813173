"""The data-transport interface of the KV handoff.

A transport moves the KV of some blocks of the sender's pool (engine/kv_cache.py's KVPool) into
given blocks of the receiver's pool, over a connection whose handshake and control messages are
already done (protocol.py). One transport object serves one connection, so it may keep per-peer
state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pdserve.runtime.disagg.kv_transfer.protocol import FramedSocket
from pdserve.runtime.engine.kv_cache import KVPool

TRANSPORTS = ("tcp", "nixl")
NIXL_PACKAGE = "nixl_cu13"  # NIXL built for CUDA 13, as PyPI's torch is


class Transport(ABC):
    name: str

    def unusable_with(self, pool: KVPool) -> str | None:
        """Why this transport cannot serve `pool` (checked before ACCEPT), or None."""
        return None

    def on_accept(self, conn: FramedSocket, pool: KVPool) -> None:  # noqa: B027 - optional hook
        """Receiver side, right after ACCEPT: set up what the sender needs."""

    def on_accepted(self, conn: FramedSocket, pool: KVPool) -> None:  # noqa: B027
        """Sender side, right after ACCEPT: take what the receiver set up."""

    @abstractmethod
    def send_blocks(self, conn: FramedSocket, pool: KVPool, src_ids: list[int],
                    dst_ids: list[int]) -> int:
        """Move local blocks `src_ids` into the peer's `dst_ids`; returns bytes moved."""

    @abstractmethod
    def recv_blocks(self, conn: FramedSocket, pool: KVPool, dst_ids: list[int]) -> int:
        """Receiver side of `send_blocks`; returns bytes received into the pool."""


def make_transport(name: str) -> Transport:
    if name == "tcp":
        from pdserve.runtime.disagg.kv_transfer.tcp import TcpTransport

        return TcpTransport()
    if name == "nixl":
        from pdserve.runtime.disagg.kv_transfer.nixl import NixlTransport

        return NixlTransport()
    raise ValueError(f"unknown KV transport {name!r}; expected one of {TRANSPORTS}")


def block_nbytes(pool: KVPool) -> int:
    """Bytes of one block across all layers, K and V."""
    return pool.layout.bytes_per_block
