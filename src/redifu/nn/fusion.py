"""Cross-modal fusion: text-guided diffusion (ReDiFu), symmetric cross-attention, concatenation.

All three take the per-modality streams (text first) and return a fused utterance
representation plus the per-modality streams that the auxiliary classifiers read. An optional
``attention_mask`` ``(B, N, N)`` restricts which utterances each query sees in every self- and
cross-attention (a causal model passes :func:`redifu.nn.attention.causal_attention_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from redifu.nn.attention import FeedForward, MultiHeadAttention, TransformerBlock
from redifu.nn.kernels.checkpointing import run_layer

FUSIONS = ("concat", "symmetric", "text_guided")


@dataclass
class FusionOutput:
    """What a fusion module returns.

    Attributes:
        fused: ``(B, N, D)`` fused utterance representation, or ``None`` for a fusion built with
            ``fused_output=False`` (a model that reads only the per-modality streams).
        streams: per modality ``(B, N, D)``, after intra- and cross-modal attention.
        attention: named attention maps ``(B, H, N, N)`` and gates ``(B, N, D)``, when requested.
    """

    fused: Tensor | None
    streams: dict[str, Tensor]
    attention: dict[str, Tensor] = field(default_factory=dict)


def _check_modalities(modalities: tuple[str, ...]) -> None:
    if not modalities or modalities[0] != "text":
        raise ValueError(f"modalities must start with 'text', got {modalities}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be distinct, got {modalities}")


class ConcatFusion(nn.Module):
    """Late fusion without cross-modal attention: ``LN(W [h_t; h_a; h_v])``.

    Args:
        dim (int): Model size ``D``.
        modalities (tuple[str, ...]): Modality names, text first.
        dropout (float, optional): Dropout on the fused vector. (default: ``0.0``)
        fused_output (bool, optional): Build the projection that makes the fused vector; without
            it (``False``) the module passes the streams through and returns ``fused=None``.
            (default: ``True``)

    Shapes:
        - streams: per modality ``(B, N, D)``; mask ``(B, N)`` -> fused ``(B, N, D)``
    """

    def __init__(self, *, dim: int, modalities: tuple[str, ...], dropout: float = 0.0,
                 fused_output: bool = True) -> None:
        super().__init__()
        _check_modalities(modalities)
        self.modalities = modalities
        self.proj = nn.Linear(dim * len(modalities), dim) if fused_output else None
        self.norm = nn.LayerNorm(dim) if fused_output else None
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        if self.proj is not None:
            self.proj.reset_parameters()
            self.norm.reset_parameters()

    def forward(self, streams: dict[str, Tensor], mask: Tensor, *, attention_mask: Tensor | None = None,
                return_attention: bool = False) -> FusionOutput:
        if self.proj is None:
            return FusionOutput(fused=None, streams=dict(streams))
        stacked = torch.cat([streams[m] for m in self.modalities], dim=-1)  # (B, N, M*D)
        fused = self.norm(self.dropout(self.proj(stacked)))
        return FusionOutput(fused=fused, streams=dict(streams))


class SymmetricFusion(nn.Module):
    """Every modality attends to itself, then cross-attends to every other modality, symmetrically.

    This is the fusion of the ReDiFu authors' code: per layer,
    :math:`h_m \\leftarrow h_m + \\sum_{m' \\ne m} \\mathrm{Attn}(h_m, h_{m'})`, no modality
    privileged; the fused vector is a projection of the concatenated final streams.

    Args:
        dim (int): Model size ``D``.
        modalities (tuple[str, ...]): Modality names, text first.
        num_layers (int): Number of fusion layers.
        num_heads (int): Attention heads.
        dropout (float, optional): Dropout. (default: ``0.0``)
        ffn_mult (float, optional): Feed-forward hidden multiple. (default: ``2.0``)
        rotary (bool, optional): Rotary positions in the self-attention. (default: ``False``)
        cross_rotary (bool, optional): Rotary positions in the cross-modal attention.
            (default: ``False``)
        fused_output (bool, optional): Build the projection of the concatenated streams that
            makes the fused vector (``False``: ``fused=None``). (default: ``True``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout masks with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)
        activation_checkpointing (bool, optional): Recompute each layer's activations in
            backward instead of keeping them (:mod:`redifu.nn.kernels.checkpointing`; same
            results, dropout masks included). A training-time choice. (default: ``False``)

    Shapes:
        - streams: per modality ``(B, N, D)``; mask ``(B, N)`` -> fused ``(B, N, D)``
    """

    def __init__(
        self,
        *,
        dim: int,
        modalities: tuple[str, ...],
        num_layers: int,
        num_heads: int,
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
        rotary: bool = False,
        cross_rotary: bool = False,
        fused_output: bool = True,
        fast_dropout: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_modalities(modalities)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.modalities = modalities
        self.pairs = [(m, o) for m in modalities for o in modalities if o != m]
        self.self_blocks = nn.ModuleList(
            nn.ModuleDict(
                {m: TransformerBlock(dim=dim, num_heads=num_heads, dropout=dropout, ffn_mult=ffn_mult, rotary=rotary,
                                     fast_dropout=fast_dropout)
                 for m in modalities}
            )
            for _ in range(num_layers)
        )
        self.cross = nn.ModuleList(
            nn.ModuleDict({f"{m}_{o}": MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout,
                                                             rotary=cross_rotary, fast_dropout=fast_dropout)
                           for m, o in self.pairs})
            for _ in range(num_layers)
        )
        self.cross_norms = nn.ModuleList(
            nn.ModuleDict({m: nn.LayerNorm(dim) for m in modalities}) for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.concat = ConcatFusion(dim=dim, modalities=modalities, dropout=dropout, fused_output=fused_output)
        self.activation_checkpointing = activation_checkpointing

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, streams: dict[str, Tensor], mask: Tensor, *, attention_mask: Tensor | None = None,
                return_attention: bool = False) -> FusionOutput:
        streams = dict(streams)
        maps: dict[str, Tensor] = {}
        for layer, (blocks, cross, norms) in enumerate(zip(self.self_blocks, self.cross, self.cross_norms)):
            for m in self.modalities:
                streams[m], weights = run_layer(blocks[m], streams[m], mask, attention_mask=attention_mask,
                                                return_attention=return_attention,
                                                checkpointed=self.activation_checkpointing and self.training)
                if weights is not None:
                    maps[f"layer{layer}.{m}_self"] = weights
            normed = {m: norms[m](streams[m]) for m in self.modalities}
            updates = {m: torch.zeros_like(streams[m]) for m in self.modalities}
            for m, o in self.pairs:
                attended, weights = cross[f"{m}_{o}"](
                    normed[m], mask, context=normed[o], attention_mask=attention_mask, return_attention=return_attention
                )
                updates[m] = updates[m] + attended
                if weights is not None:
                    maps[f"layer{layer}.{m}_to_{o}"] = weights
            streams = {m: streams[m] + self.dropout(updates[m]) for m in self.modalities}
        out = self.concat(streams, mask)
        out.attention = maps
        return out


class DiffusionLayer(nn.Module):
    r"""One text-guided diffusion layer.

    Self-attention inside each modality, then text queries attend to each auxiliary modality
    :math:`m` (audio, visual): :math:`c_m = \mathrm{Attn}(Q{=}h_t, K{=}V{=}h_m)`, plus (with
    ``aligned``) the same utterance's own :math:`h_m`. A learned per-utterance, per-channel gate
    decides how much of each flows into the text stream:

    .. math::
        c_m = \mathrm{Attn}(h_t, h_m) + h_m, \qquad g_m = \sigma(W_m [h_t; c_m] + b_m), \qquad
        h_t \leftarrow h_t + \sum_m g_m \odot c_m, \qquad h_t \leftarrow h_t + \mathrm{FFN}(\mathrm{LN}(h_t)).

    Text stays the main stream; audio and visual only ever feed it. With ``cross_rotary`` the
    cross-modal attention scores carry rotary positions: every modality shares the utterance
    timeline, so a text query can tell its own utterance's audio from a distant one's.

    Args: those of :class:`TextGuidedFusion` but ``num_layers``, ``fused_output`` and
    ``activation_checkpointing``.
    """

    def __init__(
        self,
        *,
        dim: int,
        modalities: tuple[str, ...],
        num_heads: int,
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
        rotary: bool = False,
        cross_rotary: bool = False,
        aligned: bool = True,
        fast_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.aligned = aligned
        self.modalities = modalities
        self.auxiliary = modalities[1:]
        self.self_blocks = nn.ModuleDict(
            {m: TransformerBlock(dim=dim, num_heads=num_heads, dropout=dropout, ffn_mult=ffn_mult, rotary=rotary,
                                 fast_dropout=fast_dropout)
             for m in modalities}
        )
        # With text alone there is nothing to diffuse: only the self-attention is built.
        self.query_norm = nn.LayerNorm(dim) if self.auxiliary else None
        self.context_norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.auxiliary})
        self.cross = nn.ModuleDict(
            {m: MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout, rotary=cross_rotary,
                                   fast_dropout=fast_dropout)
             for m in self.auxiliary}
        )
        self.gates = nn.ModuleDict({m: nn.Linear(2 * dim, dim) for m in self.auxiliary})
        self.ffn_norm = nn.LayerNorm(dim) if self.auxiliary else None
        self.ffn = FeedForward(dim=dim, mult=ffn_mult, dropout=dropout) if self.auxiliary else None
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (*self.self_blocks.values(), *self.cross.values()):
            module.reset_parameters()
        for norm in self.context_norms.values():
            norm.reset_parameters()
        if self.auxiliary:
            self.ffn.reset_parameters()
            self.query_norm.reset_parameters()
            self.ffn_norm.reset_parameters()
        for gate in self.gates.values():
            nn.init.xavier_uniform_(gate.weight)
            nn.init.zeros_(gate.bias)

    def forward(
        self, streams: dict[str, Tensor], mask: Tensor, *, attention_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        maps: dict[str, Tensor] = {}
        streams = dict(streams)
        for m in self.modalities:
            streams[m], weights = self.self_blocks[m](streams[m], mask, attention_mask=attention_mask,
                                                      return_attention=return_attention)
            if weights is not None:
                maps[f"{m}_self"] = weights
        text = streams["text"]
        if self.auxiliary:
            query = self.query_norm(text)
            diffused = torch.zeros_like(text)
            for m in self.auxiliary:
                context = self.context_norms[m](streams[m])
                attended, weights = self.cross[m](
                    query, mask, context=context, attention_mask=attention_mask, return_attention=return_attention
                )
                if self.aligned:
                    attended = attended + context  # the utterance's own audio/visual, always on offer
                gate = torch.sigmoid(self.gates[m](torch.cat([query, attended], dim=-1)))  # (B, N, D)
                diffused = diffused + gate * attended
                if return_attention:
                    maps[f"text_to_{m}"] = weights
                    maps[f"gate_{m}"] = gate
            text = text + self.dropout(diffused)
            text = text + self.dropout(self.ffn(self.ffn_norm(text)))
        streams["text"] = text
        return streams, maps


class TextGuidedFusion(nn.Module):
    """ReDiFu's text-guided cross-modal diffusion fusion: a stack of :class:`DiffusionLayer`.

    The fused representation is the final text stream (layer-normalised), into which audio and
    visual information has been diffused through learned gates.

    Args:
        dim (int): Model size ``D``.
        modalities (tuple[str, ...]): Modality names, text first.
        num_layers (int): Number of diffusion layers.
        num_heads (int): Attention heads.
        dropout (float, optional): Dropout. (default: ``0.0``)
        ffn_mult (float, optional): Feed-forward hidden multiple. (default: ``2.0``)
        rotary (bool, optional): Rotary positions in the self-attention. (default: ``False``)
        cross_rotary (bool, optional): Rotary positions in the text-to-audio/visual attention.
            (default: ``False``)
        aligned (bool, optional): Add each utterance's own audio/visual vector to what the
            cross-attention brings before gating. (default: ``True``)
        fused_output (bool, optional): Build the final normalisation that makes the fused vector
            (``False``: ``fused=None``). (default: ``True``)
        fast_dropout (bool, optional): On the CPU, draw the attention-dropout masks with
            :func:`~redifu.nn.kernels.dropout_masks.fast_keep_mask` (same distribution, other
            draws than PyTorch's dropout for a seed). A training-time choice. (default: ``False``)
        activation_checkpointing (bool, optional): Recompute each layer's activations in
            backward instead of keeping them (:mod:`redifu.nn.kernels.checkpointing`; same
            results, dropout masks included). A training-time choice. (default: ``False``)

    Shapes:
        - streams: per modality ``(B, N, D)``; mask ``(B, N)`` -> fused ``(B, N, D)``
    """

    def __init__(
        self,
        *,
        dim: int,
        modalities: tuple[str, ...],
        num_layers: int,
        num_heads: int,
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
        rotary: bool = False,
        cross_rotary: bool = False,
        aligned: bool = True,
        fused_output: bool = True,
        fast_dropout: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_modalities(modalities)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.modalities = modalities
        self.layers = nn.ModuleList(
            DiffusionLayer(
                dim=dim, modalities=modalities, num_heads=num_heads, dropout=dropout, ffn_mult=ffn_mult, rotary=rotary,
                cross_rotary=cross_rotary, aligned=aligned, fast_dropout=fast_dropout,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim) if fused_output else None
        self.activation_checkpointing = activation_checkpointing

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, streams: dict[str, Tensor], mask: Tensor, *, attention_mask: Tensor | None = None,
                return_attention: bool = False) -> FusionOutput:
        maps: dict[str, Tensor] = {}
        for index, layer in enumerate(self.layers):
            streams, layer_maps = run_layer(layer, streams, mask, attention_mask=attention_mask,
                                            return_attention=return_attention,
                                            checkpointed=self.activation_checkpointing and self.training)
            maps.update({f"layer{index}.{name}": value for name, value in layer_maps.items()})
        fused = self.norm(streams["text"]) if self.norm is not None else None
        return FusionOutput(fused=fused, streams=streams, attention=maps)


def build_fusion(
    kind: str,
    *,
    dim: int,
    modalities: tuple[str, ...],
    num_layers: int,
    num_heads: int,
    dropout: float = 0.0,
    ffn_mult: float = 2.0,
    rotary: bool = False,
    cross_rotary: bool = False,
    aligned: bool = True,
    fused_output: bool = True,
    fast_dropout: bool = False,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Fusion module by name: one of :data:`FUSIONS`. ``concat`` has no attention and no
    layers, so it takes neither ``fast_dropout`` nor ``activation_checkpointing``."""
    if kind == "concat":
        return ConcatFusion(dim=dim, modalities=modalities, dropout=dropout, fused_output=fused_output)
    common = dict(
        dim=dim, modalities=modalities, num_layers=num_layers, num_heads=num_heads,
        dropout=dropout, ffn_mult=ffn_mult, rotary=rotary, cross_rotary=cross_rotary, fused_output=fused_output,
        fast_dropout=fast_dropout, activation_checkpointing=activation_checkpointing,
    )
    if kind == "symmetric":
        return SymmetricFusion(**common)
    if kind == "text_guided":
        return TextGuidedFusion(**common, aligned=aligned)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {kind!r}")
