"""Relational graph attention over the utterance graph of ReDiFu (METHOD.md, section 3).

The layer follows the relational graph attention network of Busbridge et al., "Relational
Graph Attention Networks" (2019, arXiv:1904.05811), additive "ARGAT" variant (attention
normalised across all relations of a target node), with the relation-specific transforms of
Schlichtkrull et al., "Modeling Relational Data with Graph Convolutional Networks" (R-GCN,
ESWC 2018), optionally with R-GCN's basis decomposition.

What keeps its memory linear in nodes and edges (per-pair values, the fused softmax and
weighted sum, the kept projections) lives in :mod:`redifu.nn.kernels.relational`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.inits import glorot, zeros

from redifu.nn.kernels.relational import (
    LeakySegmentSoftmax,
    ParameterCache,
    relational_terms,
    weighted_gather_scatter,
)

__all__ = ["RelationalGraphAttention"]


class RelationalGraphAttention(MessagePassing):
    r"""Multi-head relational graph attention (additive, normalised across relations).

    Busbridge et al., "Relational Graph Attention Networks" (2019), ARGAT with additive
    logits; relation-specific transforms as in R-GCN (Schlichtkrull et al., 2018). For an
    edge :math:`j \to i` of relation :math:`r` and head :math:`h`:

    .. math::
        \mathbf{z}^{(r)}_j = \mathbf{W}_r \mathbf{x}_j, \qquad
        e^{h}_{ij} = \mathrm{LeakyReLU}\big(\mathbf{a}^{(r)}_{\mathrm{dst},h} \cdot
            (\mathbf{W}_r \mathbf{x}_i)_h + \mathbf{a}^{(r)}_{\mathrm{src},h} \cdot
            \mathbf{z}^{(r)}_{j,h}\big),

    .. math::
        \alpha^{h}_{ij} = \frac{\exp e^{h}_{ij}}
            {\sum_{r'} \sum_{k \in \mathcal{N}_{r'}(i)} \exp e^{h}_{ik}}, \qquad
        \mathbf{x}'_{i} = \big\Vert_{h=1}^{H} \sum_{r} \sum_{j \in \mathcal{N}_r(i)}
            \alpha^{h}_{ij} \mathbf{z}^{(r)}_{j,h} + \mathbf{b},

    with :math:`\mathbf{W}_r \in \mathbb{R}^{\text{out} \times \text{in}}` a full matrix per
    relation, or :math:`\mathbf{W}_r = \sum_b c_{rb} \mathbf{V}_b` (R-GCN basis decomposition)
    when ``num_bases`` is set, and :math:`(\cdot)_h` the :math:`h`-th block of
    ``out_dim / num_heads`` channels. Heads are concatenated.

    The additive logit terms are linear in :math:`\mathbf{x}`, so they are
    :math:`\mathbf{x}^\top \mathbf{U}^{(r)}_h` with
    :math:`\mathbf{U}^{(r)}_h = \mathbf{W}_{r,h}^\top \mathbf{a}^{(r)}_h` (an ``(in, H)``
    matrix per relation). How the values, logits, softmax and sum are computed without any
    ``(E, in, out)`` or ``(E, out)`` tensor: :mod:`redifu.nn.kernels.relational`.
    Nodes without incoming edges output the bias (zeros without bias).

    Args:
        in_dim (int): Input feature size.
        out_dim (int): Output feature size (divisible by ``num_heads``).
        num_relations (int): Number of relation (edge) types ``R``.
        num_heads (int, optional): Attention heads ``H``. (default: ``1``)
        dropout (float, optional): Dropout on the attention weights during training.
            (default: ``0.0``)
        negative_slope (float, optional): LeakyReLU slope of the logits. (default: ``0.2``)
        bias (bool, optional): Learn an additive output bias. (default: ``True``)
        num_bases (int, optional): Use R-GCN basis decomposition with this many bases
            instead of one full matrix per relation. (default: ``None``)

    Shapes:
        - x: ``(V, in_dim)``; edge_index: ``(2, E)`` long, row 0 source ``j``, row 1 target
          ``i``; edge_type: ``(E,)`` long in ``[0, num_relations)``
        - output: ``(V, out_dim)``, and the attention weights ``(E, H)`` (before dropout,
          aligned with ``edge_index``) when ``return_attention=True``, else ``None``
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        num_relations: int,
        num_heads: int = 1,
        dropout: float = 0.0,
        negative_slope: float = 0.2,
        bias: bool = True,
        num_bases: int | None = None,
    ) -> None:
        super().__init__(aggr="sum", node_dim=0)
        if in_dim <= 0:
            raise ValueError(f"in_dim must be positive, got {in_dim}")
        if out_dim <= 0:
            raise ValueError(f"out_dim must be positive, got {out_dim}")
        if num_relations <= 0:
            raise ValueError(f"num_relations must be positive, got {num_relations}")
        if num_heads <= 0:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if out_dim % num_heads:
            raise ValueError(f"out_dim ({out_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if negative_slope < 0.0:
            raise ValueError(f"negative_slope must be non-negative, got {negative_slope}")
        if num_bases is not None and num_bases <= 0:
            raise ValueError(f"num_bases must be positive or None, got {num_bases}")

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_relations = num_relations
        self.num_heads = num_heads
        self.head_dim = out_dim // num_heads
        self.dropout = dropout
        self.negative_slope = negative_slope
        self.num_bases = num_bases
        self._transform_cache = ParameterCache()  # see _transforms()

        if num_bases is None:
            self.weight = Parameter(torch.empty(num_relations, in_dim, out_dim))
            self.register_parameter("basis", None)
            self.register_parameter("comp", None)
        else:
            self.register_parameter("weight", None)
            self.basis = Parameter(torch.empty(num_bases, in_dim, out_dim))
            self.comp = Parameter(torch.empty(num_relations, num_bases))
        self.att_src = Parameter(torch.empty(num_relations, num_heads, self.head_dim))
        self.att_dst = Parameter(torch.empty(num_relations, num_heads, self.head_dim))
        if bias:
            self.bias = Parameter(torch.empty(out_dim))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialises every parameter (Glorot for transforms and attention, zero bias)."""
        super().reset_parameters()
        if self.weight is not None:
            glorot(self.weight)  # per relation: U(+-sqrt(6 / (in + out)))
        else:
            glorot(self.basis)
            # var(c) = 1 / B keeps each W_r = sum_b c_rb V_b at the Glorot variance of one basis.
            bound = math.sqrt(3.0 / self.num_bases)
            torch.nn.init.uniform_(self.comp, -bound, bound)
        glorot(self.att_src)
        glorot(self.att_dst)
        zeros(self.bias)

    def relation_weights(self) -> Tensor:
        """The per-relation transforms ``W_r``, shape ``(R, in_dim, out_dim)``."""
        if self.weight is not None:
            return self.weight
        return torch.einsum("rb,bio->rio", self.comp, self.basis)  # (R, in, out)

    def _compute_transforms(self) -> tuple[Tensor, Tensor, Tensor]:
        R, H, D = self.num_relations, self.num_heads, self.head_dim
        weight = self.relation_weights()  # (R, in, out)
        # The additive logit terms are linear in x: a_r,h . (W_r x)_h == x . (W_r,h a_r,h), so
        # each side needs an (in, H) projection per relation, not the full (in, out) one.
        weight_heads = weight.view(R, self.in_dim, H, D)  # (R, in, H, D)
        # Broadcast multiply + sum rather than einsum: einsum would save a permuted copy of W
        # (R, in, H, D) for its backward, the product here is transient.
        proj_src = (weight_heads * self.att_src[:, None]).sum(dim=-1)  # (R, in, H)
        proj_dst = (weight_heads * self.att_dst[:, None]).sum(dim=-1)  # (R, in, H)
        return weight, proj_src, proj_dst

    def _transforms(self) -> tuple[Tensor, Tensor, Tensor]:
        """``W_r`` and the per-relation logit projections of both sides, kept between calls
        while autograd is off (:class:`~redifu.nn.kernels.relational.ParameterCache`)."""
        return self._transform_cache.get(self, self._compute_transforms)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_type: Tensor,
        *,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Runs one relational attention step; see the class docstring for shapes."""
        if x.dim() != 2 or x.size(1) != self.in_dim:
            raise ValueError(f"x must have shape (V, {self.in_dim}), got {tuple(x.shape)}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_type.shape != (edge_index.size(1),):
            raise ValueError(
                f"edge_type must have shape ({edge_index.size(1)},), got {tuple(edge_type.shape)}"
            )
        num_nodes, num_edges = x.size(0), edge_index.size(1)
        if num_edges and (int(edge_type.min()) < 0 or int(edge_type.max()) >= self.num_relations):
            raise ValueError(f"edge_type values must lie in [0, {self.num_relations})")

        weight, proj_src, proj_dst = self._transforms()  # (R, in, out), (R, in, H), (R, in, H)
        # z_j^(r) = W_r x_j as a table of distinct (source, relation) pairs, value_index the row
        # of each edge's source in it; logits e_ij before the LeakyReLU.
        value_table, value_index, logits = relational_terms(
            x, edge_index, edge_type, weight, proj_src, proj_dst
        )  # (U, H, D), (E,), (E, H)
        alpha = self.edge_updater(edge_index, logits=logits, size=(num_nodes, num_nodes))

        dropped = alpha
        if self.training and self.dropout > 0.0:
            dropped = torch.nn.functional.dropout(alpha, p=self.dropout)
        out = self.propagate(
            edge_index,
            alpha=dropped,
            value_table=value_table,
            value_index=value_index,
            size=(num_nodes, num_nodes),
        )  # (V, H, D)
        out = out.reshape(num_nodes, self.out_dim)  # (V, out) heads concatenated
        if self.bias is not None:
            out = out + self.bias
        return out, (alpha if return_attention else None)

    def edge_update(self, logits: Tensor, index: Tensor, dim_size: int | None) -> Tensor:
        num_nodes = int(dim_size) if dim_size is not None else int(index.max()) + 1
        # Across-relation normalisation: one softmax over all incoming edges of a target.
        return LeakySegmentSoftmax.apply(logits, index, num_nodes, self.negative_slope)  # (E, H)

    def message(self, alpha: Tensor) -> Tensor:
        # Only the (E, H) weights travel per edge; values are gathered inside aggregate().
        return alpha

    def aggregate(
        self,
        inputs: Tensor,
        index: Tensor,
        value_table: Tensor,
        value_index: Tensor,
        dim_size: int | None,
    ) -> Tensor:
        num_nodes = int(dim_size) if dim_size is not None else int(index.max()) + 1
        # sum_j alpha_ij z_j, chunked over edges
        return weighted_gather_scatter(inputs, value_table, value_index, index, num_nodes)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_dim}, {self.out_dim}, "
            f"num_relations={self.num_relations}, num_heads={self.num_heads}, "
            f"num_bases={self.num_bases})"
        )
