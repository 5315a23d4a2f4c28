"""Relation-aware utterance graph of ReDiFu (METHOD.md, section 3).

Utterances are nodes, one node per (modality, real utterance). Two kinds of subgraph:

* modality-specific: inside each modality, an edge ``j -> i`` for every pair of utterances of
  the same dialogue with ``|i - j| <= window``, typed by :data:`SPEAKER_RELATIONS` (self,
  same/other speaker, past/future as seen from the target ``i``) and by the modality;
* cross-modality (optional): for every ordered modality pair ``(a, b)``, ``a != b``, an edge
  from ``(a, j)`` to ``(b, i)`` for ``|i - j| <= cross_window``, typed by the pair.

A causal graph (``causal=True``, for ``model.causal``) has only the edges from the past and
self (``j <= i``) and no ``*_future`` relations (:data:`CAUSAL_SPEAKER_RELATIONS`).

Edges are built with vectorised tensor code whose memory is ``O(M * T * K)`` for ``T`` real
utterances and ``K`` candidate sources per target (``2 * window + 1`` plus the cross slots);
nothing of size ``N x N`` is ever built. :class:`RelationGraph` runs stacked
:class:`~redifu.nn.relational_attention.RelationalGraphAttention` layers on that graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from redifu.nn.kernels.checkpointing import run_layer
from redifu.nn.relational_attention import RelationalGraphAttention

__all__ = [
    "CAUSAL_SPEAKER_RELATIONS",
    "SPEAKER_RELATIONS",
    "GraphEdges",
    "GraphAttention",
    "RelationGraph",
    "build_relation_graph",
    "graph_relation_names",
    "num_graph_relations",
]

SPEAKER_RELATIONS = (
    "self",
    "same_speaker_past",
    "same_speaker_future",
    "other_speaker_past",
    "other_speaker_future",
)
CAUSAL_SPEAKER_RELATIONS = ("self", "same_speaker_past", "other_speaker_past")


def _speaker_relations(causal: bool) -> tuple[str, ...]:
    return CAUSAL_SPEAKER_RELATIONS if causal else SPEAKER_RELATIONS


@dataclass(frozen=True)
class GraphEdges:
    """Edges of the packed multimodal utterance graph.

    Node ``m * T + t`` is modality ``m`` of the ``t``-th real utterance in
    ``mask.nonzero()`` order (dialogue-major), ``T = mask.sum()``.

    Attributes:
        edge_index (Tensor): ``(2, E)`` long; row 0 the source ``j``, row 1 the target ``i``
            (PyG ``source_to_target``). Edges are sorted by target node.
        edge_type (Tensor): ``(E,)`` long relation ids in ``[0, num_relations)``.
        num_nodes (int): ``num_modalities * T``.
        num_relations (int): :func:`num_graph_relations` of the options used.
    """

    edge_index: Tensor
    edge_type: Tensor
    num_nodes: int
    num_relations: int


@dataclass
class GraphAttention:
    """Attention maps of a :class:`RelationGraph` pass, with what is needed to read them.

    Attributes:
        edge_index (Tensor): ``(2, E)`` source/target node ids.
        edge_type (Tensor): ``(E,)`` relation ids; names in ``relation_names``.
        attention (list[Tensor]): one ``(E, H)`` tensor per layer (detached, before dropout);
            for each target node and head the weights of its incoming edges sum to 1.
        node_modality (Tensor): ``(V,)`` modality index of each node.
        node_batch (Tensor): ``(V,)`` dialogue (batch row) of each node.
        node_utterance (Tensor): ``(V,)`` utterance position of each node in its dialogue.
        relation_names (tuple[str, ...]): name of each relation id
            (:func:`graph_relation_names` with ``modality_names``).
        modality_names (tuple[str, ...]): name of each modality index (``m0``, ``m1``, ... until
            :meth:`with_modality_names` gives the real ones).
        cross_modal (bool): Whether the graph has the cross-modality relations.
        causal (bool): Whether the graph is causal (past and self edges only).
    """

    edge_index: Tensor
    edge_type: Tensor
    attention: list[Tensor]
    node_modality: Tensor
    node_batch: Tensor
    node_utterance: Tensor
    relation_names: tuple[str, ...]
    modality_names: tuple[str, ...]
    cross_modal: bool
    causal: bool = False

    def with_modality_names(self, modality_names: tuple[str, ...]) -> "GraphAttention":
        """A copy whose modalities and relations are named after ``modality_names``
        (``"text:same_speaker_past"``, ``"audio->text"``)."""
        if len(modality_names) != len(self.modality_names):
            raise ValueError(f"modality_names: {len(self.modality_names)} names needed, got {tuple(modality_names)}")
        names = tuple(modality_names)
        return replace(self, modality_names=names, relation_names=graph_relation_names(
            num_modalities=len(names), cross_modal=self.cross_modal, modality_names=names, causal=self.causal))


def num_graph_relations(*, num_modalities: int, cross_modal: bool, causal: bool = False) -> int:
    """Number of relation types: ``5 * M`` speaker relations (``3 * M`` in a causal graph: no
    ``*_future`` ones), plus ``M * (M - 1)`` ordered modality pairs when ``cross_modal``.
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    cross = num_modalities * (num_modalities - 1) if cross_modal else 0
    return len(_speaker_relations(causal)) * num_modalities + cross


