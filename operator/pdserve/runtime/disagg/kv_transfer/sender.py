"""Prefill side of the KV handoff: push a prompt's KV to the decode worker chosen for it.

Connections to each decode worker are kept and reused (the handshake happens once per
connection); a transfer has a connection to itself. `push` blocks; the event loop calls
`start_push`, which runs it on a thread of its own: a push the decode worker queues for room
holds its thread for up to most of --kv-timeout, and in a shared pool (asyncio's default
executor: cores + 4 threads) the pushes past its size would wait for a thread first come, first
served, never reaching the decode worker's queue, which serves the most urgent first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

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
    COMPRESSED_KV,
    DONE,
    FEATURES,
    HELLO,
    NEED,
    OFFER,
    PROTOCOL_VERSION,
    DecodeFullError,
    FramedSocket,
    KVTransferError,
    Offer,
    check_layout,
    check_model,
    layout_dict,
)
from pdserve.runtime.disagg.kv_transfer.transport import KVPool, Transport, make_transport

log = logging.getLogger(__name__)
# Test hook: seconds to stall between the decode worker's reservation and the data, so a test
# can kill the prefill worker while blocks are reserved for it. Unset in production.
TEST_DELAY_ENV = "PDSERVE_TEST_KV_SEND_DELAY"


@dataclass
class PushResult:
    num_blocks: int  # blocks of the prompt
    num_cached_blocks: int  # of which the decode worker already held (not sent)
    bytes: int
    seconds: float


@dataclass
class _Connection:
    framed: FramedSocket
    transport: Transport
    peer_features: frozenset[str]


class KVSender:
    def __init__(self, pool: KVPool, transport: str = "tcp", *, identity: ModelIdentity,
                 timeout: float = 30.0, secret: bytes | None = None) -> None:
        problem = make_transport(transport).unusable_with(pool)  # fail at startup, not later
        if problem:
            raise ValueError(problem)
        self.pool = pool
        self.secret = secret  # None: peers are not authenticated (both sides must agree)
        self.identity = identity
        self.transport = transport
        self.timeout = timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._active: dict[str, _Connection] = {}  # transfer id -> its connection
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def start_push(self, target: str, offer: Offer,
                   src_block_ids: list[int]) -> asyncio.Future[PushResult]:
        """`push` on a new thread; its result (or error) on the running event loop."""
        done: concurrent.futures.Future[PushResult] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(self.push(target, offer, src_block_ids))
            except Exception as exc:
                done.set_exception(exc)

        threading.Thread(target=run, name=f"pdserve-kv-push-{offer.transfer_id}",
                         daemon=True).start()
        return asyncio.wrap_future(done)

    def push(self, target: str, offer: Offer, src_block_ids: list[int]) -> PushResult:
        """Send the KV of `src_block_ids` (the prompt's blocks, in order) to `target`."""
        try:
            return self._push(target, offer, src_block_ids)
        finally:
            with self._lock:
                self._cancelled.discard(offer.transfer_id)

    def _push(self, target: str, offer: Offer, src_block_ids: list[int]) -> PushResult:
        conn, reused = self._checkout(target)
        try:
            result = self._push_on(conn, offer, src_block_ids)
        except DecodeFullError:  # refused at OFFER, nothing sent: the connection stays good
            self._keep(target, conn)
            raise
        except (OSError, KVTransferError) as exc:
            conn.framed.close()
            if offer.transfer_id in self._cancelled or not (reused and _is_stale(exc)):
                raise _transfer_error(target, exc) from exc
            # The kept connection died while idle (decode worker restarted): one fresh try.
            conn, _ = self._checkout(target, fresh=True)
            try:
                result = self._push_on(conn, offer, src_block_ids)
            except (OSError, KVTransferError) as retry_exc:
                conn.framed.close()
                raise _transfer_error(target, retry_exc) from retry_exc
        self._keep(target, conn)
        return result

    def _keep(self, target: str, conn: _Connection) -> None:
        with self._lock:
            self._idle.setdefault(target, []).append(conn)

    def cancel(self, transfer_id: str) -> None:
        """Cut a transfer in flight (its request went away): the push fails at once and the
        decode worker, seeing the connection close, frees the blocks it reserved."""
        with self._lock:
            conn = self._active.get(transfer_id)
            self._cancelled.add(transfer_id)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.framed.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.framed.close()
            self._idle.clear()

    def _push_on(self, conn: _Connection, offer: Offer, src_block_ids: list[int]) -> PushResult:
        with self._lock:
            self._active[offer.transfer_id] = conn
            cancelled = offer.transfer_id in self._cancelled
        try:
            if cancelled:
                raise KVTransferError(f"transfer {offer.transfer_id} was cancelled")
            return self._transfer(conn, offer, src_block_ids)
        finally:
            with self._lock:
                self._active.pop(offer.transfer_id, None)

    def _transfer(self, conn: _Connection, offer: Offer, src_block_ids: list[int]) -> PushResult:
        start = time.perf_counter()
        framed = conn.framed
        if offer.num_kv_tokens is not None and COMPRESSED_KV not in conn.peer_features:
            raise KVTransferError("the decode worker cannot read compressed KV (an older "
                                  "pdserve): run both tiers on one version, or turn KV "
                                  "compression off on the prefill tier")
        framed.send_json(OFFER, offer.to_json())
        need = framed.recv_json(NEED)
        num_cached = int(need["num_cached_blocks"])
        dst_ids = [int(b) for b in need["block_ids"]]
        src_ids = src_block_ids[num_cached:]
        time.sleep(float(os.environ.get(TEST_DELAY_ENV, 0)))
        if len(src_ids) != len(dst_ids):
            raise KVTransferError(f"decode worker wants {len(dst_ids)} blocks after {num_cached} "
                                  f"cached ones, but the prompt has {len(src_block_ids)} blocks")
        nbytes = conn.transport.send_blocks(framed, self.pool, src_ids, dst_ids)
        framed.send_json(DONE, {"bytes": nbytes})
        framed.recv_json(ACK)
        return PushResult(len(src_block_ids), num_cached, nbytes, time.perf_counter() - start)

    def _checkout(self, target: str, fresh: bool = False) -> tuple[_Connection, bool]:
        if not fresh:
            with self._lock:
                idle = self._idle.get(target)
                if idle:
                    return idle.pop(), True
        return self._connect(target), False

    def _connect(self, target: str) -> _Connection:
        host, _, port = target.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)
        except (OSError, ValueError) as exc:
            raise KVTransferError(f"cannot connect to decode worker KV port {target}: {exc}") \
                from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framed = FramedSocket(sock)
        transport = make_transport(self.transport)
        try:
            local = layout_dict(self.pool.layout)
            nonce = new_nonce() if self.secret is not None else None
            framed.send_json(HELLO, {"version": PROTOCOL_VERSION, "transport": self.transport,
                                     "layout": local, "model": self.identity.to_json(),
                                     "features": FEATURES,
                                     "auth": {"nonce": nonce} if nonce else None})
            accept = framed.recv_json(ACCEPT)
            check_layout(local, accept.get("layout", {}))
            check_model(self.identity, accept.get("model"), "prefill")
            self._authenticate(framed, nonce, accept.get("auth"))
            transport.on_accepted(framed, self.pool)
        except (OSError, KVTransferError):
            framed.close()
            raise
        features = accept.get("features", [])
        return _Connection(framed, transport,
                           frozenset(features) if isinstance(features, list) else frozenset())


    def _authenticate(self, framed: FramedSocket, nonce: str | None, accept_auth: object
                      ) -> None:
        """Check the decode worker's proof, then send ours (nothing without a secret)."""
        if self.secret is None or nonce is None:
            if accept_auth is not None:
                raise KVAuthError("the decode worker authenticates but this prefill worker has "
                                  "no --kv-auth-secret-file")
            return
        decode_nonce = nonce_of(accept_auth)
        check_proof(self.secret, "decode", nonce, decode_nonce,
                    accept_auth.get("proof") if isinstance(accept_auth, dict) else None)
        framed.send_json(AUTH, {"proof": proof(self.secret, "prefill", nonce, decode_nonce)})


def _is_stale(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError | BrokenPipeError) or "closed by the peer" in str(exc)


def _transfer_error(target: str, exc: BaseException) -> KVTransferError:
    if isinstance(exc, KVTransferError):
        return exc
    return KVTransferError(f"KV transfer to {target} failed: {exc}")
