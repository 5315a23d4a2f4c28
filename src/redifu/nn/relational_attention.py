"""Relational graph attention over the utterance graph of ReDiFu (METHOD.md, section 3).

The layer follows the relational graph attention network of Busbridge et al., "Relational
Graph Attention Networks" (2019, arXiv:1904.05811), additive "ARGAT" variant (attention
normalised across all relations of a target node), with the relation-specific transforms of
Schlichtkrull et al., "Modeling Relational Data with Graph Convolutional Networks" (R-GCN,
ESWC 2018), optionally with R-GCN's basis decomposition.

Memory stays linear in nodes and edges: per-edge tensors are at most ``(E, H)`` (attention
logits and weights); relation-specific values are computed once per distinct
``(source node, relation)`` pair that occurs in the graph; LeakyReLU + softmax is one autograd
function that keeps only its output; and the weighted sum of values is a chunked
gather/scatter whose backward gathers the values again instead of keeping an
``(E, out_dim)`` message tensor alive for autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.inits import glorot, zeros
from torch_geometric.utils import softmax

__all__ = ["RelationalGraphAttention"]

# Elements of one gathered ``(chunk, H, D)`` block in the fused aggregation (16 MiB in fp32):
# large enough that the Python loop over chunks costs nothing, small enough to be negligible.
_CHUNK_ELEMENTS = 1 << 22


class _WeightedGatherScatter(torch.autograd.Function):
    r"""``out[i] = sum_{e: index[e] = i} alpha[e, :, None] * table[value_index[e]]``.

    Done in chunks of edges both ways, so neither pass holds an ``(E, H, D)`` tensor; the
    backward gathers the values again rather than saving them.

    Shapes:
        - alpha: ``(E, H)``; table: ``(U, H, D)``; value_index, index: ``(E,)`` long
        - output: ``(num_nodes, H, D)``
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        alpha: Tensor,
        table: Tensor,
        value_index: Tensor,
        index: Tensor,
        num_nodes: int,
        chunk: int,
    ) -> Tensor:
        out = table.new_zeros(num_nodes, table.size(1), table.size(2))  # (V, H, D)
        for start in range(0, alpha.size(0), chunk):
            part = slice(start, start + chunk)
            gathered = table.index_select(0, value_index[part])  # (c, H, D)
            out.index_add_(0, index[part], gathered * alpha[part].unsqueeze(-1))
        ctx.save_for_backward(alpha, table, value_index, index)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        alpha, table, value_index, index = ctx.saved_tensors
        need_alpha, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_alpha = torch.empty_like(alpha) if need_alpha else None
        grad_table = torch.zeros_like(table) if need_table else None
        for start in range(0, alpha.size(0), ctx.chunk):
            part = slice(start, start + ctx.chunk)
            grad_msg = grad_out.index_select(0, index[part])  # (c, H, D)
            if grad_alpha is not None:
                gathered = table.index_select(0, value_index[part])  # (c, H, D)
                grad_alpha[part] = (grad_msg * gathered).sum(dim=-1)
            if grad_table is not None:
                grad_table.index_add_(0, value_index[part], grad_msg * alpha[part].unsqueeze(-1))
        return grad_alpha, grad_table, None, None, None, None


