"""The KV handoff wire protocol: frames, messages and the layout handshake.

Every frame is a 9-byte header (kind: u8, payload length: u64, network order) and a payload:
JSON for control messages, raw tensor bytes for DATA. One connection carries one handshake and
then any number of transfers, one at a time:

    prefill -> decode   HELLO  {version, transport, layout, model, features, auth}
    decode  -> prefill  ACCEPT {layout, model, features, auth}
    prefill -> decode   AUTH   {proof}          (with a shared secret: auth.py)
    both ways           XFER_META {...}         (nixl only: each side's NIXL agent, nixl.py)
    per transfer:
    prefill -> decode   OFFER  {transfer_id, prompt_token_ids, first_token, params, priority,
                               first_logprobs, num_kv_tokens, wait_for_room}
    decode  -> prefill  NEED   {num_cached_blocks, block_ids}   (block_ids: where missing blocks go)
    prefill -> decode   DATA... (tcp) | XFER_BLOCKS {block_ids} (nixl: the decode side reads
                        them itself)  DONE {bytes}
    decode  -> prefill  ACK    {}

Either side may answer ERROR {message, code} instead; a mismatched layout or model (the identity
of checkpoints/identity.py: weights, tokenizer, dtype, block size) is refused at HELLO. An OFFER
the decode worker has no free blocks for is refused with code `no_room` (`DecodeFullError`): the
connection stays usable, and the prefill worker may offer the same KV to another decode worker;
an OFFER with `wait_for_room` queues instead (most urgent first, then first come, first served)
until blocks free up.

A compressed prompt (KV compression) travels as `num_kv_tokens` slots, fewer than its tokens,
packed from the first block; kept K carries its rotary position, so the slots are all the
decode side needs. Only a peer whose `features` list `COMPRESSED_KV` is sent one.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.checkpoints.identity import differences as identity_differences

PROTOCOL_VERSION = 2  # 2: peers authenticate (auth.py)
HEADER = struct.Struct("!BQ")
MAX_CONTROL_BYTES = 64 * 1024 * 1024

# Frame kinds; 3 is retired (the removed cuda-ipc transport's handle), not to be reused.
HELLO, ACCEPT, OFFER, NEED, DATA, DONE, ACK, ERROR, AUTH, XFER_META = 1, 2, 4, 5, 6, 7, 8, 9, 10, 11
XFER_BLOCKS = 12
KIND_NAMES = {HELLO: "HELLO", ACCEPT: "ACCEPT", OFFER: "OFFER", NEED: "NEED", DATA: "DATA",
              DONE: "DONE", ACK: "ACK", ERROR: "ERROR", AUTH: "AUTH", XFER_META: "XFER_META",
              XFER_BLOCKS: "XFER_BLOCKS"}
LAYOUT_FIELDS = ("num_layers", "num_kv_heads", "head_dim", "block_size", "dtype")
COMPRESSED_KV = "compressed-kv"
NO_ROOM = "no_room"  # ERROR code: the decode worker has no free KV blocks for the offer now
FEATURES = [COMPRESSED_KV]


class KVTransferError(RuntimeError):
    """A transfer failed: peer error, protocol violation, closed connection or timeout."""

    reason = "transfer_error"  # its `reason` on pdserve_kv_transfer_failures_total


class LayoutMismatchError(KVTransferError):
    """The two KV pools differ in layout, dtype or block size: their blocks are not exchangeable."""

    reason = "layout_mismatch"


class ModelMismatchError(KVTransferError):
    """The two workers serve different models (weights, tokenizer, dtype or block size): KV of
    one is garbage to the other, even where the layouts agree."""

    reason = "model_mismatch"


class DecodeFullError(KVTransferError):
    """The decode worker refused an OFFER for lack of free KV blocks (a shortage, not a fault:
    another decode worker, or the same one a little later, can take the KV)."""

    reason = "decode_full"


def failure_reason(exc: BaseException) -> str:
    """The `reason` label of a failed transfer (a dropped connection or a timeout outside
    pdserve's own errors: `transfer_error`)."""
    return exc.reason if isinstance(exc, KVTransferError) else KVTransferError.reason


@dataclass
class Offer:
    """A prompt whose KV the prefill worker holds, with its first token and sampling params."""

    transfer_id: str
    prompt_token_ids: list[int]
    first_token: int
    params: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields
    priority: int = 0
    first_logprobs: dict[str, Any] | None = None  # the first token's, when logprobs were asked
    num_kv_tokens: int | None = None  # slots of a compressed prompt's KV; None: every token
    wait_for_room: bool = False  # without free blocks: queue for them (False: refuse at once)

    def to_json(self) -> dict[str, Any]:
        return {"transfer_id": self.transfer_id, "prompt_token_ids": self.prompt_token_ids,
                "first_token": self.first_token, "params": self.params,
                "priority": self.priority, "first_logprobs": self.first_logprobs,
                "num_kv_tokens": self.num_kv_tokens, "wait_for_room": self.wait_for_room}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Offer:
        try:
            params = obj.get("params", {})
            if not isinstance(params, dict):
                raise TypeError("params must be an object")
            prompt = [int(t) for t in obj["prompt_token_ids"]]
            num_kv = obj.get("num_kv_tokens")
            if num_kv is not None and not 0 < int(num_kv) <= len(prompt):
                raise ValueError(f"num_kv_tokens {num_kv} for a prompt of {len(prompt)}")
            return cls(str(obj["transfer_id"]), prompt, int(obj["first_token"]), params,
                       int(obj.get("priority", 0)), obj.get("first_logprobs"),
                       None if num_kv is None else int(num_kv),
                       bool(obj.get("wait_for_room", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise KVTransferError(f"malformed OFFER: {exc!r}") from None


def layout_dict(layout: Any) -> dict[str, Any]:
    """A KVLayout as plain JSON values (dtype as its name, e.g. "bfloat16")."""
    out = {name: getattr(layout, name) for name in LAYOUT_FIELDS}
    out["dtype"] = str(out["dtype"]).removeprefix("torch.")
    for name in LAYOUT_FIELDS[:-1]:
        out[name] = int(out[name])
    return out


def check_model(local: ModelIdentity, remote: Any, local_role: str) -> None:
    """Refuse a peer of another model (`remote`: the identity JSON it sent; `local_role`:
    prefill or decode, to name the sides in the message)."""
    peer_role = "prefill" if local_role == "decode" else "decode"
    differences = identity_differences(local, ModelIdentity.from_json(remote),
                                       (local_role, peer_role))
    if differences:
        raise ModelMismatchError("model mismatch between prefill and decode workers ("
                                 + "; ".join(differences) + "): they serve different models, "
                                 "e.g. old and new pods of a rolling update")


def check_layout(local: dict[str, Any], remote: dict[str, Any]) -> None:
    differences = [f"{name}: here {local.get(name)!r}, peer {remote.get(name)!r}"
                   for name in LAYOUT_FIELDS if local.get(name) != remote.get(name)]
    if differences:
        raise LayoutMismatchError("KV layout mismatch between prefill and decode workers ("
                                  + "; ".join(differences) + "): start both with the same "
                                  "model, --dtype and --block-size")


class FramedSocket:
    """Blocking framed I/O over one socket; raw payloads go to/from buffers without extra copies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def close(self) -> None:
        self.sock.close()

    def send_json(self, kind: int, obj: dict[str, Any]) -> None:
        payload = json.dumps(obj, separators=(",", ":")).encode()
        self.sock.sendall(HEADER.pack(kind, len(payload)) + payload)

    def send_raw(self, kind: int, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        self.sock.sendall(HEADER.pack(kind, view.nbytes))
        self.sock.sendall(view)

    def send_error(self, message: str, code: str | None = None) -> None:
        self.send_json(ERROR, {"message": message, "code": code})

    def recv_header(self) -> tuple[int, int]:
        header = bytearray(HEADER.size)
        self.recv_into(memoryview(header))
        kind, length = HEADER.unpack(header)
        if kind not in KIND_NAMES:
            raise KVTransferError(f"unknown frame kind {kind}: not a pdserve KV peer?")
        return kind, length

    def recv_into(self, view: memoryview) -> None:
        view = view.cast("B")
        got = 0
        while got < view.nbytes:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise KVTransferError("connection closed by the peer mid-transfer")
            got += n

    def recv_payload(self, length: int) -> bytes:
        if length > MAX_CONTROL_BYTES:
            raise KVTransferError(f"control frame of {length} bytes is too large")
        buf = bytearray(length)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def recv_json(self, expect: int) -> dict[str, Any]:
        kind, length = self.recv_header()
        payload = self.recv_payload(length)
        if kind == ERROR:
            refusal = json.loads(payload)
            message = refusal.get("message", "unknown error")
            error: type[KVTransferError] = KVTransferError
            if refusal.get("code") == NO_ROOM:
                error = DecodeFullError
            elif "layout mismatch" in message:
                error = LayoutMismatchError
            elif "model mismatch" in message:
                error = ModelMismatchError
            raise error(f"peer refused: {message}")
        if kind != expect:
            raise KVTransferError(f"expected {KIND_NAMES[expect]}, got {KIND_NAMES[kind]}")
        obj = json.loads(payload)
        if not isinstance(obj, dict):
            raise KVTransferError(f"malformed {KIND_NAMES[kind]} frame")
        return obj
