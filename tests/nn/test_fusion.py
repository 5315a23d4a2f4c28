"""Fusion modules: text-guided diffusion, symmetric cross-attention, concatenation."""

from __future__ import annotations

import pytest
import torch

from redifu.nn.attention import FeedForward, MultiHeadAttention, TransformerBlock
from redifu.nn.fusion import ConcatFusion, DiffusionLayer, SymmetricFusion, TextGuidedFusion, build_fusion

MODALITIES = ("text", "audio", "visual")


def _streams(b=3, n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    streams = {m: torch.randn(b, n, d, generator=g) for m in MODALITIES}
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return streams, mask


@pytest.mark.parametrize("kind", ["concat", "symmetric", "text_guided"])
@pytest.mark.parametrize("modalities", [("text",), ("text", "audio"), MODALITIES])
def test_shapes_and_backward(kind, modalities):
    streams, mask = _streams()
    fusion = build_fusion(kind, dim=8, modalities=modalities, num_layers=2, num_heads=2)
    out = fusion({m: streams[m].requires_grad_() for m in modalities}, mask)
    assert out.fused.shape == (3, 6, 8)
    assert set(out.streams) == set(modalities)
    out.fused.sum().backward()
    assert all(torch.isfinite(streams[m].grad).all() for m in modalities)


@pytest.mark.parametrize("kind", ["concat", "symmetric", "text_guided"])
def test_padding_invariance(kind):
    torch.manual_seed(0)
    fusion = build_fusion(kind, dim=8, modalities=MODALITIES, num_layers=2, num_heads=2).eval()
    streams, mask = _streams()
    padded = {m: x.clone() for m, x in streams.items()}
    for x in padded.values():
        x[~mask] = 100.0
    with torch.no_grad():
        a = fusion(streams, mask).fused
        b = fusion(padded, mask).fused
    torch.testing.assert_close(a[mask], b[mask])


def test_text_guided_keeps_audio_and_visual_out_of_each_other():
    """Text is the main stream: audio and visual never attend to each other or to text."""
    torch.manual_seed(0)
    fusion = TextGuidedFusion(dim=8, modalities=MODALITIES, num_layers=2, num_heads=2).eval()
    streams, mask = _streams()
    changed = dict(streams, text=streams["text"] + 1.0, visual=streams["visual"] + 1.0)
    with torch.no_grad():
        a, b = fusion(streams, mask), fusion(changed, mask)
    torch.testing.assert_close(a.streams["audio"], b.streams["audio"])
    assert not torch.allclose(a.fused, b.fused)


def test_text_guided_closed_gates_give_text_only_result():
    """With gates forced shut, the fused stream ignores audio and visual entirely."""
    torch.manual_seed(0)
    fusion = TextGuidedFusion(dim=8, modalities=MODALITIES, num_layers=2, num_heads=2).eval()
    with torch.no_grad():
        for layer in fusion.layers:
            for gate in layer.gates.values():
                gate.weight.zero_()
                gate.bias.fill_(-1e4)
    streams, mask = _streams()
    changed = dict(streams, audio=torch.randn_like(streams["audio"]), visual=torch.randn_like(streams["visual"]))
    with torch.no_grad():
        torch.testing.assert_close(fusion(streams, mask).fused, fusion(changed, mask).fused)


def test_text_guided_returns_cross_maps_and_gates():
    fusion = TextGuidedFusion(dim=8, modalities=MODALITIES, num_layers=1, num_heads=2).eval()
    streams, mask = _streams()
    out = fusion(streams, mask, return_attention=True)
    weights = out.attention["layer0.text_to_audio"]
    assert weights.shape == (3, 2, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 6))
    assert (weights[2, :, :, 2:] == 0).all()  # padded keys get no weight
    gate = out.attention["layer0.gate_visual"]
    assert gate.shape == (3, 6, 8) and ((gate > 0) & (gate < 1)).all()


def test_symmetric_fusion_lets_every_modality_see_the_others():
    torch.manual_seed(0)
    fusion = SymmetricFusion(dim=8, modalities=MODALITIES, num_layers=1, num_heads=2).eval()
    streams, mask = _streams()
    changed = dict(streams, text=streams["text"] + 1.0)
    with torch.no_grad():
        a, b = fusion(streams, mask), fusion(changed, mask)
    assert not torch.allclose(a.streams["audio"], b.streams["audio"])


