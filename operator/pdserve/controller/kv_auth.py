"""The secret an LLMService's prefill and decode workers prove to each other at the KV handshake.

Created once, with random content, and never read back or rewritten by the operator (so it
needs `create` on Secrets only); the workers read it from the mounted Secret. Its owner
reference deletes it with the LLMService.
"""

from __future__ import annotations

import secrets
from typing import Any

from pdserve.controller.context import Owner
from pdserve.controller.names import KV_AUTH_KEY, kv_auth_secret_name, service_labels


def kv_auth_secret(owner: Owner, value: str | None = None) -> dict[str, Any]:
    """The Secret object (`value`: its content; random when None)."""
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": kv_auth_secret_name(owner.name), "namespace": owner.namespace,
                     "labels": service_labels(owner.name),
                     "ownerReferences": [owner.reference()]},
        "type": "Opaque",
        "stringData": {KV_AUTH_KEY: value if value is not None else secrets.token_hex(32)},
    }
