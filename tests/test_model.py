"""ReDiFu model: every component option, shapes, backward, padding invariance, init, outputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_DIMS, make_tiny_config
from redifu.data.batching import DialogueDataset, collate_dialogues
from redifu.config import load_config
from redifu.model import ConfigError, ModalityEncoder, ReDiFu, ReDiFuConfig, ReDiFuOutput
from redifu.training.loss import redifu_loss

MODALITY_SETS = [("text",), ("text", "audio"), ("text", "visual"), ("text", "audio", "visual")]
COMPONENTS = list(itertools.product(["off", "dual", "temporal"], ["off", "modality", "modality+cross"],
                                    ["concat", "symmetric", "text_guided"]))


def _batch_for(corpus, modalities, count=4):
    dataset = DialogueDataset(corpus.splits["train"][:count], modalities)
    return collate_dialogues([dataset[i] for i in range(len(dataset))])


def _config(modalities, **changes):
    return make_tiny_config(modality_dims={m: TINY_DIMS[m] for m in modalities}, **changes)


@pytest.mark.parametrize("denoiser,graph,fusion", COMPONENTS)
def test_every_component_combination_runs_forward_and_backward(tiny_corpus, denoiser, graph, fusion):
    torch.manual_seed(0)
    model = ReDiFu(_config(TINY_DIMS, denoiser=denoiser, graph=graph, fusion=fusion))
    batch = _batch_for(tiny_corpus, tuple(TINY_DIMS))
    out = model(batch.features, batch.speakers, batch.mask)
    b, n = batch.mask.shape
    assert isinstance(out, ReDiFuOutput)
    assert out.logits.shape == (b, n, 6)
    assert set(out.modality_logits) == set(TINY_DIMS)
    assert torch.isfinite(out.logits).all()
    (out.logits.sum() + sum(x.sum() for x in out.modality_logits.values())).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("modalities", MODALITY_SETS)
@pytest.mark.parametrize("fusion", ["concat", "symmetric", "text_guided"])
def test_any_modality_subset_with_text(tiny_corpus, modalities, fusion):
    model = ReDiFu(_config(modalities, fusion=fusion))
    batch = _batch_for(tiny_corpus, modalities)
    out = model(batch.features, batch.speakers, batch.mask)
    assert out.logits.shape[:2] == batch.mask.shape
    assert set(out.modality_logits) == set(modalities)
    out.logits.sum().backward()


@pytest.mark.parametrize("position_encoding", ["none", "sinusoidal", "rotary"])
@pytest.mark.parametrize("denoiser,graph,fusion", [("dual", "modality+cross", "text_guided"),
                                                   ("temporal", "modality", "symmetric"),
                                                   ("off", "off", "concat")])
def test_padding_does_not_change_real_utterances(tiny_corpus, position_encoding, denoiser, graph, fusion):
    """A dialogue alone and padded inside a batch give the same logits (eval mode)."""
    torch.manual_seed(0)
    model = ReDiFu(_config(TINY_DIMS, position_encoding=position_encoding, denoiser=denoiser, graph=graph,
                           fusion=fusion)).eval()
    dataset = DialogueDataset(tiny_corpus.splits["train"][:5], tuple(TINY_DIMS))
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_dialogues(items)
    for m in batch.features:  # garbage in the padding must not leak into real utterances
        batch.features[m][~batch.mask] = 1e3 * torch.randn_like(batch.features[m][~batch.mask])
    batch.speakers[~batch.mask] = 1
    with torch.no_grad():
        batched = model(batch.features, batch.speakers, batch.mask).logits
        for row, item in enumerate(items):
            alone = collate_dialogues([item])
            single = model(alone.features, alone.speakers, alone.mask).logits[0]
            n = len(item.speakers)
            torch.testing.assert_close(batched[row, :n], single, atol=1e-4, rtol=1e-4)


def test_context_matters_with_graph_and_not_without(tiny_corpus):
    """With the whole context machinery off, an utterance's logits depend only on itself."""
    isolated = ReDiFu(_config(TINY_DIMS, denoiser="off", graph="off", fusion="concat",
                              position_encoding="none")).eval()
    contextual = ReDiFu(_config(TINY_DIMS)).eval()
    batch = _batch_for(tiny_corpus, tuple(TINY_DIMS), count=1)
    changed = {m: x.clone() for m, x in batch.features.items()}
    changed["text"][0, -1] += 5.0  # perturb the last utterance only
    with torch.no_grad():
        for model, should_change in ((isolated, False), (contextual, True)):
            before = model(batch.features, batch.speakers, batch.mask).logits[0, 0]
            after = model(changed, batch.speakers, batch.mask).logits[0, 0]
            assert (not torch.allclose(before, after)) == should_change


