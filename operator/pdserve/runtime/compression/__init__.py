"""Opt-in KV compression: SnapKV prefill compression and streaming (sinks + window)."""
