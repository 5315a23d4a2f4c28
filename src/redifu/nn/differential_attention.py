"""Differential-Transformer denoising over the utterances of a dialogue (ReDiFu, step 2).

Differential attention computes attention as the difference of two softmax maps, so that
attention "noise" that both maps share cancels out and the signal that only the first map
carries remains. Two variants are provided:

* :class:`DifferentialAttention` (``variant="dual"``): the canonical form of Ye et al.,
  "Differential Transformer" (ICLR 2025), with two query/key halves per head and a
  re-parameterised scalar :math:`\\lambda`, here non-causal and key-padding masked;
* :class:`TemporalDifferentialAttention` (``variant="temporal"``): the variant of the ReDiFu
  authors, where the second map pairs the same queries with the keys of the *previous*
  utterance. Unlike the authors' code it does not wrap around from the first utterance to the
  last, and it masks padding in both maps.

Attention dropout in training is applied to the **differential map** ``A1 - lambda A2`` (one
mask shared by both maps), never to each map with its own mask: with independent masks, where
``A1`` is dropped and ``A2`` kept the output receives ``-lambda A2 / (1 - p)``, so the common-mode
noise that the difference exists to cancel comes back, and at the authors' dropout (0.5-0.6)
mask noise dominates the difference. Ye et al.'s reference module has no attention dropout;
we chose the shared mask on the dev split (3 seeds each, ``training.patience=5``, mean dev
weighted F1 on the IEMOCAP- / MELD-shaped synthetic presets): shared mask 70.18 / 80.05, no
attention dropout 70.60 / 79.04, dropout on the head outputs instead 67.52 / 79.39 (the
differences between the first two are within one seed's spread; shared has the best mean).

Both compute the product of each map with the values through
:func:`redifu.nn.kernels.attention.masked_attention_pair` (PyTorch's fused kernel, or a
chunked one with attention dropout on the CPU), so no ``(B, H, N, N)`` tensor is kept unless
the attention maps are requested.

:class:`DifferentialTransformerLayer` wraps either attention in a pre-norm Transformer block
with a SwiGLU feed-forward network, and :class:`DifferentialDenoiser` stacks such layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redifu.nn.attention import combine_masks
from redifu.nn.kernels.attention import attention_mask_4d, masked_attention_pair
from redifu.nn.kernels.checkpointing import run_layer
from redifu.nn.positional import RotaryEmbedding, apply_rotary

VARIANTS: tuple[str, ...] = ("dual", "temporal")
"""Accepted values of the ``variant`` option."""


def lambda_init_for_layer(layer_index: int) -> float:
    r"""Depth-dependent :math:`\lambda_{init} = 0.8 - 0.6 \exp(-0.3\, l)` of Ye et al. (2025).

    Args:
        layer_index (int): Zero-based index ``l`` of the layer in its stack.
    """
    if layer_index < 0:
        raise ValueError(f"layer_index must be >= 0, got {layer_index}")
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


def _validate_common(*, dim: int, num_heads: int, dropout: float) -> None:
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _masked_map(scores: Tensor, key_mask: Tensor) -> Tensor:
    """Softmax of ``scores`` (``(B, H, N, N)``) over the keys where ``key_mask`` (``(B, N)``, or
    ``(B, N, N)`` per query) is True.

    Masked keys get exactly zero weight. ``key_mask`` must hold at least one True per row.
    """
    scores = scores.masked_fill(~attention_mask_4d(key_mask), float("-inf"))
    return scores.softmax(dim=-1)


def _guard_empty_keys(key_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Make every dialogue's key set non-empty and say which ones were empty.

    A softmax over no keys is undefined (NaN in some kernels), so a dialogue without any valid
    key attends over all of its positions instead and its result is multiplied by zero.

    Returns:
        ``(safe_mask, has_key)``: ``(B, N)`` bool and ``(B, 1, 1, 1)`` bool, ready to broadcast
        over ``(B, H, N, *)`` results. A per-query ``(B, N, M)`` mask is guarded per query:
        ``(B, N, M)`` and ``(B, 1, N, 1)``.
    """
    if key_mask.dim() == 3:
        has_key = key_mask.any(dim=-1)  # (B, N)
        return key_mask | ~has_key[..., None], has_key[:, None, :, None]  # (B, N, M), (B, 1, N, 1)
    has_key = key_mask.any(dim=-1)  # (B,)
    safe_mask = key_mask | ~has_key[:, None]  # (B, N)
    return safe_mask, has_key[:, None, None, None]  # (B, 1, 1, 1)