def test_parameters_finite_after_init_and_reset(tiny_config):
    model = ReDiFu(tiny_config)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.reset_parameters()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after) if a.numel() > 1)


def test_modality_encoder_reset_reinitialises_every_parameter():
    encoder = ModalityEncoder(in_dim=5, dim=4)
    with torch.no_grad():
        for p in encoder.parameters():
            p.fill_(float("nan"))
    encoder.reset_parameters()
    names = [name for name, _ in encoder.named_parameters()]
    assert names
    for name, p in encoder.named_parameters():
        assert torch.isfinite(p).all(), name


def test_training_options_are_not_saved_with_the_model(tiny_config, tiny_batch):
    """Activation checkpointing and fast dropout are constructor options, not state: a model
    built with them saves the state a plain one loads strictly, and evaluates the same."""
    torch.manual_seed(0)
    trained = ReDiFu(tiny_config, activation_checkpointing=True, fast_dropout=True).eval()
    plain = ReDiFu(tiny_config).eval()
    plain.load_state_dict(trained.state_dict(), strict=True)
    assert trained.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        inputs = (tiny_batch.features, tiny_batch.speakers, tiny_batch.mask)
        torch.testing.assert_close(plain(*inputs).logits, trained(*inputs).logits, rtol=0, atol=0)


def test_return_attention_gives_maps_and_graph_weights(tiny_corpus, tiny_config):
    model = ReDiFu(tiny_config).eval()
    batch = _batch_for(tiny_corpus, tuple(TINY_DIMS))
    out = model(batch.features, batch.speakers, batch.mask, return_attention=True)
    b, n = batch.mask.shape
    assert any(k.startswith("denoiser.audio") for k in out.attention)
    assert any(k.startswith("denoiser.visual") for k in out.attention)
    assert out.attention["fusion.layer0.text_to_audio"].shape == (b, 2, n, n)
    assert out.attention["fusion.layer0.gate_visual"].shape == (b, n, 16)
    assert out.graph_attention is not None
    plain = model(batch.features, batch.speakers, batch.mask)
    assert plain.attention == {} and plain.graph_attention is None
    torch.testing.assert_close(plain.logits, out.logits, atol=1e-5, rtol=1e-5)


def test_feature_statistics_standardise_inputs(tiny_corpus, tiny_config):
    """Shifting and scaling raw features is undone exactly by matching statistics."""
    torch.manual_seed(0)
    model = ReDiFu(tiny_config).eval()
    batch = _batch_for(tiny_corpus, tuple(TINY_DIMS))
    with torch.no_grad():
        reference = model(batch.features, batch.speakers, batch.mask).logits
        shifted = {m: 3.0 * x + 7.0 for m, x in batch.features.items()}
        model.set_feature_statistics({m: (torch.full((d,), 7.0), torch.full((d,), 3.0)) for m, d in TINY_DIMS.items()})
        result = model(shifted, batch.speakers, batch.mask).logits
    torch.testing.assert_close(result[batch.mask], reference[batch.mask], atol=1e-4, rtol=1e-4)


def test_logit_weights_sum_modality_logits(tiny_corpus):
    model = ReDiFu(_config(TINY_DIMS, logit_weights={"text": 1.0, "audio": 1.0, "visual": 0.4})).eval()
    batch = _batch_for(tiny_corpus, tuple(TINY_DIMS))
    out = model(batch.features, batch.speakers, batch.mask)
    expected = out.modality_logits["text"] + out.modality_logits["audio"] + 0.4 * out.modality_logits["visual"]
    torch.testing.assert_close(out.logits, expected)


def test_missing_modality_is_refused_with_its_name(tiny_corpus, tiny_config):
    model = ReDiFu(tiny_config)
    batch = _batch_for(tiny_corpus, ("text", "audio"))
    with pytest.raises(ValueError, match="'visual'"):
        model(batch.features, batch.speakers, batch.mask)


@pytest.mark.parametrize("key,value", [
    ("hidden_size", 15), ("num_heads", 5), ("dropout", 1.0), ("denoiser", "noisy"), ("graph", "full"),
    ("fusion", "sum"), ("window", -1), ("denoiser_heads", 3), ("fusion_layers", 0), ("graph_modalities", ("face",)),
    ("logit_weights", {"smell": 1.0}),
])
def test_invalid_options_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        make_tiny_config(**{key: value})


