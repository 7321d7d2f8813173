"""Decode side of the KV handoff: a threaded TCP server on the worker's --kv-port.

Each connection does the layout handshake, then serves transfers one after another: OFFER ->
`hooks.reserve` (blocks held for the prompt, cached prefix blocks reused) -> NEED (how many
leading blocks are already here, and where the missing ones go) -> the transport fills them ->
DONE -> `hooks.complete` -> ACK. Any failure (peer gone, timeout, bad frame) calls `hooks.fail`,
which frees the reserved blocks at once; a stalled peer is cut off by the socket timeout, and a
transfer the decode side gives up on by `cancel`. Blocks are freed only after the thread that
writes into them has stopped: `hooks.fail` and `hooks.complete` come from that thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Protocol

from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.disagg.kv_transfer.auth import (
    KVAuthError,
    check_proof,
    new_nonce,
    nonce_of,
    proof,
)
from pdserve.runtime.disagg.kv_transfer.protocol import (
    ACCEPT,
    ACK,
    AUTH,
    DONE,
    FEATURES,
    HELLO,
    NEED,
    NO_ROOM,
    OFFER,
    PROTOCOL_VERSION,
    DecodeFullError,
    FramedSocket,
    KVTransferError,
    Offer,
    check_layout,
    check_model,
    failure_reason,
    layout_dict,
)
from pdserve.runtime.disagg.kv_transfer.transport import KVPool, Transport, make_transport

log = logging.getLogger(__name__)


class ReceiverHooks(Protocol):
    """How the receiver reaches the engine; called from the receiver's threads."""

    def reserve(self, offer: Offer) -> tuple[int, list[int]]:
        """Hold blocks for the prompt: (leading blocks already cached, ids for the missing ones).
        Raises DecodeFullError when there are not enough free blocks now, KVTransferError when
        the request cannot be taken otherwise (duplicate id, bad params)."""
        ...

    def complete(self, transfer_id: str, nbytes: int, seconds: float) -> None: ...

    def fail(self, transfer_id: str, reason: str, cause: str = "transfer_error") -> None:
        """`reason` for the log, `cause` the metric's label (failure_reason)."""


class KVReceiverServer:
    def __init__(self, pool: KVPool, hooks: ReceiverHooks, host: str, port: int, *,
                 identity: ModelIdentity, timeout: float = 30.0,
                 features: list[str] | None = None, secret: bytes | None = None) -> None:
        self.pool = pool
        self.secret = secret  # None: peers are not authenticated (both sides must agree)
        self.hooks = hooks
        self.timeout = timeout
        self.layout = layout_dict(pool.layout)
        self.identity = identity
        self.features = FEATURES if features is None else features  # what this side can read
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="pdserve-kv-accept",
                                        daemon=True)
        self._closed = False
        # The connection of each transfer from its OFFER until its hooks have been called.
        self._landing: dict[str, socket.socket] = {}
        self._landing_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()
        log.info("KV receiver listening on port %d", self.port)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def cancel(self, transfer_id: str) -> bool:
        """Cut off a transfer whose KV may still be landing: its connection is shut down, so the
        thread receiving it stops writing into its blocks and calls `hooks.fail`. False when no
        thread serves it any more (its hooks have been called, or it was never reserved)."""
        with self._landing_lock:
            sock = self._landing.get(transfer_id)
        if sock is None:
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return True

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_connection, args=(sock, peer),
                             name=f"pdserve-kv-{peer[0]}:{peer[1]}", daemon=True).start()

    def _serve_connection(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framed = FramedSocket(sock)
        try:
            transport = self._handshake(framed)
            while self._serve_transfer(framed, transport):
                pass
        except (OSError, KVTransferError) as exc:
            log.warning("KV connection from %s:%d ended: %s", peer[0], peer[1], exc)
        finally:
            framed.close()

    def _handshake(self, framed: FramedSocket) -> Transport:
        hello = framed.recv_json(HELLO)
        try:
            if hello.get("version") != PROTOCOL_VERSION:
                raise KVTransferError(f"protocol version {hello.get('version')} is not "
                                      f"{PROTOCOL_VERSION}")
            check_layout(self.layout, hello.get("layout", {}))
            check_model(self.identity, hello.get("model"), "decode")
            transport = make_transport(str(hello.get("transport")))
            problem = transport.unusable_with(self.pool)
            if problem:
                raise KVTransferError(problem)
            auth = self._auth_reply(hello.get("auth"))
        except (KVTransferError, ValueError) as exc:
            framed.send_error(str(exc))
            raise KVTransferError(str(exc)) from exc
        framed.send_json(ACCEPT, {"layout": self.layout, "model": self.identity.to_json(),
                                  "features": self.features, "auth": auth})
        if self.secret is not None:
            assert auth is not None
            check_proof(self.secret, "prefill", nonce_of(hello.get("auth")), auth["nonce"],
                        framed.recv_json(AUTH).get("proof"))
        transport.on_accept(framed, self.pool)
        return transport

    def _auth_reply(self, hello_auth: object) -> dict[str, str] | None:
        """ACCEPT's `auth`: this side's nonce and proof (None without a secret)."""
        if self.secret is None:
            if hello_auth is not None:
                raise KVAuthError("the prefill worker authenticates but this decode worker has "
                                  "no --kv-auth-secret-file")
            return None
        prefill_nonce = nonce_of(hello_auth)
        nonce = new_nonce()
        return {"nonce": nonce, "proof": proof(self.secret, "decode", prefill_nonce, nonce)}

    def _serve_transfer(self, framed: FramedSocket, transport: Transport) -> bool:
        """One transfer; False when the peer closed the connection between transfers."""
        try:
            framed.sock.settimeout(None)  # idle between transfers for as long as the peer likes
            kind, length = framed.recv_header()
        except KVTransferError as exc:
            if "closed by the peer" in str(exc):
                return False
            raise
        finally:
            framed.sock.settimeout(self.timeout)
        if kind != OFFER:
            raise KVTransferError(f"expected OFFER, got frame kind {kind}")
        offer = Offer.from_json(json.loads(framed.recv_payload(length)))
        with self._landing_lock:  # before reserve: a cancel then always finds this thread
            # (not over another connection's: a duplicate id is refused by reserve)
            ours = self._landing.setdefault(offer.transfer_id, framed.sock) is framed.sock
        try:
            try:
                num_cached, dst_ids = self.hooks.reserve(offer)
            except KVTransferError as exc:  # refused before any block is held: the connection
                framed.send_error(str(exc),  # goes on
                                  NO_ROOM if isinstance(exc, DecodeFullError) else None)
                return True
            start = time.perf_counter()
            try:
                framed.send_json(NEED, {"num_cached_blocks": num_cached, "block_ids": dst_ids})
                nbytes = transport.recv_blocks(framed, self.pool, dst_ids)
                framed.recv_json(DONE)
                self.hooks.complete(offer.transfer_id, nbytes, time.perf_counter() - start)
            except BaseException as exc:
                self.hooks.fail(offer.transfer_id, str(exc) or type(exc).__name__,
                                failure_reason(exc))
                raise
        finally:
            if ours:
                with self._landing_lock:
                    del self._landing[offer.transfer_id]
        framed.send_json(ACK, {})
        return True
