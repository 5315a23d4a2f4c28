"""Position encodings over the utterances of a dialogue.

Two choices, selected by ``ReDiFuConfig.position_encoding``:

* ``sinusoidal``: the fixed encoding of Vaswani et al. (2017), added to each modality's
  projected features before any attention layer;
* ``rotary``: RoPE (Su et al., "RoFormer", 2021), applied to queries and keys inside every
  self-attention layer, so attention scores depend on relative utterance distance only.

Padding sits at the end of each dialogue, so the position of a real utterance is its index
and never depends on how much padding follows it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalPositionalEncoding(nn.Module):
    r"""Adds :math:`PE(p, 2i) = \sin(p / 10000^{2i/D})`, :math:`PE(p, 2i+1) = \cos(\cdot)`.

    Args:
        dim (int): Feature size ``D`` (even).
        base (float, optional): Wavelength base. (default: ``10000.0``)

    Shapes:
        - input: ``(B, N, D)``
        - output: ``(B, N, D)``
    """

    def __init__(self, *, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        self.dim = dim
        self.base = base
        inv_freq = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_parameters(self) -> None:  # no learnable parameters
        pass

    def encoding(self, seq_len: int, *, device: torch.device, dtype: torch.dtype, offset: int = 0) -> Tensor:
        """Rows for positions ``offset .. offset + seq_len - 1`` (a live session's next utterance)."""
        positions = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.to(device)[None, :]  # (N, D/2)
        pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (N, D) interleaved
        return pe.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.encoding(x.shape[1], device=x.device, dtype=x.dtype)


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding: rotates each (even, odd) channel pair of a query or key by
    the angle :math:`p \theta_i`, :math:`\theta_i = \text{base}^{-2i/d}`.

    Args:
        head_dim (int): Per-head size ``d`` of the queries and keys it rotates (even).
        base (float, optional): Frequency base. (default: ``10000.0``)

    Shapes:
        - :meth:`forward` returns ``(cos, sin)``, each ``(N, d)``;
        - :func:`apply_rotary` takes ``x`` of shape ``(B, H, N, d)`` and returns the same shape.
    """

    def __init__(self, *, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"head_dim must be a positive even number for rotary, got {head_dim}")
        self.head_dim = head_dim
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_parameters(self) -> None:  # no learnable parameters
        pass

    def forward(
        self, seq_len: int, *, device: torch.device, dtype: torch.dtype, offset: int = 0
    ) -> tuple[Tensor, Tensor]:
        positions = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.to(device)[None, :]  # (N, d/2)
        angles = angles.repeat_interleave(2, dim=-1)  # (N, d): same angle for each channel pair
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(x[2i], x[2i+1])`` of ``x`` (``(..., N, d)``) by the given angles."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., N, d/2, 2)
    rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., N, d)
    return x * cos + rotated_half * sin
