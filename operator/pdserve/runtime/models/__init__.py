"""Decoder-only transformer models for the runtime (Llama, Qwen2, Qwen3 via config flags)."""
