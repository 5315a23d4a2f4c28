"""Key-padding-masked attention whose memory is linear in the dialogue length.

Every attention of ReDiFu (the differential denoiser and the fusion) calls :func:`masked_attention`
(or :func:`masked_attention_pair`, one dropout mask for the two maps of a differential
attention). Each computes ``dropout(softmax(q k^T s + b)) v`` with ``b`` = -inf at padded keys,
as :func:`torch.nn.functional.scaled_dot_product_attention` does, and picks how:

* without dropout, PyTorch's kernel, which is fused (flash attention on the CPU) and never holds
  a ``(B, H, N, M)`` map; values wider than the queries (the dual differential attention's) are
  attended slice by slice so that the fused kernel applies;
* with attention dropout on the CPU, :class:`ChunkedDropoutAttention`: PyTorch has no fused CPU
  kernel with dropout, and its math path keeps about three ``(B, H, N, M)`` float tensors per
  call for backward (scores after softmax, the dropout noise, the dropped map), at the authors'
  IEMOCAP settings (64 heads) most of a training step's memory, growing with ``N^2``.

Same mask, same numbers: PyTorch's CPU dropout draws one Bernoulli value per element of the
contiguous ``(B, H, N, M)`` map, in memory order, from the default generator. Chunks that walk
the map in that order and draw in turn consume the generator exactly as one whole draw does,
so the result equals the math path's within float rounding, and the generator ends in the same
state. Some builds draw differently (MKL's vectorised Bernoulli on Intel CPUs seeds once per
call); :func:`chunked_dropout_is_exact` checks this once per process, and where chunked draws
would differ, :func:`masked_attention` keeps PyTorch's math path, so results never change.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from redifu.nn.kernels.dropout_masks import fast_keep_mask, pack_bits, unpack_bits

__all__ = ["CHUNK_ELEMENTS", "ChunkedDropoutAttention", "attention_mask_4d", "chunked_dropout_is_exact", "masked_attention",
           "masked_attention_pair"]

# Elements of one chunk of the attention map (16 MiB in fp32): large enough that the Python
# loop costs little against the matrix products, small against the rest of a training step.
CHUNK_ELEMENTS = 1 << 22


@functools.lru_cache(maxsize=None)
def chunked_dropout_is_exact() -> bool:
    """Whether Bernoulli draws over consecutive pieces of a tensor equal one draw over all of it.

    True for PyTorch's serial CPU kernel (one generator draw per element in memory order);
    False where a vectorised kernel reseeds per call. Checked once per process on a private
    generator, so the global random state is untouched.
    """
    size, seed = 4099, 1234
    whole_gen, piece_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    whole = torch.empty(size).bernoulli_(0.5, generator=whole_gen)
    pieces = torch.empty(size)
    for start in range(0, size, 1000):
        pieces[start:start + 1000].bernoulli_(0.5, generator=piece_gen)
    return torch.equal(whole, pieces) and torch.equal(whole_gen.get_state(), piece_gen.get_state())


def _chunks(batch_heads: int, queries: int, keys: int, budget: int):
    """Slices ``(bh, rows)`` covering a ``(BH, N, M)`` map in memory order, ``~budget`` elements each."""
    rows = max(1, budget // max(1, keys))
    if queries <= rows:
        heads = max(1, budget // max(1, queries * keys))
        for start in range(0, batch_heads, heads):
            yield slice(start, min(start + heads, batch_heads)), slice(0, queries)
    else:
        for bh in range(batch_heads):
            for start in range(0, queries, rows):
                yield slice(bh, bh + 1), slice(start, min(start + rows, queries))


def _probabilities(q: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """``softmax(q k^T + bias)`` as PyTorch's math path computes it (q and k pre-scaled)."""
    scores = torch.matmul(q, k.transpose(-2, -1))  # (c, rows, M)
    scores.add_(bias)
    return torch._safe_softmax(scores, -1) if hasattr(torch, "_safe_softmax") else scores.softmax(-1)


