"""KV handoff between a prefill worker and a decode worker.

The prefill side (`KVSender`) connects to the decode worker's KV port; a handshake checks that both
KV pools have the same layout (layers, KV heads, head dim, block size, dtype) and both workers
the same model (checkpoints/identity.py), and picks the data transport; then, per request, the
prefill side offers the prompt, the decode side reserves blocks and answers how many leading
blocks it already holds (prefix cache), and only the missing blocks travel. `tcp` streams them
as framed raw bytes. See README "How the KV handoff works".
"""

from pdserve.runtime.disagg.kv_transfer.protocol import (
    DecodeFullError,
    KVTransferError,
    LayoutMismatchError,
    ModelMismatchError,
    Offer,
)
from pdserve.runtime.disagg.kv_transfer.receiver import KVReceiverServer, ReceiverHooks
from pdserve.runtime.disagg.kv_transfer.sender import KVSender, PushResult

__all__ = ["DecodeFullError", "KVReceiverServer", "KVSender", "KVTransferError",
           "LayoutMismatchError", "ModelMismatchError", "Offer", "PushResult", "ReceiverHooks"]
