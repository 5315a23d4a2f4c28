"""Incremental evaluation of a causal :class:`~redifu.model.ReDiFu`: one utterance at a time.

In a causal model (``model.causal``) no layer's output at utterance ``t`` depends on a later
utterance, so once computed it is final. :class:`IncrementalReDiFu` therefore computes, for each
new utterance, every layer's output *at that utterance only*, from what it keeps of the earlier
ones, per layer (exact per-layer caching, not a recomputation of the recent past):

* each attention of the denoiser and the fusion keeps the keys and values of the last
  ``attention_window + 1`` utterances (the temporal denoiser one key more: its second map reads
  the previous utterance's key);
* each relation-graph layer keeps its input node vectors of the last ``max(window, cross_window)
  + 1`` utterances and the speakers of those utterances, and runs its graph attention on that
  window with the edges into the new utterance's nodes only;
* input encoding, feed-forward blocks, gates and classifiers are per utterance and keep nothing.

Work and memory per utterance are thus bounded by the windows, not by the conversation's length,
when the model has an ``attention_window``; without one every attention keeps all earlier keys
and values (memory and attention work grow with the conversation). Results equal the causal
model run on the whole prefix within float rounding (``tests/test_session.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from redifu.model import ReDiFu
from redifu.nn.attention import MultiHeadAttention, TransformerBlock
from redifu.nn.differential_attention import DifferentialAttention, DifferentialTransformerLayer
from redifu.nn.fusion import ConcatFusion, SymmetricFusion, TextGuidedFusion
from redifu.nn.kernels.attention import masked_attention, masked_attention_pair
from redifu.nn.positional import apply_rotary
from redifu.nn.relation_graph import build_relation_graph

__all__ = ["IncrementalReDiFu"]


class _Recent:
    """The last ``size`` rows (``None``: all) of a sequence kept along dimension ``-2``."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.data: Tensor | None = None

    def push(self, row: Tensor) -> Tensor:
        data = row if self.data is None else torch.cat((self.data, row), dim=-2)
        if self.size is not None and data.shape[-2] > self.size:
            data = data[..., -self.size:, :].clone()  # a copy, so the evicted rows are freed
        self.data = data
        return data

    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()


@dataclass
class _KeysValues:
    keys: _Recent
    values: _Recent


def _all_keys(length: int, device: torch.device) -> Tensor:
    return torch.ones(1, length, dtype=torch.bool, device=device)  # (1, L)


