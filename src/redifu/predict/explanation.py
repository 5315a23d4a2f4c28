"""Why the model predicted what it did: per-utterance summaries of its attention.

Reads the typed fields of :class:`~redifu.model.ReDiFuOutput` (``return_attention=True``): the
relational graph attention (:class:`~redifu.nn.relation_graph.GraphAttention`, whose relation
names carry the modality names) and the text-guided fusion gates per auxiliary modality.
"""

from __future__ import annotations

from typing import Sequence

import torch

from redifu.model import ReDiFuOutput

__all__ = ["EXPLAIN_TOP_K", "explain"]

EXPLAIN_TOP_K = 3


def explain(output: ReDiFuOutput, orders: Sequence[Sequence[int]], *, top_k: int = EXPLAIN_TOP_K) -> list[list[dict]]:
    """Per utterance of a batch: its top graph neighbours and mean fusion gate per modality.

    Args:
        output: The model's output for the batch, computed with ``return_attention=True``.
        orders: Per dialogue (batch row), the ``utterance`` order of each position.
        top_k: Neighbours kept per utterance.

    Returns:
        Per dialogue, per utterance, a dict with (when the model has them) ``"neighbours"``:
        ``[{"utterance", "relation", "weight"}, ...]`` (weights averaged over heads, layers and
        the utterance's modality nodes, highest first) and ``"gates"``: ``{modality: mean gate}``
        (averaged over channels and fusion layers). Plain JSON types only.
    """
    summaries: list[list[dict]] = [[{} for _ in dialogue] for dialogue in orders]
    graph = output.graph_attention
    if graph is not None and graph.attention:
        num_modalities = len(graph.modality_names)
        weights = torch.stack([a.float().mean(-1) for a in graph.attention]).mean(0).cpu().numpy()  # (E,)
        source, target = graph.edge_index.cpu().numpy()
        node_batch = graph.node_batch.cpu().numpy()
        node_utterance = graph.node_utterance.cpu().numpy()
        edge_type = graph.edge_type.cpu().numpy()
        totals: dict[tuple[int, int], dict[tuple[int, int], float]] = {}
        for s, t, r, w in zip(source, target, edge_type, weights):
            bucket = totals.setdefault((int(node_batch[t]), int(node_utterance[t])), {})
            neighbour = (int(node_utterance[s]), int(r))
            bucket[neighbour] = bucket.get(neighbour, 0.0) + float(w) / num_modalities
        for (row, position), bucket in totals.items():
            top = sorted(bucket.items(), key=lambda item: -item[1])[:top_k]
            summaries[row][position]["neighbours"] = [
                {"utterance": int(orders[row][p]), "relation": graph.relation_names[r], "weight": round(w, 6)}
                for (p, r), w in top
            ]
    if output.fusion_gates:
        means = {m: torch.stack([g.float().mean(-1) for g in layers]).mean(0).cpu().numpy()  # (B, N)
                 for m, layers in output.fusion_gates.items()}
        for row, dialogue in enumerate(orders):
            for position in range(len(dialogue)):
                summaries[row][position]["gates"] = {m: round(float(g[row, position]), 6) for m, g in means.items()}
    return summaries
