"""A bidirectional GRU over a dialogue's utterances: the recurrent context baseline."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class DialogueGRU(nn.Module):
    """Bidirectional GRU over the utterances of each dialogue, the DialogueRNN family's context
    model (bc-LSTM, Poria et al., ACL 2017; DialogueRNN, Majumder et al., AAAI 2019).

    Utterance ``i`` of a dialogue of ``n`` becomes the concatenation of a forward and a backward
    GRU state, each of size ``D / 2`` so the output keeps the model size ``D``:
    :math:`h_i = \\mathrm{Dropout}([\\overrightarrow{\\mathrm{GRU}}(x_1 \\dots x_i);
    \\overleftarrow{\\mathrm{GRU}}(x_n \\dots x_i)])`.

    No residual connection, on purpose: as in the classic baselines, what follows sees only the
    contextual states (utterance ``i`` itself enters both of them), so the row measures a
    recurrent context model rather than a context-free one with a recurrent correction.

    Padding is packed away (:func:`~torch.nn.utils.rnn.pack_padded_sequence` with each
    dialogue's length), so the backward direction of a dialogue starts at its last real
    utterance whatever the batch's longest dialogue; padded positions come out as zeros. Not
    activation-checkpointed: it is one layer, and PyTorch's fused GRU keeps its own workspace.

    Args:
        dim (int): Model size ``D`` (even): the input and output size.
        dropout (float, optional): Dropout on the output states. (default: ``0.0``)

    Shapes:
        - x: ``(B, N, D)``; mask: ``(B, N)`` bool, True = real utterance, padding at the end
          of each row -> ``(B, N, D)``
    """

    def __init__(self, *, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim: a bidirectional GRU of output size dim needs an even dim, got {dim}")
        self.gru = nn.GRU(dim, dim // 2, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.gru.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        mask = mask.bool()
        lengths = mask.sum(-1)  # (B,)
        positions = torch.arange(mask.shape[-1], device=mask.device)
        if not torch.equal(mask, positions < lengths[:, None]):
            raise ValueError("mask: DialogueGRU needs each dialogue's padding at its end")
        # An all-padding row would have length 0, which packing refuses; run it on its first
        # position (zeroed below) instead.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, N, D)
        return self.dropout(out) * mask.unsqueeze(-1).to(out.dtype)