class ChunkedDropoutAttention(torch.autograd.Function):
    r"""``dropout(softmax(q k^T s + b)) v`` in chunks, with PyTorch's dropout mask, linear memory.

    ``b`` is 0 at keys that may be attended to and :math:`-\infty` elsewhere. It computes
    exactly what PyTorch's math path computes, with the same dropout mask, in chunks of the
    map: the noise of each chunk is drawn from the default CPU generator in the order of the
    whole map (see the module docstring) and kept for backward packed to one bit per element
    (:func:`~redifu.nn.kernels.dropout_masks.pack_bits`); backward recomputes each chunk's
    softmax (flash-attention style recomputation; Dao et al., "FlashAttention", 2022). Beyond
    ``q``, ``k``, ``v`` and the bits, memory is ``O(chunk)``.

    Why it exists: docs/BENCHMARKS.md has no A/B figure of this kernel against PyTorch's math
    path at the shipped configs. What it shows (configs/iemocap.yaml, 64 heads, 2 CPU cores,
    measured before the shared differential mask of commit 284a54f) is one 800-utterance
    dialogue's training step at 1,857 MB peak RSS with dropout, no more than without dropout
    through PyTorch's fused kernel (1,873 MB), peak memory growing linearly in N. By shape alone
    the math path would keep about 3 x 64 x 800 x 800 float32 values (492 MB) for backward
    per attention call at that N, 14 calls per step (an estimate, not a measurement).

    Shapes:
        - q: ``(B, H, N, d)``; k: ``(B, H, M, d)``; v: ``(B, H, M, e)``; key_mask: ``(B, M)`` bool
        - output: ``(B, H, N, e)``
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, dropout_p: float, scale: float, budget: int,
        fast: bool = False,
    ) -> Tensor:
        B, H, N, d = q.shape
        M, e = k.shape[2], v.shape[3]
        root = math.sqrt(scale)  # like the math path: scale q and k by sqrt(scale) each
        qs = (q * root).reshape(B * H, N, d)  # (BH, N, d)
        ks = (k * root).reshape(B * H, M, d)  # (BH, M, d)
        vs = v.reshape(B * H, M, e)  # (BH, M, e)
        bias = _key_bias(key_mask, H, q.dtype)  # (BH, 1 or N, M)
        keep = 1.0 - dropout_p
        out = q.new_empty(B * H, N, e)
        kept = []
        for heads, rows in _chunks(B * H, N, M, budget):
            attn = _probabilities(qs[heads, rows], ks[heads], _bias_rows(bias, heads, rows))  # (c, r, M)
            if fast:  # opt-in: other draws than PyTorch's dropout, same distribution
                mask = fast_keep_mask(attn.shape, keep, attn.device)
                noise = mask.to(attn.dtype)
            else:
                noise = torch.empty_like(attn).bernoulli_(keep)  # what at::dropout draws, in the same order
                mask = noise.bool()
            kept.append(pack_bits(mask))
            out[heads, rows] = torch.matmul(attn.mul_(noise.div_(keep)), vs[heads])
        ctx.save_for_backward(q, k, v, key_mask, *kept)
        ctx.dropout_p, ctx.scale, ctx.budget = dropout_p, scale, budget
        return out.view(B, H, N, e)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, key_mask, *kept = ctx.saved_tensors
        B, H, N, d = q.shape
        M, e = k.shape[2], v.shape[3]
        root = math.sqrt(ctx.scale)
        qs = (q * root).reshape(B * H, N, d)
        ks = (k * root).reshape(B * H, M, d)
        vs = v.reshape(B * H, M, e)
        grad = grad_out.reshape(B * H, N, e)
        bias = _key_bias(key_mask, H, q.dtype)
        keep = 1.0 - ctx.dropout_p
        grad_q, grad_k, grad_v = torch.zeros_like(qs), torch.zeros_like(ks), torch.zeros_like(vs)
        for bits, (heads, rows) in zip(kept, _chunks(B * H, N, M, ctx.budget)):
            attn = _probabilities(qs[heads, rows], ks[heads], _bias_rows(bias, heads, rows))  # (c, r, M)
            noise = unpack_bits(bits, attn.shape).to(attn.dtype).div_(keep)  # the forward's noise exactly
            grad_c = grad[heads, rows]  # (c, r, e)
            grad_v[heads] += torch.matmul((attn * noise).transpose(-2, -1), grad_c)
            grad_attn = torch.matmul(grad_c, vs[heads].transpose(-2, -1)).mul_(noise)  # (c, r, M)
            # softmax backward: a * (g - sum(g * a))
            grad_scores = grad_attn.sub_((grad_attn * attn).sum(-1, keepdim=True)).mul_(attn)
            grad_q[heads, rows] = torch.matmul(grad_scores, ks[heads])
            grad_k[heads] += torch.matmul(grad_scores.transpose(-2, -1), qs[heads, rows])
        return (
            (grad_q * root).view(B, H, N, d),
            (grad_k * root).view(B, H, M, d),
            grad_v.view(B, H, M, e),
            None, None, None, None, None,
        )


def _key_bias(key_mask: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """Additive ``(B * H, 1, M)`` bias (``(B * H, N, M)`` for a per-query ``(B, N, M)`` mask): 0
    where a key may be attended to, -inf elsewhere."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill_(~key_mask, float("-inf"))
    if key_mask.dim() == 3:
        B, N, M = key_mask.shape
        return bias[:, None].expand(-1, heads, -1, -1).reshape(B * heads, N, M)
    return bias[:, None, None, :].expand(-1, heads, 1, -1).reshape(-1, 1, key_mask.shape[-1])


def _bias_rows(bias: Tensor, heads: slice, rows: slice) -> Tensor:
    """The part of :func:`_key_bias`'s bias for a chunk: every row shares a key-padding bias."""
    return bias[heads] if bias.shape[1] == 1 else bias[heads, rows]


