"""The causal model (``model.causal``): no utterance sees a later one, through any stage."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import redifu.nn.kernels.attention as mea
from conftest import TINY_DATA_OVERRIDES, TINY_DIMS, TINY_MODEL_OVERRIDES, make_tiny_config
from redifu.config import load_config
from redifu.data.batching import DialogueDataset, collate_dialogues
from redifu.errors import ConfigError
from redifu.experiments.grid import load_grid
from redifu.features.context import future_context_problem
from redifu.model import ReDiFu
from redifu.training.run import train
from redifu.nn.attention import causal_attention_mask
from redifu.nn.relation_graph import build_relation_graph, graph_relation_names, num_graph_relations

COMPONENTS = list(itertools.product(["off", "dual", "temporal"], ["off", "modality", "modality+cross"],
                                    ["concat", "symmetric", "text_guided"]))


def _dialogue(n=12, *, speakers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(1, n, d, generator=g) for m, d in TINY_DIMS.items()}
    return features, torch.randint(0, speakers, (1, n), generator=g), torch.ones(1, n, dtype=torch.bool)


def _change_from(features, speakers, start, *, seed=1):
    g = torch.Generator().manual_seed(seed)
    changed = {m: f.clone() for m, f in features.items()}
    for f in changed.values():
        f[:, start:] = 10 * torch.randn(f[:, start:].shape, generator=g)
    later = speakers.clone()
    later[:, start:] = (later[:, start:] + 1) % 3
    return changed, later


def _logits(model, features, speakers, mask):
    with torch.no_grad():
        out = model(features, speakers, mask)
    return out.logits, out.modality_logits


@pytest.mark.parametrize("denoiser,graph,fusion", COMPONENTS)
@pytest.mark.parametrize("position_encoding,attention_window", [("sinusoidal", None), ("rotary", 3), ("none", None)])
def test_a_later_utterance_never_changes_an_earlier_prediction(denoiser, graph, fusion, position_encoding,
                                                               attention_window):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(num_speakers=3, denoiser=denoiser, graph=graph, fusion=fusion, cross_window=1,
                                    denoise_modalities=("text", "audio", "visual"), denoiser_layers=2,
                                    graph_layers=2, fusion_layers=2, position_encoding=position_encoding,
                                    causal=True, attention_window=attention_window)).eval()
    features, speakers, mask = _dialogue()
    logits, per_modality = _logits(model, features, speakers, mask)
    for start in (1, 5, 11):
        changed, later = _change_from(features, speakers, start)
        new_logits, new_per_modality = _logits(model, changed, later, mask)
        assert torch.equal(new_logits[:, :start], logits[:, :start])
        for m in per_modality:
            assert torch.equal(new_per_modality[m][:, :start], per_modality[m][:, :start])
        assert not torch.allclose(new_logits[:, start:], logits[:, start:])  # the changes did reach the model


@pytest.mark.parametrize("denoiser,graph,fusion", [("dual", "modality+cross", "text_guided"),
                                                   ("temporal", "modality", "symmetric"),
                                                   ("off", "modality+cross", "concat"),
                                                   ("dual", "off", "text_guided")])
def test_the_full_model_does_see_the_future(denoiser, graph, fusion):
    """The same check fails without ``causal``: each stage alone passes later utterances back."""
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(num_speakers=3, denoiser=denoiser, graph=graph, fusion=fusion,
                                    denoise_modalities=("text", "audio", "visual"))).eval()
    features, speakers, mask = _dialogue()
    logits, _ = _logits(model, features, speakers, mask)
    changed, later = _change_from(features, speakers, 5)
    new_logits, _ = _logits(model, changed, later, mask)
    assert not torch.allclose(new_logits[:, :5], logits[:, :5])


def test_causal_padding_does_not_change_real_utterances(tiny_corpus):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(causal=True, attention_window=4, cross_window=1)).eval()
    dataset = DialogueDataset(tiny_corpus.splits["train"][:5], tuple(TINY_DIMS))
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_dialogues(items)
    for m in batch.features:
        batch.features[m][~batch.mask] = 1e3 * torch.randn_like(batch.features[m][~batch.mask])
    with torch.no_grad():
        batched = model(batch.features, batch.speakers, batch.mask).logits
        for row, item in enumerate(items):
            alone = collate_dialogues([item])
            single = model(alone.features, alone.speakers, alone.mask).logits[0]
            torch.testing.assert_close(batched[row, :len(item.speakers)], single, atol=1e-5, rtol=1e-5)


def test_causal_model_trains_with_dropout(tiny_batch):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(causal=True, denoiser="temporal", fusion="symmetric")).train()
    out = model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask)
    (out.logits.sum() + sum(x.sum() for x in out.modality_logits.values())).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("changes,message", [
    (dict(recurrent="bigru"), "model.recurrent: a bidirectional GRU reads later utterances"),
    (dict(attention_window=3), "model.attention_window: limits how far back a causal model attends"),
    (dict(causal=True, attention_window=-1), "model.attention_window: must be >= 0"),
])
def test_causal_options_are_checked(changes, message):
    options = dict(changes)
    if "recurrent" in options:
        options["causal"] = True
    with pytest.raises(ConfigError, match=message):
        make_tiny_config(**options)


def test_causal_attention_mask_is_the_banded_past():
    mask = torch.tensor([[True, True, True, True, False]])
    allowed = causal_attention_mask(mask, window=1)[0].int()
    assert allowed.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]]
    assert causal_attention_mask(mask)[0, 3].tolist() == [True, True, True, True, False]


def test_causal_graph_has_past_and_self_edges_only():
    speakers = torch.tensor([[0, 1, 0, 1, 1, 0]])
    mask = torch.ones_like(speakers, dtype=torch.bool)
    edges = build_relation_graph(speakers, mask, num_modalities=2, window=2, cross_modal=True, cross_window=1,
                                 causal=True)
    source, target = edges.edge_index % 6  # utterance of each node
    assert (source <= target).all()
    assert edges.num_relations == num_graph_relations(num_modalities=2, cross_modal=True, causal=True) == 3 * 2 + 2
    names = graph_relation_names(num_modalities=2, cross_modal=True, causal=True, modality_names=("text", "audio"))
    assert names == ("text:self", "text:same_speaker_past", "text:other_speaker_past", "audio:self",
                     "audio:same_speaker_past", "audio:other_speaker_past", "text->audio", "audio->text")
    full = build_relation_graph(speakers, mask, num_modalities=2, window=2, cross_modal=True, cross_window=1)
    past = (full.edge_index[0] % 6) <= (full.edge_index[1] % 6)
    assert edges.edge_index.shape[1] == int(past.sum())  # every past/self edge of the full graph, no other
    # same typing of the past edges, named the same
    full_names = graph_relation_names(num_modalities=2, cross_modal=True, modality_names=("text", "audio"))
    assert [names[t] for t in edges.edge_type.tolist()] == [full_names[t] for t in full.edge_type[past].tolist()]


@pytest.mark.skipif(not mea.chunked_dropout_is_exact(), reason="this build's CPU Bernoulli kernel reseeds per call")
def test_chunked_dropout_attention_with_a_per_query_mask_equals_pytorch_math_path():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=g).requires_grad_() for _ in range(3))
    mask = causal_attention_mask(torch.tensor([[True] * 9, [True] * 6 + [False] * 3]), window=3)
    torch.manual_seed(5)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=0.4, scale=0.3)
    torch.manual_seed(5)
    out = mea.masked_attention(q, k, v, mask, dropout_p=0.4, scale=0.3, budget=20)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=g)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("live,base", [("meld-text-live", "meld-text"), ("emorynlp-text-live", "emorynlp-text"),
                                       ("default-live", "default"), ("synthetic-meld-live", "synthetic-meld")])
def test_shipped_live_configs_are_their_recipe_plus_causal(live, base):
    live_config, base_config = load_config(REPO / "configs" / f"{live}.yaml"), load_config(REPO / "configs" / f"{base}.yaml")
    assert live_config.data == base_config.data and live_config.training == base_config.training
    extra = {k: v for k, v in live_config.model.items() if base_config.model.get(k) != v}
    assert extra.pop("causal") is True and set(extra) <= {"attention_window", "recurrent"}
    assert extra.get("recurrent", "none") == "none"  # a recipe's bidirectional GRU reads later utterances
    assert set(base_config.model) - set(live_config.model) == set()


def test_the_real_text_grid_compares_causal_with_the_full_text_path():
    grid = load_grid(REPO / "grids" / "real-text.yaml")
    assert grid.baseline == "ReDiFu text path" and list(grid.seeds) == [1, 2, 3]
    assert (("meld-text-ft", "emorynlp-text-ft"), ("causal",)) in grid.ablation
    cells = [c for c in grid.plan() if c.variant in ("causal", grid.baseline) and c.dataset.endswith("-ft")]
    assert {(c.dataset, c.variant) for c in cells} == {(d, v) for d in ("meld-text-ft", "emorynlp-text-ft")
                                                       for v in ("causal", grid.baseline)}
    for cell in cells:
        config = load_config(grid.datasets[cell.dataset].config, grid.cell_overrides(cell))
        assert config.model.get("causal", False) is (cell.variant == "causal")
        assert config.training.patience == 5


def _corpus_with_text_context(tiny_corpus, future):
    extractor = {"name": "runs/encoders/meld-text", "settings": {"context": {"past": 2, "future": future}}}
    return dataclasses.replace(tiny_corpus, provenance={**tiny_corpus.provenance,
                                                         "extractors": {"text": extractor}})


def test_train_refuses_future_context_features_for_a_causal_model(tiny_corpus, tmp_path):
    config = load_config(None, [*TINY_DATA_OVERRIDES, *TINY_MODEL_OVERRIDES, "model.causal=true"])
    with pytest.raises(ConfigError, match=r"^model\.causal: the text features come from .*future=2.*future=0") as caught:
        train(config, tmp_path / "run", corpus=_corpus_with_text_context(tiny_corpus, 2))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_past_only_context_features_pass_the_causal_check(tiny_corpus):
    assert future_context_problem(_corpus_with_text_context(tiny_corpus, 0).provenance["extractors"]["text"]) is None
    assert future_context_problem(None) is None
    assert "future=1" in future_context_problem({"name": "x", "settings": {"context": {"future": 1}}})