class IncrementalReDiFu:
    """A causal :class:`~redifu.model.ReDiFu` evaluated one utterance at a time (eval mode,
    no autograd). See the module docstring for what is kept.

    Args:
        model: A model whose config has ``causal=True``.

    Shapes:
        - :meth:`step` features: per modality ``(D_m,)``; speaker: a slot id -> logits ``(C,)``
    """

    def __init__(self, model: ReDiFu) -> None:
        if not model.config.causal:
            raise ValueError("model: incremental evaluation needs a causal model (model.causal=true)")
        self.model = model
        self.config = model.config
        self.position = 0
        window = self.config.attention_window
        self._attention_size = None if window is None else window + 1
        self._caches: dict[str, object] = {}
        graph = model.graph
        if graph is not None:
            reach = max(graph.window, graph.cross_window if graph.cross_modal else 0)
            self._graph_size = reach + 1
            self._speakers = _Recent(self._graph_size)

    # what is kept ------------------------------------------------------------------------------

    def _kv(self, name: str, *, extra_key: int = 0) -> _KeysValues:
        if name not in self._caches:
            size = self._attention_size
            self._caches[name] = _KeysValues(_Recent(None if size is None else size + extra_key), _Recent(size))
        return self._caches[name]  # type: ignore[return-value]

    def _rows(self, name: str, size: int) -> _Recent:
        if name not in self._caches:
            self._caches[name] = _Recent(size)
        return self._caches[name]  # type: ignore[return-value]

    def state_bytes(self) -> int:
        """Bytes of every tensor kept for later utterances."""
        total = 0
        for kept in self._caches.values():
            parts = (kept.keys, kept.values) if isinstance(kept, _KeysValues) else (kept,)
            total += sum(part.nbytes() for part in parts)
        if self.model.graph is not None:
            total += self._speakers.nbytes()
        return total

    # one utterance -----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, features: Mapping[str, Tensor], speaker: int) -> Tensor:
        """The logits ``(C,)`` of the next utterance of the conversation."""
        model, config, t = self.model, self.config, self.position
        device = next(model.parameters()).device
        speaker_id = torch.tensor([[int(speaker)]], device=device)  # (1, 1)
        streams: dict[str, Tensor] = {}
        for m in config.modalities:
            h = model.encoders[m](features[m].to(device).reshape(1, 1, -1))  # (1, 1, D)
            if model.speaker_embedding is not None:
                h = h + model.speaker_embedding(speaker_id)
            if model.position is not None:
                h = h + model.position.encoding(1, device=h.device, dtype=h.dtype, offset=t)
            streams[m] = h
        for m, denoiser in model.denoisers.items():
            x = streams[m]
            for index, layer in enumerate(denoiser.layers):
                x = self._denoiser_layer(layer, x, f"denoiser.{m}.{index}")
            streams[m] = denoiser.norm(x)
        if model.graph is not None:
            streams.update(self._graph(streams, speaker_id))
        fused, streams = self._fusion(streams)
        if config.logit_weights is not None:
            logits = sum(w * model.modality_classifiers[m](streams[m]) for m, w in config.logit_weights.items())
        else:
            logits = model.classifier(fused)
        self.position += 1
        return logits.reshape(-1)  # (C,)

    # stages ------------------------------------------------------------------------------------

    def _rotate(self, rotary, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if rotary is None:
            return q, k
        cos, sin = rotary(1, device=q.device, dtype=q.dtype, offset=self.position)  # (1, d) each
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def _denoiser_layer(self, layer: DifferentialTransformerLayer, x: Tensor, name: str) -> Tensor:
        a = layer.attn_norm(x)  # (1, 1, D)
        attn = layer.attn
        if isinstance(attn, DifferentialAttention):
            attended = self._dual(attn, a, self._kv(name))
        else:
            attended = self._temporal(attn, a, self._kv(name, extra_key=1))
        x = x + attended
        return x + layer.ffn(layer.ffn_norm(x))

    def _dual(self, attn: DifferentialAttention, a: Tensor, kept: _KeysValues) -> Tensor:
        H, d = attn.num_heads, attn.head_dim
        q = attn.q_proj(a).view(1, 1, H, 2, d).permute(3, 0, 2, 1, 4)  # (2, 1, H, 1, d)
        k = attn.k_proj(a).view(1, 1, H, 2, d).permute(3, 0, 2, 1, 4)  # (2, 1, H, 1, d)
        v = attn.v_proj(a).view(1, 1, H, 2 * d).transpose(1, 2)  # (1, H, 1, 2d)
        q, k = self._rotate(attn.rotary, q, k)
        keys, values = kept.keys.push(k), kept.values.push(v)  # (2, 1, H, L, d), (1, H, L, 2d)
        everything = _all_keys(values.shape[-2], a.device)
        (q1, q2), (k1, k2) = q.unbind(0), keys.unbind(0)
        o1, o2 = masked_attention_pair((q1, k1, everything), (q2, k2, everything), values, scale=attn.scale)
        heads = attn.head_norm(o1 - attn.differential_lambda() * o2) * (1.0 - attn.lambda_init)  # (1, H, 1, 2d)
        return attn.out_proj(heads.transpose(1, 2).reshape(1, 1, attn.dim))

    def _temporal(self, attn, a: Tensor, kept: _KeysValues) -> Tensor:
        H, d = attn.num_heads, attn.head_dim
        q = attn.q_proj(a).view(1, 1, H, d).transpose(1, 2)  # (1, H, 1, d)
        k = attn.k_proj(a).view(1, 1, H, d).transpose(1, 2)  # (1, H, 1, d)
        v = attn.v_proj(a).view(1, 1, H, d).transpose(1, 2)  # (1, H, 1, d)
        q, k = self._rotate(attn.rotary, q, k)
        keys, values = kept.keys.push(k), kept.values.push(v)  # (1, H, L+1 or L, d), (1, H, L, d)
        length = values.shape[-2]
        current = keys[..., -length:, :]
        o1 = masked_attention(q, current, values, _all_keys(length, a.device), scale=attn.scale)
        # map 2: slot j pairs the key of utterance j - 1 with the value of j, for j >= 1
        slots = min(self.position, length)
        heads = o1
        if slots:
            previous = keys[..., -slots - 1:-1, :]
            o2 = masked_attention(q, previous, values[..., -slots:, :], _all_keys(slots, a.device), scale=attn.scale)
            heads = o1 - attn.differential_lambda().view(1, H, 1, 1) * o2
        heads = attn.head_norm(heads) * (1.0 - attn.lambda_init)  # (1, H, 1, d)
        return attn.out_proj(heads.transpose(1, 2).reshape(1, 1, attn.dim))

    def _attend(self, mha: MultiHeadAttention, query: Tensor, context: Tensor, kept: _KeysValues) -> Tensor:
        H, d = mha.num_heads, mha.head_dim
        q = mha.q_proj(query).view(1, 1, H, d).transpose(1, 2)  # (1, H, 1, d)
        k, v = mha.kv_proj(context).view(1, 1, 2, H, d).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (1, H, 1, d)
        q, k = self._rotate(mha.rotary, q, k)
        keys, values = kept.keys.push(k), kept.values.push(v)  # (1, H, L, d)
        out = masked_attention(q, keys, values, _all_keys(keys.shape[-2], query.device))  # (1, H, 1, d)
        return mha.out_proj(out.transpose(1, 2).reshape(1, 1, mha.dim))

    def _block(self, block: TransformerBlock, x: Tensor, name: str) -> Tensor:
        a = block.attn_norm(x)
        x = x + self._attend(block.attn, a, a, self._kv(name))
        return x + block.ffn(block.ffn_norm(x))

    def _graph(self, streams: dict[str, Tensor], speaker_id: Tensor) -> dict[str, Tensor]:
        graph, names = self.model.graph, self.config.graph_modality_names
        speakers = self._speakers.push(speaker_id[..., None])[..., 0]  # (1, L)
        length = speakers.shape[-1]
        edges = build_relation_graph(speakers, torch.ones_like(speakers, dtype=torch.bool),
                                     num_modalities=len(names), window=graph.window, cross_modal=graph.cross_modal,
                                     cross_window=graph.cross_window, speaker_aware=graph.speaker_aware, causal=True)
        into_new = edges.edge_index[1] % length == length - 1  # edges into the new utterance's nodes
        edge_index, edge_type = edges.edge_index[:, into_new], edges.edge_type[into_new]
        targets = torch.arange(len(names), device=speakers.device) * length + length - 1  # (M,)
        current = [streams[m] for m in names]  # (1, 1, D) each
        for index, (conv, norm) in enumerate(zip(graph.convs, graph.norms)):
            windows = [self._rows(f"graph.{index}.{m}", self._graph_size).push(x) for m, x in zip(names, current)]
            nodes = torch.cat([w[0] for w in windows], dim=0)  # (M*L, D) node m*L + p
            h, _ = conv(nodes, edge_index, edge_type)
            out = norm(nodes[targets] + graph.activation(h[targets]))  # (M, D)
            current = [row.view(1, 1, -1) for row in out]
        return dict(zip(names, current))

    def _fusion(self, streams: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, Tensor]]:
        fusion: nn.Module = self.model.fusion
        one = torch.ones(1, 1, dtype=torch.bool, device=streams["text"].device)
        if isinstance(fusion, ConcatFusion):
            out = fusion(streams, one)
            return out.fused, out.streams
        streams = dict(streams)
        if isinstance(fusion, SymmetricFusion):
            for index, (blocks, cross, norms) in enumerate(zip(fusion.self_blocks, fusion.cross, fusion.cross_norms)):
                for m in fusion.modalities:
                    streams[m] = self._block(blocks[m], streams[m], f"fusion.{index}.self.{m}")
                normed = {m: norms[m](streams[m]) for m in fusion.modalities}
                updates = {m: torch.zeros_like(streams[m]) for m in fusion.modalities}
                for m, o in fusion.pairs:
                    updates[m] = updates[m] + self._attend(cross[f"{m}_{o}"], normed[m], normed[o],
                                                           self._kv(f"fusion.{index}.{m}_{o}"))
                streams = {m: streams[m] + updates[m] for m in fusion.modalities}
            out = fusion.concat(streams, one)
            return out.fused, out.streams
        assert isinstance(fusion, TextGuidedFusion)
        for index, layer in enumerate(fusion.layers):
            for m in layer.modalities:
                streams[m] = self._block(layer.self_blocks[m], streams[m], f"fusion.{index}.self.{m}")
            text = streams["text"]
            if layer.auxiliary:
                query = layer.query_norm(text)
                diffused = torch.zeros_like(text)
                for m in layer.auxiliary:
                    context = layer.context_norms[m](streams[m])
                    attended = self._attend(layer.cross[m], query, context, self._kv(f"fusion.{index}.cross.{m}"))
                    if layer.aligned:
                        attended = attended + context
                    gate = torch.sigmoid(layer.gates[m](torch.cat([query, attended], dim=-1)))
                    diffused = diffused + gate * attended
                text = text + diffused
                text = text + layer.ffn(layer.ffn_norm(text))
            streams["text"] = text
        fused = fusion.norm(streams["text"]) if fusion.norm is not None else None
        return fused, streams
