"""HTTP headers of the KV handoff between the router and the workers (no heavy imports: the
router reads them too)."""

TRANSFER_HEADER = "x-pdserve-transfer-id"
# Request headers to a prefill worker: where to push the KV (kv_targets.py).
KV_TARGETS_HEADER = "x-pdserve-kv-targets"  # decode KV addresses, in order of preference
KV_TARGET_HEADER = "x-pdserve-kv-target"  # one decode KV address, one try (older routers)
# Response headers of a prefill worker: which target took the KV; why none did.
KV_RECEIVER_HEADER = "x-pdserve-kv-receiver"
KV_REFUSED_HEADER = "x-pdserve-kv-refused"
KV_REFUSED_NO_ROOM = "no-room"
# Response headers of a prefill worker, what the router's conditional disaggregation learns from
# (router/disagg_policy.py): seconds from the request's arrival to its first token (the
# worker's queue and the prompt's compute), and of the KV handoff that followed.
PREFILL_SECONDS_HEADER = "x-pdserve-prefill-seconds"
KV_HANDOFF_SECONDS_HEADER = "x-pdserve-kv-handoff-seconds"
