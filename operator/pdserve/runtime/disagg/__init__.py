"""Prefill/decode disaggregation: the prefill and decode roles and the KV transfer between them."""
