"""Live conversations: the incremental causal model and :meth:`Predictor.session`."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_DIMS, make_tiny_config
from redifu.incremental import IncrementalReDiFu
from redifu.model import ReDiFu

LENGTH = 60


def _conversation(modalities, *, length=LENGTH, speakers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(1, length, TINY_DIMS[m], generator=g) for m in modalities}
    return features, torch.randint(0, speakers, (1, length), generator=g)


def _assert_incremental_equals_prefix(model, modalities):
    features, speakers = _conversation(modalities)
    mask = torch.ones(1, LENGTH, dtype=torch.bool)
    incremental = IncrementalReDiFu(model)
    with torch.no_grad():
        whole = model(features, speakers, mask).logits[0]  # causal: row t is the prefix's last
    for t in range(LENGTH):
        logits = incremental.step({m: features[m][0, t] for m in modalities}, int(speakers[0, t]))
        if t in (0, 1, 7, 33, LENGTH - 1):  # and the prefix itself, run on its own
            with torch.no_grad():
                prefix = model({m: f[:, :t + 1] for m, f in features.items()}, speakers[:, :t + 1],
                               mask[:, :t + 1]).logits[0, -1]
            torch.testing.assert_close(logits, prefix, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, whole[t], atol=1e-5, rtol=0)
    return incremental


TEXT_ONLY = [dict(graph="modality", fusion="text_guided"), dict(graph="modality", fusion="symmetric"),
             dict(graph="off", fusion="concat"), dict(denoiser="temporal", denoise_modalities=("text",))]
THREE = [dict(denoiser="dual", graph="modality+cross", fusion="text_guided", cross_window=2),
         dict(denoiser="temporal", graph="modality", fusion="symmetric"),
         dict(denoiser="dual", graph="off", fusion="concat", logit_weights={"text": 1.0, "audio": 0.5}),
         dict(denoiser="temporal", graph="modality+cross", fusion="text_guided", fusion_aligned=False,
              speaker_aware=False)]


@pytest.mark.parametrize("position_encoding,attention_window", [("sinusoidal", 5), ("rotary", None),
                                                                ("rotary", 8), ("none", 0)])
@pytest.mark.parametrize("options", TEXT_ONLY + THREE)
def test_every_step_equals_the_causal_model_on_the_whole_prefix(options, position_encoding, attention_window):
    modalities = ("text",) if options in TEXT_ONLY else tuple(TINY_DIMS)
    torch.manual_seed(0)
    config = make_tiny_config(modality_dims={m: TINY_DIMS[m] for m in modalities}, num_speakers=4, window=3,
                              graph_layers=2, fusion_layers=2, denoiser_layers=2, causal=True,
                              position_encoding=position_encoding, attention_window=attention_window,
                              **options)
    model = ReDiFu(config).eval()
    _assert_incremental_equals_prefix(model, modalities)


def test_what_a_session_keeps_is_bounded_by_the_windows():
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(num_speakers=4, causal=True, attention_window=4, cross_window=1,
                                    graph_layers=2, fusion_layers=2)).eval()
    features, speakers = _conversation(tuple(TINY_DIMS), length=40)
    incremental = IncrementalReDiFu(model)
    sizes = []
    for t in range(40):
        incremental.step({m: f[0, t] for m, f in features.items()}, int(speakers[0, t]))
        sizes.append(incremental.state_bytes())
    assert sizes[10] == sizes[-1] > sizes[0]  # grows until the windows are full, then stays


def test_incremental_evaluation_refuses_a_full_model(tiny_config):
    with pytest.raises(ValueError, match="needs a causal model"):
        IncrementalReDiFu(ReDiFu(tiny_config))
