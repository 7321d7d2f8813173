"""Calling the CPU elementwise kernels (elementwise.c). Each takes the library from
`library.for_tensor` and tensors laid out as the C functions say."""

from __future__ import annotations

import ctypes

import torch

from pdserve.runtime.devices.cpu_kernels.library import DTYPE_FLAGS


def add_rms_norm(library: ctypes.CDLL, x: torch.Tensor, pending: torch.Tensor | None,
                 weight: torch.Tensor, eps: float) -> torch.Tensor:  # fmt: skip
    """x [rows, width] contiguous: x += pending (in place); returns weight * x / rms(x)."""
    out = torch.empty_like(x)
    library.add_rms_norm(
        x.data_ptr(), None if pending is None else pending.contiguous().data_ptr(),
        weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps, DTYPE_FLAGS[x.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def silu_mul(library: ctypes.CDLL, gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [rows, 2 * width] contiguous -> silu(gate) * up [rows, width]."""
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty((rows, width))
    library.silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, width,
                     DTYPE_FLAGS[gate_up.dtype], torch.get_num_threads())  # fmt: skip
    return out


def rotate_halves(library: ctypes.CDLL, x: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> None:  # fmt: skip
    """Rotary embedding in place on x [rows, heads, head_dim] (each head contiguous, rows at
    any stride); cos/sin contiguous [rows, head_dim / 2] in x's dtype."""
    rows, heads, head_dim = x.shape
    library.rotate_halves(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), rows, heads, head_dim,
                          x.stride(0), DTYPE_FLAGS[x.dtype], torch.get_num_threads())  # fmt: skip