class _LeakySegmentSoftmax(torch.autograd.Function):
    r"""``alpha = softmax_{edges into i}(LeakyReLU(logits))`` saving only ``alpha`` and a sign mask.

    Autograd through the unfused ops would keep about four ``(E, H)`` float tensors per layer;
    the softmax gradient needs only its output:
    :math:`\partial L / \partial s_e = \alpha_e (g_e - \sum_{e' \to i} \alpha_{e'} g_{e'})`.

    Shapes:
        - logits: ``(E, H)``; index: ``(E,)`` target of each edge
        - output: ``(E, H)``
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, index: Tensor, num_nodes: int, negative_slope: float
    ) -> Tensor:
        negative = logits < 0  # (E, H) bool
        activated = torch.where(negative, logits * negative_slope, logits)
        alpha = softmax(activated, index, num_nodes=num_nodes, dim=0)
        ctx.save_for_backward(alpha, negative, index)
        ctx.num_nodes = num_nodes
        ctx.negative_slope = negative_slope
        return alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_alpha: Tensor):  # type: ignore[override]
        alpha, negative, index = ctx.saved_tensors
        weighted = alpha * grad_alpha  # (E, H)
        total = weighted.new_zeros(ctx.num_nodes, weighted.size(1)).index_add_(0, index, weighted)
        grad = weighted.sub_(alpha * total.index_select(0, index))  # (E, H)
        grad = torch.where(negative, grad * ctx.negative_slope, grad)
        return grad, None, None, None


def _relation_pairs(
    node: Tensor, relation: Tensor, num_nodes: int, num_relations: int
) -> tuple[Tensor, Tensor, list[int]]:
    """Distinct ``(node, relation)`` pairs of the edges, sorted by relation then node.

    Returns each edge's row among the pairs, the node of each pair, and the number of pairs
    of each relation.

    Shapes:
        - node, relation: ``(E,)`` long
        - output: ``(E,)`` long, ``(U,)`` long with ``U <= E``, and ``num_relations`` counts
    """
    key = relation * num_nodes + node
    unique_key, inverse = torch.unique(key, sorted=True, return_inverse=True)
    pair_relation = torch.div(unique_key, num_nodes, rounding_mode="floor")
    pair_node = unique_key - pair_relation * num_nodes
    counts = torch.bincount(pair_relation, minlength=num_relations).tolist()
    return inverse, pair_node, counts


def _cat_rows(pieces: list[Tensor], empty: Tensor) -> Tensor:
    return torch.cat(pieces) if pieces else empty


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

    Memory and compute: the additive logit terms are linear in :math:`\mathbf{x}`, so they are
    :math:`\mathbf{x}^\top \mathbf{U}^{(r)}_h` with
    :math:`\mathbf{U}^{(r)}_h = \mathbf{W}_{r,h}^\top \mathbf{a}^{(r)}_h` (an ``(in, H)``
    matrix per relation). Values :math:`\mathbf{z}^{(r)}_j` and source terms are computed
    once per distinct (source, relation) pair of the edges, target terms once per distinct
    (target, relation) pair (about 7 pairs per node in the ReDiFu graph), never per edge.
    LeakyReLU + softmax and the weighted sum are fused autograd functions that keep only the
    ``(E, H)`` weights (and a sign mask) for backward; the weighted sum runs over chunks of
    edges. No ``(E, in, out)`` or ``(E, out)`` tensor is ever materialised.
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
        self._transform_cache: tuple | None = None  # see _transforms()

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
        """``W_r`` and the per-relation logit projections of both sides.

        They depend on the parameters alone, and computing them reads every ``W_r`` twice
        (about half the layer's time for a short dialogue). Without autograd (evaluation,
        prediction) they are kept and reused until a parameter changes: an optimiser step,
        ``load_state_dict`` or a move bumps the parameter's version counter or storage.
        (Writing through ``param.data`` bypasses the version counter: run a forward pass with
        autograd on, which empties the cache, after doing that.)
        """
        if torch.compiler.is_compiling():  # a compiled graph recomputes them as part of the graph
            return self._compute_transforms()
        if torch.is_grad_enabled():
            self._transform_cache = None
            return self._compute_transforms()
        # The cache holds the parameter objects themselves, so none of them (nor its storage) can
        # be freed and another take its identity or address while the cache lives.
        params = tuple(self.parameters(recurse=False))
        key = (torch.is_inference_mode_enabled(), *((p._version, p.data_ptr(), p.device, p.dtype) for p in params))
        cache = self._transform_cache
        if cache is None or cache[1] != key or any(a is not b for a, b in zip(cache[0], params, strict=True)):
            cache = (params, key, self._compute_transforms())
            self._transform_cache = cache
        return cache[2]

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

        R, H, D = self.num_relations, self.num_heads, self.head_dim
        weight, proj_src, proj_dst = self._transforms()  # (R, in, out), (R, in, H), (R, in, H)
        src, dst = edge_index[0], edge_index[1]

        # Values W_r x_j and source terms once per distinct (source, relation) pair, target
        # terms once per distinct (target, relation) pair.
        value_index, source_nodes, source_counts = _relation_pairs(src, edge_type, num_nodes, R)
        target_index, target_nodes, target_counts = _relation_pairs(dst, edge_type, num_nodes, R)
        # One gather per side and unbind() of the parameters: indexing them per relation would
        # make autograd allocate and accumulate a full-size gradient once per relation.
        weights, source_projs, target_projs = weight.unbind(0), proj_src.unbind(0), proj_dst.unbind(0)
        values, source_scores, target_scores = [], [], []
        x_source = x.index_select(0, source_nodes).split(source_counts)  # R x (U_r, in)
        for r, x_r in enumerate(x_source):
            if x_r.numel():
                values.append(x_r @ weights[r])  # (U_r, out)
                source_scores.append(x_r @ source_projs[r])  # (U_r, H)
        x_target = x.index_select(0, target_nodes).split(target_counts)  # R x (U'_r, in)
        for r, x_r in enumerate(x_target):
            if x_r.numel():
                target_scores.append(x_r @ target_projs[r])  # (U'_r, H)

        value_table = _cat_rows(values, x.new_zeros(0, self.out_dim)).view(-1, H, D)  # (U, H, D)
        logits = _cat_rows(source_scores, x.new_zeros(0, H))[value_index] + _cat_rows(
            target_scores, x.new_zeros(0, H)
        )[target_index]  # (E, H)
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
        return _LeakySegmentSoftmax.apply(logits, index, num_nodes, self.negative_slope)  # (E, H)

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
        heads, head_dim = value_table.size(1), value_table.size(2)
        chunk = max(1, _CHUNK_ELEMENTS // (heads * head_dim))
        alpha = inputs.to(value_table.dtype)
        return _WeightedGatherScatter.apply(alpha, value_table, value_index, index, num_nodes, chunk)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_dim}, {self.out_dim}, "
            f"num_relations={self.num_relations}, num_heads={self.num_heads}, "
            f"num_bases={self.num_bases})"
        )