def test_concat_fusion_has_no_cross_utterance_interaction():
    fusion = ConcatFusion(dim=8, modalities=MODALITIES).eval()
    streams, mask = _streams()
    changed = {m: x.clone() for m, x in streams.items()}
    changed["text"][:, -1] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(fusion(streams, mask).fused[:, :-1], fusion(changed, mask).fused[:, :-1])


def test_attention_sdpa_path_equals_explicit_path():
    torch.manual_seed(0)
    attention = MultiHeadAttention(dim=8, num_heads=2, rotary=True).eval()
    streams, mask = _streams()
    x = streams["text"]
    fast, _ = attention(x, mask)
    slow, weights = attention(x, mask, return_attention=True)
    torch.testing.assert_close(fast[mask], slow[mask], atol=1e-5, rtol=1e-5)
    assert (weights[1, :, :, 4:] == 0).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(modalities=("audio", "text")), "text"),
    (dict(modalities=("text", "text")), "distinct"),
    (dict(num_layers=0), "num_layers"),
])
def test_invalid_options(kwargs, match):
    options = dict(dim=8, modalities=MODALITIES, num_layers=1, num_heads=2)
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TextGuidedFusion(**options)
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_fusion("sum", dim=8, modalities=MODALITIES, num_layers=1, num_heads=2)


LAYERS = {
    "concat": lambda: ConcatFusion(dim=8, modalities=MODALITIES),
    "symmetric": lambda: SymmetricFusion(dim=8, modalities=MODALITIES, num_layers=2, num_heads=2),
    "text_guided": lambda: TextGuidedFusion(dim=8, modalities=MODALITIES, num_layers=2, num_heads=2),
    "diffusion_layer": lambda: DiffusionLayer(dim=8, modalities=MODALITIES, num_heads=2, cross_rotary=True),
    "multi_head_attention": lambda: MultiHeadAttention(dim=8, num_heads=2, rotary=True),
    "feed_forward": lambda: FeedForward(dim=8),
    "transformer_block": lambda: TransformerBlock(dim=8, num_heads=2),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_parameters_finite_after_init_and_reset(name):
    """reset_parameters() re-initialises every parameter (none is left as it was, e.g. NaN)."""
    layer = LAYERS[name]()
    parameters = list(layer.parameters())
    assert parameters
    assert all(torch.isfinite(p).all() for p in parameters)
    with torch.no_grad():
        for p in parameters:
            p.fill_(float("nan"))
    layer.reset_parameters()
    for parameter_name, p in layer.named_parameters():
        assert torch.isfinite(p).all(), f"{parameter_name} not re-initialised"


class PassThrough(torch.nn.Module):
    def forward(self, x, mask, attention_mask=None, return_attention=False):
        return x, None


@pytest.mark.parametrize("cross_rotary,position_aware", [(False, False), (True, True)])
def test_cross_rotary_lets_text_locate_its_own_utterance(cross_rotary, position_aware):
    """Without positions, cross-attention cannot tell which audio row is the query's own
    utterance: shuffling audio rows (keys) leaves the result unchanged. Rotary changes that."""
    torch.manual_seed(0)
    fusion = TextGuidedFusion(dim=8, modalities=("text", "audio"), num_layers=1, num_heads=2,
                              cross_rotary=cross_rotary, aligned=False).eval()
    fusion.layers[0].self_blocks["audio"] = PassThrough()  # isolate the cross-attention
    streams = {m: torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1)) for m in ("text", "audio")}
    mask = torch.ones(1, 6, dtype=torch.bool)
    shuffled = dict(streams, audio=streams["audio"][:, torch.tensor([3, 0, 5, 1, 4, 2])])
    with torch.no_grad():
        same = torch.allclose(fusion(streams, mask).fused, fusion(shuffled, mask).fused, atol=1e-5)
    assert same != position_aware


def test_aligned_diffusion_uses_the_utterances_own_audio():
    torch.manual_seed(0)
    options = dict(dim=8, modalities=("text", "audio"), num_layers=1, num_heads=2)
    aligned = TextGuidedFusion(**options, aligned=True).eval()
    plain = TextGuidedFusion(**options, aligned=False).eval()
    plain.load_state_dict(aligned.state_dict())
    streams, mask = _streams()
    with torch.no_grad():
        assert not torch.allclose(aligned(streams, mask).fused, plain(streams, mask).fused)
