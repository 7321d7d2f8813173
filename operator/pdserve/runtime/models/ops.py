"""The decoder layer's elementwise steps on any device: the CPU kernels where they apply (one
pass over memory each), else the torch ops in Hugging Face's order (CUDA, or no C compiler)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdserve.runtime.devices.cpu_kernels import elementwise
from pdserve.runtime.devices.cpu_kernels.library import for_tensor
from pdserve.runtime.models.rope import apply_rotary


def add_rms_norm(x: torch.Tensor, pending: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> torch.Tensor:  # fmt: skip
    """x += pending, in place (x is the residual stream); returns weight * x / rms(x)."""
    library = for_tensor(x)
    if library is not None and x.dim() == 2 and x.is_contiguous():
        return elementwise.add_rms_norm(library, x, pending, weight, eps)
    if pending is not None:
        x += pending
    # Same operation order as transformers: normalise in float32, scale in the model dtype.
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[rows, 2 * width] -> silu(first half) * second half."""
    library = for_tensor(gate_up)
    if library is not None and gate_up.dim() == 2 and gate_up.is_contiguous():
        return elementwise.silu_mul(library, gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [T, H, D] by cos/sin [T, 1, D/2]: in place on CPU (x itself is
    returned), a new tensor elsewhere."""
    library = for_tensor(x)
    if library is not None and x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        elementwise.rotate_halves(library, x, cos[:, 0].contiguous(), sin[:, 0].contiguous())
        return x
    return apply_rotary(x, cos, sin)