class DifferentialAttention(nn.Module):
    r"""Differential multi-head attention of Ye et al., "Differential Transformer" (ICLR 2025),
    non-causal and key-padding masked.

    Per head :math:`h`, queries and keys are split into two halves of size :math:`d`:

    .. math::
        A_i = \mathrm{softmax}\!\left(\frac{Q_i K_i^\top}{\sqrt{d}}\right),\quad
        \mathrm{head}_h = (1 - \lambda_{init})\,\mathrm{RMSNorm}\big((A_1 - \lambda A_2)\,V\big),

    with :math:`\lambda = \exp(\lambda_{q1}\cdot\lambda_{k1}) - \exp(\lambda_{q2}\cdot\lambda_{k2})
    + \lambda_{init}` (learnable vectors of size :math:`d`) and
    :math:`\lambda_{init} = 0.8 - 0.6\exp(-0.3\, l)` for layer index :math:`l`. Each head's value
    has size :math:`2d`; the heads are concatenated and projected back to ``dim``.

    Args:
        dim (int): Model size ``D``; must be divisible by ``2 * num_heads``.
        num_heads (int): Number ``H`` of differential heads; ``d = D / (2H)``.
        layer_index (int, optional): Zero-based depth of the layer, sets
            :math:`\lambda_{init}`. (default: ``0``)
        dropout (float, optional): Dropout on the differential map :math:`A_1 - \lambda A_2`
            (one mask for both maps), in training only. (default: ``0.0``)
        rotary (bool, optional): Apply rotary position embedding (utterance positions
            ``0..N-1``) to :math:`Q_1, Q_2, K_1, K_2`; needs an even ``d``. (default: ``False``)
        bias (bool, optional): Use biases in the projections. (default: ``False``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout mask with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)

    Shapes:
        - x: ``(B, N, D)``
        - mask: ``(B, N)`` bool, True for real utterances, False for padding
        - output: ``(B, N, D)`` and, if ``return_attention``, the differential map
          :math:`A_1 - \lambda A_2` of shape ``(B, H, N, N)`` (else ``None``)
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        layer_index: int = 0,
        dropout: float = 0.0,
        rotary: bool = False,
        bias: bool = False,
        fast_dropout: bool = False,
    ) -> None:
        super().__init__()
        _validate_common(dim=dim, num_heads=num_heads, dropout=dropout)
        if dim % (2 * num_heads):
            raise ValueError(f"dim ({dim}) must be divisible by 2 * num_heads ({2 * num_heads})")
        if layer_index < 0:
            raise ValueError(f"layer_index must be >= 0, got {layer_index}")
        head_dim = dim // num_heads // 2
        if rotary and head_dim % 2:
            raise ValueError(
                f"rotary needs an even head size dim / (2 * num_heads), got {head_dim}"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.layer_index = layer_index
        self.dropout = dropout
        self.fast_dropout = fast_dropout
        self.lambda_init = lambda_init_for_layer(layer_index)
        self.scale = 1.0 / math.sqrt(head_dim)

        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.lambda_q1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_q2 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k2 = nn.Parameter(torch.empty(head_dim))
        self.head_norm = nn.RMSNorm(2 * head_dim, eps=1e-5, elementwise_affine=True)
        self.rotary = RotaryEmbedding(head_dim=head_dim) if rotary else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            linear.reset_parameters()
        for vector in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(vector, mean=0.0, std=0.1)
        self.head_norm.reset_parameters()

    def differential_lambda(self) -> Tensor:
        r"""The current scalar :math:`\lambda` (0-dim tensor), shared by all heads."""
        return (
            torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
            - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
            + self.lambda_init
        )

    def _attend(
        self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None, return_maps: bool = False
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Pre-normalisation head outputs :math:`(A_1 - \\lambda A_2) V`, ``(B, H, N, 2d)``,
        and, if ``return_maps``, the two maps ``(A1, A2)``, each ``(B, H, N, N)``."""
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        # the pair of halves of head h sits next to each other, as in Ye et al.'s 2H "sub-heads"
        q = self.q_proj(x).view(B, N, H, 2, d).permute(3, 0, 2, 1, 4)  # (2, B, H, N, d)
        k = self.k_proj(x).view(B, N, H, 2, d).permute(3, 0, 2, 1, 4)  # (2, B, H, N, d)
        v = self.v_proj(x).view(B, N, H, 2 * d).transpose(1, 2)  # (B, H, N, 2d)
        if self.rotary is not None:
            cos, sin = self.rotary(N, device=x.device, dtype=q.dtype)  # (N, d) each
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q1, q2 = q.unbind(0)  # (B, H, N, d) each
        k1, k2 = k.unbind(0)  # (B, H, N, d) each
        lam = self.differential_lambda()
        key_mask, has_key = _guard_empty_keys(combine_masks(mask, attention_mask))
        dropout_p = self.dropout if self.training else 0.0

        if not return_maps:
            # one dropout mask for both maps: the dropped differential map times v
            o1, o2 = masked_attention_pair((q1, k1, key_mask), (q2, k2, key_mask), v, dropout_p=dropout_p,
                                           scale=self.scale, fast_dropout=self.fast_dropout)  # (B, H, N, 2d) each
            return (o1 - lam * o2) * has_key, None

        a1 = _masked_map(q1 @ k1.transpose(-2, -1) * self.scale, key_mask) * has_key  # (B, H, N, N)
        a2 = _masked_map(q2 @ k2.transpose(-2, -1) * self.scale, key_mask) * has_key  # (B, H, N, N)
        heads = F.dropout(a1 - lam * a2, dropout_p) @ v  # (B, H, N, 2d)
        return heads, (a1, a2)

    def forward(
        self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        B, N, _ = x.shape
        heads, maps = self._attend(x, mask, attention_mask=attention_mask, return_maps=return_attention)
        heads = self.head_norm(heads) * (1.0 - self.lambda_init)  # (B, H, N, 2d)
        out = self.out_proj(heads.transpose(1, 2).reshape(B, N, self.dim))  # (B, N, D)
        if maps is None:
            return out, None
        a1, a2 = maps
        return out, a1 - self.differential_lambda() * a2


class TemporalDifferentialAttention(nn.Module):
    r"""Temporal differential attention: the second map pairs each query with the key of the
    previous utterance (the ReDiFu authors' variant, without its wrap-around and with padding
    masked).

    With one set of queries, keys and values per head (size :math:`d = D / H`):

    .. math::
        A_1[i, j] = \mathrm{softmax}_j\!\left(\frac{q_i \cdot k_j}{\sqrt{d}}\right),\quad
        A_2[i, j] = \mathrm{softmax}_{j \ge 1}\!\left(\frac{q_i \cdot k_{j-1}}{\sqrt{d}}\right),

    .. math::
        \mathrm{head}_h = (1 - \lambda_{init})\,\mathrm{RMSNorm}\big((A_1 - \lambda_h A_2)\,V\big),
        \quad \lambda_h = \sigma(\theta_h) \in (0, 1).

    Map 2 weighs value :math:`v_j` by how well the query matches the key of utterance
    :math:`j-1`. Column 0 (no previous utterance) is excluded, so nothing wraps around from the
    first utterance to the last; a key :math:`j` of map 2 is valid iff :math:`j \ge 1` and both
    :math:`j` and :math:`j-1` are real. A dialogue with no valid key in map 2 (one utterance)
    gets no map-2 contribution at all.

    Args:
        dim (int): Model size ``D``; must be divisible by ``num_heads``.
        num_heads (int): Number ``H`` of heads; ``d = D / H``.
        dropout (float, optional): Dropout on the differential map :math:`A_1 - \lambda_h A_2`
            (one mask for both maps), in training only. (default: ``0.0``)
        rotary (bool, optional): Apply rotary position embedding to queries and keys (keys are
            rotated at their own position before being shifted); needs an even ``d``.
            (default: ``False``)
        bias (bool, optional): Use biases in the projections. (default: ``False``)
        lambda_init (float, optional): Initial :math:`\lambda_h`, in ``(0, 1)``; also the
            constant output scale ``1 - lambda_init``. (default: ``0.5``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout mask with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)

    Shapes:
        - x: ``(B, N, D)``
        - mask: ``(B, N)`` bool, True for real utterances, False for padding
        - output: ``(B, N, D)`` and, if ``return_attention``, the differential map
          :math:`A_1 - \lambda_h A_2` of shape ``(B, H, N, N)`` (else ``None``)
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        rotary: bool = False,
        bias: bool = False,
        lambda_init: float = 0.5,
        fast_dropout: bool = False,
    ) -> None:
        super().__init__()
        _validate_common(dim=dim, num_heads=num_heads, dropout=dropout)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 < lambda_init < 1.0:
            raise ValueError(f"lambda_init must be in (0, 1), got {lambda_init}")
        head_dim = dim // num_heads
        if rotary and head_dim % 2:
            raise ValueError(f"rotary needs an even head size dim / num_heads, got {head_dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.fast_dropout = fast_dropout
        self.lambda_init = float(lambda_init)
        self.scale = 1.0 / math.sqrt(head_dim)

        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.lambda_logit = nn.Parameter(torch.empty(num_heads))
        self.head_norm = nn.RMSNorm(head_dim, eps=1e-5, elementwise_affine=True)
        self.rotary = RotaryEmbedding(head_dim=head_dim) if rotary else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            linear.reset_parameters()
        # sigmoid(logit(lambda_init)) == lambda_init
        nn.init.constant_(self.lambda_logit, math.log(self.lambda_init / (1.0 - self.lambda_init)))
        self.head_norm.reset_parameters()

    def differential_lambda(self) -> Tensor:
        r"""The current per-head :math:`\lambda_h \in (0, 1)`, shape ``(H,)``."""
        return torch.sigmoid(self.lambda_logit)

    @staticmethod
    def previous_key_mask(mask: Tensor) -> Tensor:
        """Valid keys of map 2: position ``j`` iff ``j >= 1`` and ``j``, ``j-1`` are real.

        Shapes:
            - mask: ``(B, N)`` bool
            - output: ``(B, N)`` bool
        """
        prev = torch.zeros_like(mask)
        prev[:, 1:] = mask[:, 1:] & mask[:, :-1]
        return prev

    def _attend(
        self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None, return_maps: bool = False
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Pre-normalisation head outputs :math:`(A_1 - \\lambda_h A_2) V`, ``(B, H, N, d)``,
        and, if ``return_maps``, the two maps ``(A1, A2)``, each ``(B, H, N, N)``."""
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        k = self.k_proj(x).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        v = self.v_proj(x).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        if self.rotary is not None:
            cos, sin = self.rotary(N, device=x.device, dtype=q.dtype)  # (N, d) each
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # slot j holds the key of utterance j-1; slot 0 is a zero placeholder, always masked
        k_prev = F.pad(k[:, :, :-1], (0, 0, 1, 0))  # (B, H, N, d)
        lam = self.differential_lambda().view(1, H, 1, 1)
        mask1, has_key1 = _guard_empty_keys(combine_masks(mask, attention_mask))
        mask2, has_key2 = _guard_empty_keys(combine_masks(self.previous_key_mask(mask), attention_mask))
        dropout_p = self.dropout if self.training else 0.0

        if not return_maps:
            # one dropout mask for both maps: the dropped differential map times v
            o1, o2 = masked_attention_pair((q, k, mask1), (q, k_prev, mask2), v, dropout_p=dropout_p,
                                           scale=self.scale, fast_dropout=self.fast_dropout)  # (B, H, N, d) each
            return o1 * has_key1 - lam * (o2 * has_key2), None

        a1 = _masked_map(q @ k.transpose(-2, -1) * self.scale, mask1) * has_key1  # (B, H, N, N)
        a2 = _masked_map(q @ k_prev.transpose(-2, -1) * self.scale, mask2) * has_key2  # (B, H, N, N)
        heads = F.dropout(a1 - lam * a2, dropout_p) @ v  # (B, H, N, d)
        return heads, (a1, a2)

    def forward(
        self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        B, N, _ = x.shape
        heads, maps = self._attend(x, mask, attention_mask=attention_mask, return_maps=return_attention)
        heads = self.head_norm(heads) * (1.0 - self.lambda_init)  # (B, H, N, d)
        out = self.out_proj(heads.transpose(1, 2).reshape(B, N, self.dim))  # (B, N, D)
        if maps is None:
            return out, None
        a1, a2 = maps
        return out, a1 - self.differential_lambda().view(1, -1, 1, 1) * a2


class SwiGLUFeedForward(nn.Module):
    r"""SwiGLU feed-forward network (Shazeer, "GLU Variants Improve Transformer", 2020):
    :math:`W_{down}\big(\mathrm{SiLU}(W_{gate} x) \odot W_{up} x\big)`.

    Args:
        dim (int): Input and output size ``D``.
        hidden_dim (int): Hidden size.
        bias (bool, optional): Use biases in the projections. (default: ``False``)

    Shapes:
        - input: ``(..., D)``
        - output: ``(..., D)``
    """

    def __init__(self, *, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.gate_up = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gate_up.reset_parameters()
        self.down.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.down(F.silu(gate) * up)


class DifferentialTransformerLayer(nn.Module):
    r"""Pre-norm Transformer block around a differential attention:

    .. math::
        x \leftarrow x + \mathrm{Drop}(\mathrm{Attn}(\mathrm{LN}(x), m)),\quad
        x \leftarrow x + \mathrm{Drop}(\mathrm{SwiGLU}(\mathrm{LN}(x))).

    Args:
        dim (int): Model size ``D``.
        num_heads (int): Number of heads of the attention.
        layer_index (int, optional): Zero-based depth, sets :math:`\lambda_{init}` of the
            ``"dual"`` variant. (default: ``0``)
        variant (str, optional): ``"dual"`` for :class:`DifferentialAttention` (Ye et al.) or
            ``"temporal"`` for :class:`TemporalDifferentialAttention`. (default: ``"dual"``)
        dropout (float, optional): Attention and residual dropout. (default: ``0.0``)
        ffn_mult (float, optional): SwiGLU hidden size is ``round(ffn_mult * dim)``.
            (default: ``2.0``)
        rotary (bool, optional): Rotary position embedding inside the attention.
            (default: ``False``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout mask with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)

    Shapes:
        - x: ``(B, N, D)``; mask: ``(B, N)`` bool, True for real utterances
        - output: ``(B, N, D)`` and the ``(B, H, N, N)`` differential map or ``None``
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        layer_index: int = 0,
        variant: str = "dual",
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
        rotary: bool = False,
        fast_dropout: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not ffn_mult > 0:
            raise ValueError(f"ffn_mult must be > 0, got {ffn_mult}")
        _validate_common(dim=dim, num_heads=num_heads, dropout=dropout)
        self.variant = variant
        self.attn_norm = nn.LayerNorm(dim)
        self.attn: DifferentialAttention | TemporalDifferentialAttention
        if variant == "dual":
            self.attn = DifferentialAttention(
                dim=dim, num_heads=num_heads, layer_index=layer_index, dropout=dropout, rotary=rotary,
                fast_dropout=fast_dropout,
            )
        else:
            if layer_index < 0:
                raise ValueError(f"layer_index must be >= 0, got {layer_index}")
            self.attn = TemporalDifferentialAttention(
                dim=dim, num_heads=num_heads, dropout=dropout, rotary=rotary, fast_dropout=fast_dropout
            )
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = SwiGLUFeedForward(dim=dim, hidden_dim=max(1, round(ffn_mult * dim)))
        self.residual_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attn_norm.reset_parameters()
        self.attn.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.ffn.reset_parameters()

    def forward(
        self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        attended, attention = self.attn(self.attn_norm(x), mask, attention_mask=attention_mask,
                                        return_attention=return_attention)
        x = x + self.residual_dropout(attended)
        x = x + self.residual_dropout(self.ffn(self.ffn_norm(x)))
        return x, attention


class DifferentialDenoiser(nn.Module):
    r"""Stack of :class:`DifferentialTransformerLayer` (layer indices ``0..L-1``) followed by a
    final LayerNorm; denoises one modality's utterance sequence (ReDiFu, step 2). Outputs at
    padded positions are set to zero.

    Args:
        dim (int): Model size ``D``.
        num_heads (int): Number of heads per layer.
        num_layers (int): Number ``L >= 1`` of layers.
        variant (str, optional): ``"dual"`` or ``"temporal"``, see
            :class:`DifferentialTransformerLayer`. (default: ``"dual"``)
        dropout (float, optional): Attention and residual dropout. (default: ``0.0``)
        ffn_mult (float, optional): SwiGLU hidden size multiplier. (default: ``2.0``)
        rotary (bool, optional): Rotary position embedding inside every attention.
            (default: ``False``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout mask with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)
        activation_checkpointing (bool, optional): Recompute each layer's activations in
            backward instead of keeping them (:mod:`redifu.nn.kernels.checkpointing`; same
            results, dropout masks included). A training-time choice. (default: ``False``)

    Shapes:
        - x: ``(B, N, D)``; mask: ``(B, N)`` bool, True for real utterances
        - attention_mask (optional): ``(B, N, N)`` bool, the keys each query may see in every
          layer (a causal model's, :func:`redifu.nn.attention.causal_attention_mask`)
        - output: ``(B, N, D)`` (zero at padding) and, if ``return_attention``, a list of ``L``
          differential maps of shape ``(B, H, N, N)`` (else ``None``)
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        num_layers: int,
        variant: str = "dual",
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
        rotary: bool = False,
        fast_dropout: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.layers = nn.ModuleList(
            DifferentialTransformerLayer(
                dim=dim,
                num_heads=num_heads,
                layer_index=index,
                variant=variant,
                dropout=dropout,
                ffn_mult=ffn_mult,
                rotary=rotary,
                fast_dropout=fast_dropout,
            )
            for index in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.activation_checkpointing = activation_checkpointing
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        self.norm.reset_parameters()

    def forward(
        self, x: Tensor, mask: Tensor, *, attention_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        maps: list[Tensor] = []
        for layer in self.layers:
            x, attention = run_layer(layer, x, mask, attention_mask=attention_mask, return_attention=return_attention,
                                     checkpointed=self.activation_checkpointing and self.training)
            if attention is not None:
                maps.append(attention)
        x = self.norm(x) * mask[..., None].to(x.dtype)  # (B, N, D), zero at padding
        return x, (maps if return_attention else None)
