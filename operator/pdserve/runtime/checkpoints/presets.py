"""The built-in models' shapes (torch-free: `pdserve plan` and the operator read them too)."""

from __future__ import annotations

VOCAB_SIZE = 4096
PRESETS: dict[str, dict[str, int]] = {
    # Fast on a 2-core CPU: tests and the demo.
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
    # ~56M parameters, Llama-shaped: the benchmark model.
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                  num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096),
    # Qwen3-0.6B's shape (random weights) for GPU benchmarks; ids past the tokenizer go unused.
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936, max_position_embeddings=40960),
}  # fmt: skip