def test_config_requires_text_and_round_trips():
    with pytest.raises(ConfigError, match="text"):
        ReDiFuConfig(modality_dims={"audio": 3}, num_classes=2, num_speakers=1)
    config = make_tiny_config(denoiser="temporal", graph_modalities=("text",), logit_weights={"text": 3.0})
    assert ReDiFuConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="model.colour"):
        ReDiFuConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_graph_on_text_only(tiny_corpus):
    """The authors' recipe runs the graph on text alone; other streams skip it."""
    model = ReDiFu(_config(TINY_DIMS, graph_modalities=("text",))).eval()
    assert model.graph.num_modalities == 1 and not model.graph.cross_modal
    batch = _batch_for(tiny_corpus, tuple(TINY_DIMS))
    out = model(batch.features, batch.speakers, batch.mask, return_attention=True)
    assert torch.isfinite(out.logits).all()
    assert int(out.graph_attention.edge_type.max()) < 5  # text's own speaker relations only


CONFIG_FILES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_built_parameter_gets_a_gradient_under_each_shipped_config(tiny_corpus, path):
    """Plain DDP refuses parameters without a gradient: a config builds only what its loss reads."""
    assert CONFIG_FILES, "no shipped configs found"
    experiment = load_config(path)
    modalities = experiment.data.modalities or tuple(TINY_DIMS)
    config = experiment.model_config(modality_dims={m: TINY_DIMS[m] for m in modalities}, num_classes=6,
                                     num_speakers=2)
    torch.manual_seed(0)
    model = ReDiFu(config).train()
    batch = _batch_for(tiny_corpus, modalities)
    loss, _ = redifu_loss(model(batch.features, batch.speakers, batch.mask), batch.labels,
                          aux_weight=experiment.training.aux_loss_weight)
    loss.backward()
    names = [name for name, _ in model.named_parameters()]
    assert names
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{path.name}: no gradient for {missing[:5]}"


def test_logit_weights_build_no_fused_classifier_or_projection():
    model = ReDiFu(_config(TINY_DIMS, fusion="symmetric", logit_weights={"text": 1.0, "audio": 1.0}))
    assert model.classifier is None and model.fusion.concat.proj is None
    assert ReDiFu(_config(TINY_DIMS, fusion="symmetric")).fusion.concat.proj is not None


def test_constant_training_feature_gets_scale_one(tiny_config):
    model = ReDiFu(tiny_config)
    d = TINY_DIMS["audio"]
    std = torch.full((d,), 2.0)
    std[3] = 0.0
    model.set_feature_statistics({"audio": (torch.zeros(d), std)})
    assert model.encoders["audio"].feature_std[3] == 1.0
    assert model.encoders["audio"].feature_std[0] == 2.0


def test_no_positions_means_no_rotary_in_the_fusion():
    config = make_tiny_config(position_encoding="none")
    assert config.cross_rotary is False
    cross = list(ReDiFu(config).fusion.layers[0].cross.values())
    assert cross and all(block.rotary is None for block in cross)
    assert make_tiny_config().cross_rotary is True
    with pytest.raises(ConfigError, match="model.cross_rotary"):
        make_tiny_config(position_encoding="none", cross_rotary=True)


@pytest.mark.parametrize("denoiser,heads", [("dual", 4), ("temporal", 8)])
def test_odd_rotary_head_size_of_the_denoiser_is_a_config_error(denoiser, heads):
    # hidden 24: dual head size 24 / 4 / 2 = 3, temporal 24 / 8 = 3
    with pytest.raises(ConfigError, match="model.denoiser_heads"):
        make_tiny_config(hidden_size=24, num_heads=2, position_encoding="rotary", denoiser=denoiser,
                         denoiser_heads=heads)


def test_evaluation_refuses_speaker_ids_beyond_the_models_slots(tiny_corpus, tiny_config):
    from redifu.errors import DataError
    from redifu.training.evaluation import predict_split

    model = ReDiFu(tiny_config)  # 2 speaker slots
    dialogue = tiny_corpus.splits["test"][0]
    crowded = type(dialogue)(dialogue.dialogue_id, np.full_like(dialogue.speakers, 2), dialogue.labels,
                             dialogue.features)
    with pytest.raises(DataError, match=f"dialogue {dialogue.dialogue_id}: field 'speakers'"):
        predict_split(model, [crowded])
    assert len(predict_split(model, [dialogue]).labels) > 0
