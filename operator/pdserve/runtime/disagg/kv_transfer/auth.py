"""Peers proving a shared secret to each other at the KV handshake (HMAC-SHA256 over both
sides' nonces), so that nobody without the LLMService's secret can write KV into a decode
worker's pool or read prompts pushed by a prefill worker.

    prefill -> decode  HELLO  {..., auth: {nonce: Np}}
    decode  -> prefill ACCEPT {..., auth: {nonce: Nd, proof: HMAC(key, "decode" Np Nd)}}
    prefill -> decode  AUTH   {proof: HMAC(key, "prefill" Np Nd)}

Each side checks the other's proof before anything else moves (decode before it reserves a
block). Both sides without a secret skip this (local runs); one side without it is refused.
The connection is authenticated, not encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdserve.runtime.disagg.kv_transfer.protocol import KVTransferError

NONCE_BYTES = 16


class KVAuthError(KVTransferError):
    """A peer that did not prove the shared secret."""

    reason = "unauthenticated"


def read_secret(path: str) -> bytes:
    """The secret in a file (a mounted Secret's key); ValueError naming the problem."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the KV auth secret {path}: {exc.strerror}") from None
    if len(data) < 16:
        raise ValueError(f"the KV auth secret in {path} is shorter than 16 bytes")
    return data


def kv_secret(settings: Mapping[str, Any]) -> bytes | None:
    """The worker's secret from --kv-auth-secret-file (None when not given)."""
    path = settings.get("kv_auth_secret_file")
    return read_secret(path) if path else None


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def proof(secret: bytes, role: str, prefill_nonce: str, decode_nonce: str) -> str:
    message = f"pdserve-kv {role} {prefill_nonce} {decode_nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def check_proof(secret: bytes, role: str, prefill_nonce: str, decode_nonce: str,
                given: object) -> None:
    expected = proof(secret, role, prefill_nonce, decode_nonce)
    if not isinstance(given, str) or not hmac.compare_digest(expected, given):
        raise KVAuthError(f"the {role} worker did not prove the KV auth secret (another "
                          "LLMService's worker, or a stranger)")


def nonce_of(auth: object) -> str:
    """The peer's nonce from its `auth` object; KVAuthError when it sent none."""
    nonce = auth.get("nonce") if isinstance(auth, dict) else None
    if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES:
        raise KVAuthError("the peer did not authenticate: start every prefill and decode "
                          "worker of the LLMService with the same --kv-auth-secret-file")
    return nonce
