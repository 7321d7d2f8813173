"""Small C kernels for the CPU path, compiled on first use (see paged_decode.py)."""
