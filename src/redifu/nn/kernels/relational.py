"""Kernels of the relational graph attention (:class:`redifu.nn.relational_attention.RelationalGraphAttention`).

The layer's equations need, per edge ``j -> i`` of relation ``r``, the value ``W_r x_j`` and an
additive logit. Computed naively that is an ``(E, in, out)`` weight gather or an ``(E, out)``
message tensor kept alive for autograd. These kernels keep memory linear in nodes and edges:

* :func:`relational_terms`: values and logit terms once per distinct (node, relation) pair of
  the edges, never per edge;
* :class:`LeakySegmentSoftmax`: LeakyReLU + softmax over each target's incoming edges, saving
  only its ``(E, H)`` output and a sign mask for backward;
* :func:`weighted_gather_scatter` (:class:`WeightedGatherScatter`): the weighted sum of values,
  in chunks of edges both ways, gathering the values again in backward;
* :class:`ParameterCache`: the per-relation projections, which depend on the parameters alone,
  kept between calls while autograd is off.

docs/BENCHMARKS.md has no A/B figure for the first three at the shipped configs; their claim
is memory, checked by ``test_no_per_edge_feature_tensor_is_kept_for_backward`` in
tests/nn/test_relational_attention.py (nothing saved for backward as large as one ``(E, out)``
tensor). The cache's figure is in its docstring.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import Tensor, nn
from torch_geometric.utils import softmax

__all__ = [
    "CHUNK_ELEMENTS",
    "LeakySegmentSoftmax",
    "ParameterCache",
    "WeightedGatherScatter",
    "relation_pairs",
    "relational_terms",
    "weighted_gather_scatter",
]

# Elements of one gathered ``(chunk, H, D)`` block in the fused aggregation (16 MiB in fp32):
# large enough that the Python loop over chunks costs nothing, small enough to be negligible.
CHUNK_ELEMENTS = 1 << 22

T = TypeVar("T")


class WeightedGatherScatter(torch.autograd.Function):
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


def weighted_gather_scatter(
    alpha: Tensor, table: Tensor, value_index: Tensor, index: Tensor, num_nodes: int,
    *, chunk_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    """:class:`WeightedGatherScatter` with chunks of about ``chunk_elements`` gathered values.

    Shapes:
        - alpha: ``(E, H)``; table: ``(U, H, D)``; value_index, index: ``(E,)`` long
        - output: ``(num_nodes, H, D)``
    """
    heads, head_dim = table.size(1), table.size(2)
    chunk = max(1, chunk_elements // (heads * head_dim))
    return WeightedGatherScatter.apply(alpha.to(table.dtype), table, value_index, index, num_nodes, chunk)


class LeakySegmentSoftmax(torch.autograd.Function):
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


def relation_pairs(
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


def relational_terms(
    x: Tensor,
    edge_index: Tensor,
    edge_type: Tensor,
    weight: Tensor,
    proj_src: Tensor,
    proj_dst: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Values :math:`\mathbf{W}_r \mathbf{x}_j` and additive logits of every edge, per distinct pair.

    Values and source terms :math:`\mathbf{x}_j^\top \mathbf{U}^{(r)}_{\mathrm{src}}` are computed
    once per distinct (source, relation) pair of the edges, target terms once per distinct
    (target, relation) pair (about 7 pairs per node in the ReDiFu graph), and looked up per edge.

    Args:
        x (Tensor): Node features.
        edge_index (Tensor): Source (row 0) and target (row 1) of each edge.
        edge_type (Tensor): Relation of each edge.
        weight (Tensor): The per-relation transforms :math:`\mathbf{W}_r`.
        proj_src (Tensor): The per-relation, per-head source logit projections.
        proj_dst (Tensor): The per-relation, per-head target logit projections.

    Shapes:
        - x: ``(V, in)``; edge_index: ``(2, E)``; edge_type: ``(E,)``
        - weight: ``(R, in, out)``; proj_src, proj_dst: ``(R, in, H)``
        - output: the value table ``(U, H, out / H)``, each edge's row in it ``(E,)``, and the
          logits ``(E, H)``
    """
    num_nodes = x.size(0)
    R, out_dim, H = weight.size(0), weight.size(2), proj_src.size(2)
    src, dst = edge_index[0], edge_index[1]
    value_index, source_nodes, source_counts = relation_pairs(src, edge_type, num_nodes, R)
    target_index, target_nodes, target_counts = relation_pairs(dst, edge_type, num_nodes, R)
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

    value_table = _cat_rows(values, x.new_zeros(0, out_dim)).view(-1, H, out_dim // H)  # (U, H, D)
    logits = _cat_rows(source_scores, x.new_zeros(0, H))[value_index] + _cat_rows(
        target_scores, x.new_zeros(0, H)
    )[target_index]  # (E, H)
    return value_table, value_index, logits


class ParameterCache:
    """A value computed from a module's own parameters, kept between calls while autograd is off.

    :meth:`get` returns ``compute()``; without autograd (evaluation, prediction) the result is
    kept and reused until a parameter changes: an optimiser step, ``load_state_dict`` or a move
    bumps the parameter's version counter or storage, and replacing a parameter object is seen
    too. With autograd on it computes afresh and drops what it kept; under ``torch.compile``
    the compiled graph computes it. (Writing through ``param.data`` bypasses the version
    counter: run a forward pass with autograd on, which empties the cache, after doing that.)

    Why it exists (docs/BENCHMARKS.md, "Floors under the goals not met", measured outside the
    suite back to back): keeping the relational graph attention's per-relation transforms and
    logit projections, which read every ``W_r`` twice, took the 20-utterance inference latency
    at the IEMOCAP settings from 36.7 ms to 29.2 ms on 2 CPU cores.
    """

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def get(self, module: nn.Module, compute: Callable[[], T]) -> T:
        """``compute()``, or the kept result while ``module``'s own parameters are unchanged."""
        if torch.compiler.is_compiling():  # a compiled graph recomputes it as part of the graph
            return compute()
        if torch.is_grad_enabled():
            self._entry = None
            return compute()
        # The entry holds the parameter objects themselves, so none of them (nor its storage) can
        # be freed and another take its identity or address while the entry lives.
        params = tuple(module.parameters(recurse=False))
        key = (torch.is_inference_mode_enabled(), *((p._version, p.data_ptr(), p.device, p.dtype) for p in params))
        entry = self._entry
        if entry is None or entry[1] != key or any(a is not b for a, b in zip(entry[0], params, strict=True)):
            entry = (params, key, compute())
            self._entry = entry
        return entry[2]
