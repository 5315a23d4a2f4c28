"""model.recurrent=bigru, the DialogueRNN-family baseline: padding invariance, context, config,
checkpoints, activation checkpointing, and a fit through the normal train entry point."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_DIMS, TINY_SYNTHETIC, make_tiny_config
from redifu.checkpoint import load_checkpoint, save_checkpoint
from redifu.config import load_config
from redifu.data.batching import DialogueDataset, collate_dialogues
from redifu.errors import ConfigError
from redifu.model import ReDiFu, ReDiFuConfig
from redifu.nn.recurrent import DialogueGRU
from redifu.training.loss import redifu_loss

# The baseline row of grids/results.yaml: text alone, every context stage but the GRU off.
BASELINE = dict(modality_dims={"text": TINY_DIMS["text"]}, denoiser="off", graph="off", fusion="concat",
                position_encoding="none")
BASELINE_OVERRIDES = ["data.modalities=[text]", "model.recurrent=bigru", "model.denoiser=off", "model.graph=off",
                      "model.fusion=concat", "model.position_encoding=none"]


def _items(corpus, modalities, count):
    dataset = DialogueDataset(corpus.splits["train"][:count], modalities)
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("options", [BASELINE, {}], ids=["baseline", "full-model"])
def test_a_dialogue_alone_and_padded_in_a_batch_give_the_same_logits(tiny_corpus, options):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(recurrent="bigru", **options)).eval()
    items = _items(tiny_corpus, tuple(model.config.modalities), 5)
    batch = collate_dialogues(items)
    assert len(set(batch.mask.sum(-1).tolist())) > 1  # dialogues of different lengths
    for m in batch.features:  # garbage in the padding must not leak into real utterances
        batch.features[m][~batch.mask] = 1e3 * torch.randn_like(batch.features[m][~batch.mask])
    with torch.no_grad():
        batched = model(batch.features, batch.speakers, batch.mask).logits
        for row, item in enumerate(items):
            alone = collate_dialogues([item])
            single = model(alone.features, alone.speakers, alone.mask).logits[0]
            torch.testing.assert_close(batched[row, :len(item.speakers)], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("changed,read", [(0, -1), (-1, 0)], ids=["forward", "backward"])
def test_the_gru_carries_context_that_the_isolated_baseline_does_not(tiny_corpus, changed, read):
    """Changing one utterance moves another utterance's logits with bigru, in both directions;
    with recurrent=none and every context stage off, it does not."""
    batch = collate_dialogues(_items(tiny_corpus, ("text",), 1))
    perturbed = {"text": batch.features["text"].clone()}
    perturbed["text"][0, changed] += 5.0
    for recurrent, should_change in (("bigru", True), ("none", False)):
        torch.manual_seed(0)
        model = ReDiFu(make_tiny_config(recurrent=recurrent, **BASELINE)).eval()
        with torch.no_grad():
            before = model(batch.features, batch.speakers, batch.mask).logits[0, read]
            after = model(perturbed, batch.speakers, batch.mask).logits[0, read]
        assert (not torch.allclose(before, after, atol=1e-6)) == should_change, recurrent


def test_bad_value_is_a_one_line_error_naming_the_option():
    with pytest.raises(ConfigError) as error:
        make_tiny_config(recurrent="lstm")
    assert str(error.value) == "model.recurrent: must be 'none' or 'bigru', got 'lstm'"
    with pytest.raises(ConfigError, match=r"^model\.recurrent: must be 'none' or 'bigru', got 'gru'$"):
        load_config(None, ["model.recurrent=gru"])


def test_config_round_trip_and_an_old_config_without_the_key_loads(tmp_path):
    default = make_tiny_config()
    assert default.recurrent == "none"
    assert ReDiFuConfig.from_dict(default.to_dict()) == default
    bigru = make_tiny_config(recurrent="bigru")
    assert ReDiFuConfig.from_dict(json.loads(bigru.to_json())) == bigru
    old = default.to_dict()
    del old["recurrent"]
    assert ReDiFuConfig.from_dict(old) == default
    assert load_config(None, ["model.recurrent=bigru"]).model["recurrent"] == "bigru"
    assert load_config(None, ["model.recurrent=none"]).model["recurrent"] == "none"  # a string, not YAML null

    # recurrent=none builds nothing: the same parameters as before the option existed, so a
    # checkpoint whose config.json predates it loads strictly.
    model = ReDiFu(default)
    assert not any("recurrent" in name for name in model.state_dict())
    directory = save_checkpoint(tmp_path / "ckpt", model, tuple(f"c{i}" for i in range(6)))
    config_file = directory / "config.json"
    config_file.write_text(json.dumps(old))
    loaded = load_checkpoint(directory).model
    assert loaded.config == default
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_one_gru_per_modality_and_parameters_finite_after_init_and_reset():
    model = ReDiFu(make_tiny_config(recurrent="bigru"))
    assert set(model.recurrent) == set(TINY_DIMS)
    gru = model.recurrent["text"].gru
    assert gru.bidirectional and gru.num_layers == 1 and gru.hidden_size == 8  # 2 x 8 = hidden_size 16
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dialogue_gru_output_shape_zero_padding_and_refusals():
    layer = DialogueGRU(dim=6, dropout=0.0)
    x = torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3, [False] * 5])  # a row of padding only
    out = layer(x, mask)
    assert out.shape == (3, 5, 6)
    assert torch.all(out[~mask] == 0) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="padding at its end"):
        layer(x, torch.tensor([[True, False, True, True, True]] * 3))
    with pytest.raises(ValueError, match="even dim"):
        DialogueGRU(dim=5)


def test_activation_checkpointing_gives_the_same_training_step_with_the_gru(tiny_batch):
    """The GRU is not checkpointed itself; the layers around it still recompute the same step."""
    config = make_tiny_config(recurrent="bigru", dropout=0.5)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = ReDiFu(config, activation_checkpointing=checkpointing).train()
        torch.manual_seed(1)
        output = model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask)
        loss, _ = redifu_loss(output, tiny_batch.labels, aux_weight=0.3)
        loss.backward()
        results.append((output.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits, grads), (checkpointed_logits, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_logits, logits, rtol=1e-6, atol=1e-6)
    assert any(n.startswith("recurrent.") for n in grads)
    for name, grad in grads.items():
        assert grad is not None, name
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compiled_training_step_equals_eager_with_the_gru(tiny_corpus):
    """torch.compile (training.compile) runs through the packed GRU (a graph break there) and
    gives the eager logits and gradients within float tolerance."""
    batch = collate_dialogues(_items(tiny_corpus, ("text",), 4))
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(recurrent="bigru", dropout=0.0, **BASELINE)).train()
    results = []
    for module in (model, torch.compile(model)):
        model.zero_grad()
        output = module(batch.features, batch.speakers, batch.mask)
        loss, _ = redifu_loss(output, batch.labels, aux_weight=0.3)
        loss.backward()
        results.append((output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (logits, grads), (compiled_logits, compiled_grads) = results
    torch.testing.assert_close(compiled_logits, logits, rtol=1e-4, atol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.integration
def test_the_baseline_trains_through_the_harness_and_predicts_from_its_checkpoint(tmp_path):
    from redifu.data.loading import load_corpus
    from redifu.predict import Predictor
    from redifu.training.evaluation import evaluate_split
    from redifu.training.run import train

    tiny = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()]
    config = load_config(None, [*tiny, *BASELINE_OVERRIDES, "model.hidden_size=16", "model.num_heads=2",
                                "training.max_epochs=2", "training.batch_size=4", "training.progress_bar=false",
                                "training.threads=1", "training.logger=none", "training.lr=3e-3"])
    metrics = train(config, tmp_path / "run")
    assert len(metrics["history"]) == 2

    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert checkpoint.model.config.recurrent == "bigru" and checkpoint.model.config.modalities == ("text",)
    test = load_corpus(config.data).splits["test"]
    again = evaluate_split(checkpoint.model, test, checkpoint.classes, batch_size=config.training.eval_batch_size)
    assert again["weighted_f1"] == metrics["test"]["weighted_f1"]

    predictor = Predictor.from_pretrained(tmp_path / "run" / "checkpoint", device="cpu", batch_size=3)
    dialogues = [{"dialogue_id": f"d{d}", "utterances": [
        {"utterance": i, "speaker": "AB"[i % 2], "text": torch.randn(TINY_DIMS["text"]).tolist()}
        for i in range(length)]} for d, length in enumerate((5, 2, 7))]
    together = list(predictor.predict_many(dialogues))
    assert [len(d) for d in together] == [5, 2, 7]
    for dialogue, batched in zip(dialogues, together, strict=True):
        alone = predictor.predict(dialogue)
        assert [p.label for p in alone] == [p.label for p in batched]
        for a, b in zip(alone, batched, strict=True):
            assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
            for label, probability in a.probabilities.items():
                assert b.probabilities[label] == pytest.approx(probability, abs=1e-5)
