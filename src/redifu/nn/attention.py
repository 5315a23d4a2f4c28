"""Masked multi-head attention and the pre-norm Transformer block used by the fusion stage."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redifu.nn.kernels.attention import attention_mask_4d, masked_attention
from redifu.nn.positional import RotaryEmbedding, apply_rotary


def key_padding_bias(mask: Tensor) -> Tensor:
    """Boolean ``(B, 1, 1, N)`` attention mask from a ``(B, N)`` key mask (True = attend), or
    ``(B, 1, N, M)`` from a per-query ``(B, N, M)`` mask."""
    return attention_mask_4d(mask)


def causal_attention_mask(mask: Tensor, *, window: int | None = None) -> Tensor:
    r"""Per-query mask of a causal model: query :math:`i` may attend to key :math:`j` iff
    :math:`j \le i` and :math:`i - j \le w` (``window``; ``None``: the whole past) and
    :math:`j` is a real utterance.

    Shapes:
        - mask: ``(B, N)`` bool, True = real utterance
        - output: ``(B, N, N)`` bool
    """
    n = mask.shape[-1]
    positions = torch.arange(n, device=mask.device)
    offset = positions[:, None] - positions[None, :]  # (N, N): i - j
    allowed = offset >= 0
    if window is not None:
        allowed = allowed & (offset <= window)
    return allowed[None] & mask[:, None, :].bool()  # (B, N, N)


def combine_masks(key_mask: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The key padding mask ``(B, M)``, or with a per-query ``attention_mask`` ``(B, N, M)`` both
    at once (``(B, N, M)``)."""
    return key_mask if attention_mask is None else attention_mask & key_mask[:, None, :]


class MultiHeadAttention(nn.Module):
    r"""Multi-head scaled dot-product attention with an explicit key padding mask.

    :math:`\mathrm{Attn}(Q, K, V) = \mathrm{softmax}(QK^\top/\sqrt{d} + M)V`, where :math:`M`
    is :math:`-\infty` at padded keys. Queries come from ``x``; keys and values from
    ``context`` (defaults to ``x``, i.e. self-attention). Without an ``attention_mask`` every
    utterance of a dialogue sees the whole dialogue; a causal model passes one explicitly.

    Args:
        dim (int): Model size ``D``.
        num_heads (int): Number of heads; ``dim`` must be divisible by it.
        dropout (float, optional): Attention dropout. (default: ``0.0``)
        rotary (bool, optional): Apply rotary position embedding to queries and keys; only
            meaningful for self-attention (query and key positions share an index).
            (default: ``False``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout mask with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)

    Shapes:
        - x: ``(B, N, D)``; context: ``(B, M, D)``; key_mask: ``(B, M)`` bool, True = real
        - attention_mask (optional): ``(B, N, M)`` bool, which keys each query may see (a causal
          model's, :func:`causal_attention_mask`); ``None``: every real key
        - output: ``(B, N, D)``; attention (if requested): ``(B, H, N, M)``
    """

    def __init__(
        self, *, dim: int, num_heads: int, dropout: float = 0.0, rotary: bool = False, fast_dropout: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.dropout = dropout
        self.fast_dropout = fast_dropout
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.rotary = RotaryEmbedding(head_dim=self.head_dim) if rotary else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.q_proj, self.kv_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor,
        *,
        context: Tensor | None = None,
        attention_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        context = x if context is None else context
        key_mask = combine_masks(key_mask, attention_mask)  # (B, M) or (B, N, M)
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)
        k, v = self.kv_proj(context).view(b, -1, 2, self.num_heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, M, d)
        if self.rotary is not None:
            cos, sin = self.rotary(n, device=x.device, dtype=x.dtype)
            q = apply_rotary(q, cos, sin)
            cos_k, sin_k = self.rotary(k.shape[2], device=x.device, dtype=x.dtype)
            k = apply_rotary(k, cos_k, sin_k)
        bias = key_padding_bias(key_mask)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if return_attention:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, N, M)
            weights = scores.masked_fill(~bias, float("-inf")).softmax(-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = masked_attention(q, k, v, key_mask, dropout_p=dropout,
                                   fast_dropout=self.fast_dropout)  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(b, n, self.dim)  # (B, N, D)
        return self.out_proj(out), weights


class FeedForward(nn.Module):
    """Position-wise two-layer MLP with GELU: ``W_2 \\mathrm{GELU}(W_1 x)``.

    Args:
        dim (int): Model size.
        mult (float, optional): Hidden size as a multiple of ``dim``. (default: ``2.0``)
        dropout (float, optional): Dropout after the activation. (default: ``0.0``)
    """

    def __init__(self, *, dim: int, mult: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * mult)))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.net:
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention block: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``.

    Args:
        dim (int): Model size.
        num_heads (int): Attention heads.
        dropout (float, optional): Residual and attention dropout. (default: ``0.0``)
        ffn_mult (float, optional): Feed-forward hidden multiple. (default: ``2.0``)
        rotary (bool, optional): Rotary position embedding in the attention. (default: ``False``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout mask with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)

    Shapes:
        - x: ``(B, N, D)``, mask: ``(B, N)`` bool -> ``(B, N, D)``; attention_mask: as for
          :class:`MultiHeadAttention`
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
        rotary: bool = False,
        fast_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout, rotary=rotary,
                                       fast_dropout=fast_dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, mult=ffn_mult, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        for module in (self.attn_norm, self.attn, self.ffn_norm, self.ffn):
            module.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None,
                return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.attn_norm(x), mask, attention_mask=attention_mask,
                                      return_attention=return_attention)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, weights