def graph_relation_names(
    *, num_modalities: int, cross_modal: bool, modality_names: tuple[str, ...] | None = None, causal: bool = False
) -> tuple[str, ...]:
    """Readable names of the relation ids, e.g. ``"m0:same_speaker_past"``, ``"m1->m2"``, or with
    ``modality_names`` ``("text", "audio", ...)``: ``"text:same_speaker_past"``, ``"audio->visual"``."""
    modality = modality_names if modality_names is not None else tuple(f"m{m}" for m in range(num_modalities))
    if len(modality) != num_modalities:
        raise ValueError(f"modality_names must name {num_modalities} modalities, got {tuple(modality)}")
    names = [f"{modality[m]}:{r}" for m in range(num_modalities) for r in _speaker_relations(causal)]
    if num_graph_relations(num_modalities=num_modalities, cross_modal=cross_modal, causal=causal) > len(names):
        names += [f"{modality[a]}->{modality[b]}" for a in range(num_modalities) for b in range(num_modalities)
                  if a != b]
    return tuple(names)


def _source_slots(
    *, num_modalities: int, window: int, cross_modal: bool, cross_window: int, device: torch.device,
    causal: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate sources of a target node, per target modality.

    Slot ``k`` of target modality ``b`` is the node of modality ``src_modality[b, k]`` at
    utterance offset ``offset[b, k]`` from the target; ``cross_type[b, k]`` is its relation id
    for a cross-modality slot and ``-1`` for a speaker-typed (intra-modality) slot.

    Shapes:
        - output: three ``(M, K)`` long tensors, ``K = 2w + 1 (+ (M - 1)(2c + 1))``; causal:
          ``K = w + 1 (+ (M - 1)(c + 1))`` (offsets ``<= 0`` only)
    """
    M = num_modalities
    num_speaker_relations = len(_speaker_relations(causal))
    target = torch.arange(M, device=device)
    intra_offset = torch.arange(-window, 1 if causal else window + 1, device=device)  # (K1,)
    src_modality = [target[:, None].expand(M, intra_offset.numel())]
    offset = [intra_offset[None, :].expand(M, -1)]
    cross_type = [torch.full((M, intra_offset.numel()), -1, device=device, dtype=torch.long)]
    if cross_modal and M > 1:
        cross_offset = torch.arange(-cross_window, 1 if causal else cross_window + 1, device=device)  # (K2,)
        k2 = cross_offset.numel()
        rank = torch.arange(M - 1, device=device)[None, :]  # (1, M-1)
        source = rank + (rank >= target[:, None]).long()  # (M, M-1): modalities other than b
        # Ordered pair (a, b) has index a * (M - 1) + (b minus 1 if b > a) in the fixed order.
        pair = source * (M - 1) + target[:, None] - (target[:, None] > source).long()  # (M, M-1)
        src_modality.append(source[:, :, None].expand(M, M - 1, k2).reshape(M, -1))
        offset.append(cross_offset[None, None, :].expand(M, M - 1, k2).reshape(M, -1))
        cross_type.append(
            (num_speaker_relations * M + pair)[:, :, None].expand(M, M - 1, k2).reshape(M, -1)
        )
    return torch.cat(src_modality, 1), torch.cat(offset, 1), torch.cat(cross_type, 1)


def build_relation_graph(
    speakers: Tensor,
    mask: Tensor,
    *,
    num_modalities: int,
    window: int,
    cross_modal: bool,
    cross_window: int = 0,
    speaker_aware: bool = True,
    causal: bool = False,
) -> GraphEdges:
    r"""Builds the packed relation-typed graph of a padded batch of dialogues.

    Modality-specific edges (METHOD.md, section 3): for modality :math:`m` and utterances
    :math:`i, j` of one dialogue with :math:`|i - j| \le w`, an edge :math:`(m, j) \to (m, i)`
    of type :math:`5m + r`, :math:`r` indexing :data:`SPEAKER_RELATIONS`: ``self`` if
    :math:`i = j`, ``*_past`` if :math:`j < i`, ``*_future`` if :math:`j > i`,
    ``same``/``other`` comparing the speakers of :math:`j` and :math:`i` (always ``same``
    when ``speaker_aware=False``). Cross-modality edges: :math:`(a, j) \to (b, i)`,
    :math:`a \ne b`, :math:`|i - j| \le c`, of type :math:`5M + p(a, b)` with :math:`p` the
    position of :math:`(a, b)` in ``[(a, b) for a in range(M) for b in range(M) if a != b]``.

    Args:
        speakers (Tensor): Speaker id of each utterance (values at padding are ignored).
        mask (Tensor): ``True`` at real utterances; padding only at the end of each row.
        num_modalities (int): Number of modalities ``M`` (>= 1).
        window (int): Intra-modality window ``w`` (>= 0).
        cross_modal (bool): Add the cross-modality subgraph.
        cross_window (int, optional): Cross-modality window ``c`` (>= 0); ``0`` links the
            modalities of the same utterance only. (default: ``0``)
        speaker_aware (bool, optional): Distinguish same/other speaker. (default: ``True``)
        causal (bool, optional): Only edges with :math:`j \le i` (past and self), typed
            :math:`3m + r` with :math:`r` indexing :data:`CAUSAL_SPEAKER_RELATIONS`, cross pairs
            from :math:`3M`: no utterance receives anything from a later one.
            (default: ``False``)

    Shapes:
        - speakers: ``(B, N)`` long; mask: ``(B, N)`` bool
        - output: :class:`GraphEdges` with ``num_nodes = M * mask.sum()`` and
          ``E <= M * T * (2w + 1) + M (M - 1) T (2c + 1)`` edges (linear in ``T``)
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if cross_window < 0:
        raise ValueError(f"cross_window must be >= 0, got {cross_window}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.dim() != 2 or speakers.shape != mask.shape:
        raise ValueError(
            f"speakers and mask must both have shape (B, N), got {tuple(speakers.shape)} "
            f"and {tuple(mask.shape)}"
        )
    device = mask.device
    lengths = mask.sum(dim=1)  # (B,)
    positions = torch.arange(mask.size(1), device=device)
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        raise ValueError("mask must be True on a prefix of each row (padding at the end)")

    num_relations = num_graph_relations(num_modalities=num_modalities, cross_modal=cross_modal, causal=causal)
    batch, utterance = mask.nonzero(as_tuple=True)  # (T,), (T,) dialogue-major
    num_utts = batch.numel()
    length = lengths[batch]  # (T,)
    speaker = speakers.to(device)[batch, utterance]  # (T,)

    src_modality, offset, cross_type = _source_slots(
        num_modalities=num_modalities,
        window=window,
        cross_modal=cross_modal,
        cross_window=cross_window,
        device=device,
        causal=causal,
    )  # (M, K) each
    M = num_modalities
    target = torch.arange(num_utts, device=device)  # (T,) packed utterance index
    source_utt = utterance[None, :, None] + offset[:, None, :]  # (M, T, K) position in dialogue
    valid = (source_utt >= 0) & (source_utt < length[None, :, None])  # (M, T, K)
    # Padding sits at row ends, so the packed index of position p in the same dialogue is
    # target + (p - utterance); invalid slots are clamped only to keep the gather in range.
    source_packed = (target[None, :, None] + offset[:, None, :]).clamp(0, max(num_utts - 1, 0))

    if speaker_aware:
        other = speaker[source_packed] != speaker[None, :, None]  # (M, T, K)
    else:
        other = torch.zeros_like(valid)
    off = offset[:, None, :]  # (M, 1, K)
    if causal:  # self, same_speaker_past, other_speaker_past
        speaker_rel = torch.where(off == 0, 0, 1 + other.long())  # (M, T, K)
    else:
        speaker_rel = torch.where(off == 0, 0, 1 + (off > 0).long() + 2 * other.long())  # (M, T, K)
    modality = torch.arange(M, device=device)[:, None, None]  # (M, 1, 1)
    intra_type = len(_speaker_relations(causal)) * modality + speaker_rel
    edge_type = torch.where(cross_type[:, None, :] >= 0, cross_type[:, None, :], intra_type)

    src_node = src_modality[:, None, :] * num_utts + target[None, :, None] + off  # (M, T, K)
    dst_node = (modality * num_utts + target[None, :, None]).expand_as(src_node)  # (M, T, K)
    # Boolean indexing walks (m, t, k) row-major, so edges come out sorted by target node.
    edge_index = torch.stack((src_node[valid], dst_node[valid]))  # (2, E)
    return GraphEdges(
        edge_index=edge_index,
        edge_type=edge_type.expand_as(valid)[valid],
        num_nodes=M * num_utts,
        num_relations=num_relations,
    )


class RelationGraph(nn.Module):
    r"""Relation-aware multimodal utterance graph encoder (METHOD.md, section 3).

    Packs the real utterances of every modality into the nodes of
    :func:`build_relation_graph`'s graph, then applies ``num_layers`` residual relational
    graph attention blocks

    .. math::
        \mathbf{X} \leftarrow \mathrm{LayerNorm}\big(\mathbf{X} +
            \mathrm{Dropout}(\mathrm{GELU}(\mathrm{RGAT}(\mathbf{X})))\big)

    (:class:`~redifu.nn.relational_attention.RelationalGraphAttention`, Busbridge et al.,
    2019), and scatters the nodes back to one padded stream per modality. Dialogues never
    exchange information, and padded positions neither send nor receive messages and are
    zero in the output.

    Args:
        dim (int): Feature size of every stream (divisible by ``num_heads``).
        num_modalities (int): Number of input streams ``M``.
        num_layers (int): Number of graph attention blocks (>= 1).
        num_heads (int): Attention heads per block.
        window (int): Intra-modality window ``w``.
        cross_modal (bool): Add the cross-modality subgraph.
        cross_window (int, optional): Cross-modality window. (default: ``0``)
        speaker_aware (bool, optional): Distinguish same/other speaker relations.
            (default: ``True``)
        dropout (float, optional): Dropout on each block's residual branch. (default: ``0.0``)
        num_bases (int, optional): R-GCN basis decomposition of the relation transforms;
            ``None`` gives one full matrix per relation. (default: ``None``)
        causal (bool, optional): The causal graph of :func:`build_relation_graph` (past and
            self edges only). (default: ``False``)
        activation_checkpointing (bool, optional): Recompute each block's activations in
            backward instead of keeping them (:mod:`redifu.nn.kernels.checkpointing`; same
            results, dropout masks included). A training-time choice. (default: ``False``)

    Shapes:
        - streams: ``M`` tensors ``(B, N, dim)`` in modality order
        - speakers: ``(B, N)`` long; mask: ``(B, N)`` bool, ``True`` at real utterances
        - output: ``M`` tensors ``(B, N, dim)``, zero at padding, and a
          :class:`GraphAttention` when ``return_attention=True`` (else ``None``)
    """

    def __init__(
        self,
        *,
        dim: int,
        num_modalities: int,
        num_layers: int,
        num_heads: int,
        window: int,
        cross_modal: bool,
        cross_window: int = 0,
        speaker_aware: bool = True,
        dropout: float = 0.0,
        num_bases: int | None = None,
        activation_checkpointing: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads must be positive and divide dim ({dim}), got {num_heads}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        if cross_window < 0:
            raise ValueError(f"cross_window must be >= 0, got {cross_window}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        num_relations = num_graph_relations(num_modalities=num_modalities, cross_modal=cross_modal, causal=causal)
        self.causal = causal
        self.dim = dim
        self.num_modalities = num_modalities
        self.num_layers = num_layers
        self.window = window
        self.cross_modal = cross_modal
        self.cross_window = cross_window
        self.speaker_aware = speaker_aware
        self.num_relations = num_relations
        self.convs = nn.ModuleList(
            RelationalGraphAttention(
                in_dim=dim,
                out_dim=dim,
                num_relations=num_relations,
                num_heads=num_heads,
                num_bases=num_bases,
            )
            for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.activation_checkpointing = activation_checkpointing

    def reset_parameters(self) -> None:
        """Re-initialises every graph attention layer and layer norm."""
        for conv, norm in zip(self.convs, self.norms):
            conv.reset_parameters()
            norm.reset_parameters()

    def forward(
        self,
        streams: list[Tensor],
        speakers: Tensor,
        mask: Tensor,
        *,
        return_attention: bool = False,
    ) -> tuple[list[Tensor], GraphAttention | None]:
        """Encodes the streams over the relation graph; see the class docstring for shapes."""
        if len(streams) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} streams, got {len(streams)}")
        expected = (*mask.shape, self.dim)
        for m, stream in enumerate(streams):
            if tuple(stream.shape) != expected:
                raise ValueError(f"streams[{m}] must have shape {expected}, got {tuple(stream.shape)}")
        graph = build_relation_graph(
            speakers,
            mask,
            num_modalities=self.num_modalities,
            window=self.window,
            cross_modal=self.cross_modal,
            cross_window=self.cross_window,
            speaker_aware=self.speaker_aware,
            causal=self.causal,
        )
        x = torch.cat([stream[mask] for stream in streams], dim=0)  # (M*T, dim) packed nodes
        maps: list[Tensor] = []

        def block(x: Tensor, conv: nn.Module, norm: nn.Module) -> tuple[Tensor, Tensor | None]:
            h, attention = conv(x, graph.edge_index, graph.edge_type, return_attention=return_attention)
            return norm(x + self.dropout(self.activation(h))), attention

        for conv, norm in zip(self.convs, self.norms):
            x, attention = run_layer(block, x, conv, norm,
                                     checkpointed=self.activation_checkpointing and self.training)
            if attention is not None:
                maps.append(attention.detach())

        B, N = mask.shape
        num_utts = graph.num_nodes // self.num_modalities
        fill = mask.unsqueeze(-1)  # (B, N, 1)
        outputs = [
            x.new_zeros(B, N, self.dim).masked_scatter(fill, nodes)  # (B, N, dim), zero padding
            for nodes in x.view(self.num_modalities, num_utts, self.dim).unbind(0)
        ]
        if not return_attention:
            return outputs, None
        batch, utterance = mask.nonzero(as_tuple=True)  # (T,)
        modality = torch.arange(self.num_modalities, device=mask.device)
        return outputs, GraphAttention(
            edge_index=graph.edge_index,
            edge_type=graph.edge_type,
            attention=maps,
            node_modality=modality.repeat_interleave(num_utts),  # (V,)
            node_batch=batch.repeat(self.num_modalities),  # (V,)
            node_utterance=utterance.repeat(self.num_modalities),  # (V,)
            relation_names=graph_relation_names(
                num_modalities=self.num_modalities, cross_modal=self.cross_modal, causal=self.causal
            ),
            modality_names=tuple(f"m{m}" for m in range(self.num_modalities)),
            cross_modal=self.cross_modal,
            causal=self.causal,
        )
