"""Constrained decoding: what a request's output must match (spec.py, pure), compiled for the
model's vocabulary (compiler.py, xgrammar) and applied to each step's logits (masks.py)."""
