"""Attention-dropout masks: a fast CPU draw (opt-in) and one-bit-per-element storage.

Used by :class:`redifu.nn.kernels.attention.ChunkedDropoutAttention`, which keeps each chunk's
mask for backward as bits instead of PyTorch's float noise tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["fast_keep_mask", "pack_bits", "unpack_bits"]

_BIT_WEIGHTS = 1 << torch.arange(8, dtype=torch.uint8)  # (8,)


def fast_keep_mask(shape: torch.Size | tuple[int, ...], keep: float, device: torch.device | str = "cpu") -> Tensor:
    """A Bernoulli(``keep``) bool tensor drawn four elements per 64-bit random word.

    Each element compares 16 random bits with ``round(keep * 2**16)``, so the keep probability
    is ``keep`` rounded to a multiple of 2**-16. The draws come from the default generator (so
    seeding, and activation checkpointing's saved random state, reproduce them) but not in the
    order of :meth:`torch.Tensor.bernoulli_`: the same seed gives other masks than PyTorch's
    dropout, which is why it is opt-in (``training.fast_dropout``).

    Why it exists (docs/BENCHMARKS.md, 2 CPU cores, measured before the shared differential
    mask of commit 284a54f): it draws about 8 times faster than ``bernoulli_``, the largest
    operator of a training step at the IEMOCAP settings (``aten::bernoulli_``, 1.50 s of a
    6.07 s profiled step); training at those settings runs at 200 instead of 161 utterances/s,
    and one 800-utterance dialogue's training step takes 7.92 instead of 12.88 s.

    Shapes:
        - output: ``shape``, bool
    """
    numel = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    lanes = words.view(torch.int16)[:numel]  # uniform over [-2**15, 2**15)
    return lanes.lt(round(keep * 65536) - 32768).view(shape)


def pack_bits(keep: Tensor) -> Tensor:
    """A bool tensor as one bit per element: ``(ceil(numel / 8),)`` uint8.

    32 times smaller than the float32 noise tensor PyTorch's dropout keeps for backward (a
    ratio of sizes, not a measured figure).
    """
    flat = keep.reshape(-1)
    flat = torch.nn.functional.pad(flat.to(torch.uint8), (0, -flat.numel() % 8))
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`pack_bits`: the bool tensor of ``shape``."""
    bits = packed[:, None].bitwise_and(_BIT_WEIGHTS.to(packed.device)).ne(0)  # (numel / 8, 8)
    return bits.view(-1)[: math.prod(shape)].view(shape)