def attention_mask_4d(key_mask: Tensor) -> Tensor:
    """Boolean ``(B, 1, 1 or N, M)`` attention mask for PyTorch's kernels from a ``(B, M)`` key
    mask or a per-query ``(B, N, M)`` mask (True = may attend)."""
    return key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None, :]


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    budget: int = CHUNK_ELEMENTS,
    fast_dropout: bool = False,
) -> Tensor:
    r"""Non-causal ``softmax(q k^T \cdot scale)`` over the keys where ``key_mask`` is True, times ``v``.

    Equal (within float rounding, same dropout mask for the same seed) to
    ``F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :],
    dropout_p=dropout_p, scale=scale)``. With dropout on the CPU it runs
    :class:`ChunkedDropoutAttention`, which never stores the map (its dropout mask as bits only);
    otherwise it calls PyTorch's kernel (fused where one exists).

    Args:
        q (Tensor): Queries.
        k (Tensor): Keys.
        v (Tensor): Values.
        key_mask (Tensor): True at keys that may be attended to.
        dropout_p (float, optional): Attention dropout; pass 0 outside training. (default: ``0.0``)
        scale (float, optional): Score scale; ``None`` gives ``1 / sqrt(d)``. (default: ``None``)
        budget (int, optional): Elements of the map computed at once by the chunked path.
            (default: :data:`CHUNK_ELEMENTS`)
        fast_dropout (bool, optional): On the CPU, draw the dropout masks with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for the same seed, so results differ from the
            default). No effect elsewhere.
            (default: ``False``)

    Shapes:
        - q: ``(B, H, N, d)``; k: ``(B, H, M, d)``; v: ``(B, H, M, e)``; key_mask: ``(B, M)`` bool,
          or ``(B, N, M)`` for a mask per query (a causal one, :func:`redifu.nn.attention.causal_attention_mask`)
        - output: ``(B, H, N, e)``
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if (
        dropout_p > 0.0
        and q.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and q.dtype == k.dtype == v.dtype
        and (fast_dropout or chunked_dropout_is_exact())
    ):
        return ChunkedDropoutAttention.apply(q, k, v, key_mask, dropout_p, scale, budget, fast_dropout)
    if dropout_p == 0.0 and v.shape[-1] != q.shape[-1] and v.shape[-1] % q.shape[-1] == 0:
        # Fused kernels need one head size for q, k and v (the dual differential attention has
        # values twice as wide); without them PyTorch materialises the map. Attend once per slice.
        # (docs/BENCHMARKS.md has no separate figure for this at the shipped configs.)
        return torch.cat([
            F.scaled_dot_product_attention(q, k, part, attn_mask=attention_mask_4d(key_mask), scale=scale)
            for part in v.split(q.shape[-1], dim=-1)
        ], dim=-1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_mask_4d(key_mask), dropout_p=dropout_p, is_causal=False, scale=scale
    )


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def masked_attention_pair(
    first: tuple[Tensor, Tensor, Tensor],
    second: tuple[Tensor, Tensor, Tensor],
    v: Tensor,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    fast_dropout: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Two attentions over the same values with **one** dropout mask: ``(m * A1) v`` and ``(m * A2) v``.

    ``first`` and ``second`` are ``(q, k, key_mask)`` triples of the same shapes. Their
    difference is then ``(m * (A1 - lambda A2)) v``: dropout of the differential map itself, so
    the noise that both maps share still cancels in training. Both calls draw the same mask
    because the second one replays the random state the first one started from (the draws
    depend on that state and the map's shape only, on the CPU and in CUDA's Philox kernels);
    the generator ends where one draw leaves it.

    Shapes:
        - q: ``(B, H, N, d)``; k: ``(B, H, M, d)``; v: ``(B, H, M, e)``; key_mask: ``(B, M)`` bool
        - output: two ``(B, H, N, e)`` tensors
    """
    (q1, k1, mask1), (q2, k2, mask2) = first, second
    if q1.shape != q2.shape or k1.shape != k2.shape:
        raise ValueError(f"both attentions need the same shapes, got q {tuple(q1.shape)}/{tuple(q2.shape)}, "
                         f"k {tuple(k1.shape)}/{tuple(k2.shape)}")
    options = dict(dropout_p=dropout_p, scale=scale, fast_dropout=fast_dropout)
    if dropout_p == 0.0:
        return masked_attention(q1, k1, v, mask1, **options), masked_attention(q2, k2, v, mask2, **options)
    start = _rng_state(q1.device)
    o1 = masked_attention(q1, k1, v, mask1, **options)
    end = _rng_state(q1.device)
    _set_rng_state(q1.device, start)
    o2 = masked_attention(q2, k2, v, mask2, **options)
    _set_rng_state(q1.device, end)
    return o1, o2
