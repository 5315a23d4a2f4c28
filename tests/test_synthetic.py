"""Tests for the synthetic dialogue generator (redifu.data.synthetic)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from redifu.data.dialogue import MODALITIES, SPLITS, DialogueCorpus, label_counts
from redifu.data.synthetic import (
    PRESETS,
    SyntheticSpec,
    make_synthetic_corpus,
    make_synthetic_corpus_with_truth,
    speaker_context_mean,
)

# Small corpora with the real feature sizes: a few dialogues per split keep every test fast.
SMALL = {"train_dialogues": 6, "dev_dialogues": 2, "test_dialogues": 3}


def _all_arrays(corpus: DialogueCorpus):
    for split in SPLITS:
        for dialogue in corpus.splits[split]:
            yield dialogue.speakers
            yield dialogue.labels
            for modality in corpus.metadata.modalities:
                yield dialogue.features[modality]


def _labels(dialogues) -> np.ndarray:
    return np.concatenate([d.labels for d in dialogues])


@pytest.mark.parametrize("preset", ["iemocap", "meld"])
def test_same_seed_is_bit_identical_and_other_seed_differs(preset):
    first = make_synthetic_corpus(preset, seed=7, **SMALL)
    second = make_synthetic_corpus(preset, seed=7, **SMALL)
    for a, b in zip(_all_arrays(first), _all_arrays(second), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # BLAS threading must not change a single bit
        single_thread = make_synthetic_corpus(preset, seed=7, **SMALL)
    for a, b in zip(_all_arrays(first), _all_arrays(single_thread), strict=True):
        assert a.tobytes() == b.tobytes()

    other = make_synthetic_corpus(preset, seed=8, **SMALL)
    text = lambda c: np.concatenate([d.features["text"] for d in c.splits["train"]])  # noqa: E731
    a, b = text(first), text(other)
    assert a.shape != b.shape or not np.array_equal(a, b)


@pytest.mark.parametrize("preset", ["iemocap", "meld"])
def test_shapes_dtypes_and_metadata(preset):
    spec = PRESETS[preset]
    corpus = make_synthetic_corpus(preset, seed=1, **SMALL)
    corpus.validate()
    meta = corpus.metadata
    assert meta.classes == spec.class_names
    assert meta.num_speakers == spec.num_speakers
    assert dict(meta.modality_dims) == dict(spec.modality_dims)
    assert "synthetic" in meta.description.lower()
    assert repr(preset) in meta.description and "seed 1" in meta.description
    assert meta.name == f"synthetic-{preset}"
    assert set(corpus.splits) == set(SPLITS)
    for split in SPLITS:
        assert len(corpus.splits[split]) == SMALL[f"{split}_dialogues"]
        for index, dialogue in enumerate(corpus.splits[split]):
            n = len(dialogue)
            assert dialogue.dialogue_id == f"{split}_{index:04d}"
            assert re.fullmatch(r"(train|dev|test)_\d{4}", dialogue.dialogue_id)
            assert spec.length_range[0] <= n <= spec.length_range[1]
            assert dialogue.speakers.dtype == np.int64 and dialogue.speakers.shape == (n,)
            assert dialogue.labels.dtype == np.int64 and dialogue.labels.shape == (n,)
            assert dialogue.speakers.min() >= 0 and dialogue.speakers.max() < spec.num_speakers
            assert dialogue.labels.min() >= 0 and dialogue.labels.max() < len(spec.class_names)
            for modality, dim in meta.modality_dims.items():
                array = dialogue.features[modality]
                assert array.dtype == np.float32 and array.shape == (n, dim)


def test_preset_class_orders():
    iemocap = ("happy", "sad", "neutral", "angry", "excited", "frustrated")
    meld = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
    assert PRESETS["iemocap"].class_names == iemocap
    assert PRESETS["meld"].class_names == meld
    assert dict(PRESETS["iemocap"].modality_dims) == {"text": 1024, "audio": 1582, "visual": 342}
    assert dict(PRESETS["meld"].modality_dims) == {"text": 1024, "audio": 300, "visual": 342}


@pytest.mark.parametrize("modalities", [("text",), ("text", "audio"), ("visual", "text"), MODALITIES])
def test_modality_subsets_keep_only_requested_and_leave_text_unchanged(modalities):
    full = make_synthetic_corpus("meld", seed=2, **SMALL)
    subset = make_synthetic_corpus("meld", seed=2, modalities=modalities, **SMALL)
    subset.validate()
    expected = tuple(m for m in MODALITIES if m in modalities)  # canonical order
    assert subset.metadata.modalities == expected
    for d_full, d_sub in zip(full.splits["train"], subset.splits["train"], strict=True):
        assert tuple(d_sub.features) == expected
        for modality in expected:
            np.testing.assert_array_equal(d_sub.features[modality], d_full.features[modality])
        np.testing.assert_array_equal(d_sub.labels, d_full.labels)


@pytest.mark.parametrize("modalities", [("audio", "visual"), ("text", "depth")])
def test_bad_modalities_raise(modalities):
    with pytest.raises(ValueError, match="modalit"):
        make_synthetic_corpus("iemocap", modalities=modalities, **SMALL)


def test_unknown_override_and_preset_raise_naming_them():
    with pytest.raises(ValueError, match="train_dialogs"):
        make_synthetic_corpus("iemocap", train_dialogs=3)
    with pytest.raises(ValueError, match="iemocap4"):
        make_synthetic_corpus("iemocap4")


@pytest.mark.parametrize(
    "field, value",
    [
        ("persistence", 1.2),
        ("class_prior", (0.5, 0.5)),
        ("speakers_per_dialogue", (2, 12)),
        ("mean_length", 500.0),
        ("burst_modalities", ("text",)),
        ("modality_dims", {"text": 8}),
    ],
)
def test_invalid_spec_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        make_synthetic_corpus("iemocap", **SMALL, **{field: value})


def test_persistence_plus_contagion_must_not_exceed_one():
    with pytest.raises(ValueError, match="persistence \\+ contagion"):
        SyntheticSpec(persistence=0.7, contagion=0.4)


def test_overrides_and_custom_spec():
    spec = SyntheticSpec(name="tiny", train_dialogues=2, dev_dialogues=1, test_dialogues=1,
                         modality_dims={"text": 16, "audio": 8, "visual": 4}, latent_dim=4)
    corpus = make_synthetic_corpus(spec, seed=0, length_range=(3, 5), mean_length=4.0)
    assert corpus.metadata.name == "synthetic-tiny"
    assert "length_range=(3, 5)" in corpus.metadata.description
    assert all(3 <= len(d) <= 5 for split in SPLITS for d in corpus.splits[split])
    assert corpus.splits["train"][0].features["audio"].shape[1] == 8


def test_split_size_override_leaves_other_splits_unchanged():
    base = make_synthetic_corpus("iemocap", seed=4, **SMALL)
    more = make_synthetic_corpus("iemocap", seed=4, **{**SMALL, "train_dialogues": 9})
    assert len(more.splits["train"]) == 9
    for split in ("dev", "test"):
        for a, b in zip(base.splits[split], more.splits[split], strict=True):
            np.testing.assert_array_equal(a.features["audio"], b.features["audio"])


@pytest.mark.parametrize(
    "preset, mean_length, tolerance",
    [("iemocap", 48.0, 5.0), ("meld", 9.6, 0.8)],
)
def test_full_presets_follow_spec_sizes_lengths_and_prior(preset, mean_length, tolerance):
    spec = PRESETS[preset]
    corpus = make_synthetic_corpus(preset, seed=0, modalities=("text",))
    for split in SPLITS:
        assert len(corpus.splits[split]) == spec.num_dialogues(split)
    lengths = [len(d) for split in SPLITS for d in corpus.splits[split]]
    assert abs(np.mean(lengths) - mean_length) < tolerance
    assert min(lengths) >= spec.length_range[0] and max(lengths) <= spec.length_range[1]
    everything = [d for split in SPLITS for d in corpus.splits[split]]
    counts = label_counts(everything, len(spec.class_names))
    assert (counts > 0).all()
    np.testing.assert_allclose(counts / counts.sum(), spec.class_prior, atol=0.05)


def test_meld_has_multi_party_dialogues():
    corpus = make_synthetic_corpus("meld", seed=0, modalities=("text",))
    participants = np.array([len(np.unique(d.speakers)) for d in corpus.splits["train"]])
    assert participants.max() >= 5
    assert np.mean((participants >= 2) & (participants <= 4)) > 0.8


def _same_speaker_agreement(dialogues) -> float:
    agree, total = 0, 0
    for dialogue in dialogues:
        last: dict[int, int] = {}
        for speaker, label in zip(dialogue.speakers.tolist(), dialogue.labels.tolist()):
            if speaker in last:
                agree += last[speaker] == label
                total += 1
            last[speaker] = label
    return agree / total


@pytest.mark.parametrize("preset", ["iemocap", "meld"])
def test_emotions_persist_per_speaker(preset):
    spec = PRESETS[preset]
    chance = float(np.sum(np.square(spec.class_prior)))
    corpus = make_synthetic_corpus(preset, seed=0, modalities=("text",), dev_dialogues=0,
                                   test_dialogues=0)
    assert _same_speaker_agreement(corpus.splits["train"]) > chance + 0.3

    memoryless = make_synthetic_corpus(preset, seed=0, modalities=("text",), dev_dialogues=0,
                                       test_dialogues=0, persistence=0.0, contagion=0.0)
    assert abs(_same_speaker_agreement(memoryless.splits["train"]) - chance) < 0.05


def test_contagion_spreads_emotion_between_speakers():
    kwargs = dict(seed=0, modalities=("text",), dev_dialogues=0, test_dialogues=0, persistence=0.0)
    rates = []
    for contagion in (0.0, 0.6):
        corpus = make_synthetic_corpus("iemocap", contagion=contagion, **kwargs)
        hits = total = 0
        for d in corpus.splits["train"]:
            switch = d.speakers[1:] != d.speakers[:-1]
            hits += int((d.labels[1:] == d.labels[:-1])[switch].sum())
            total += int(switch.sum())
        rates.append(hits / total)
    assert rates[1] > rates[0] + 0.3


def test_noise_bursts_make_outlier_rows_in_audio_and_visual_only():
    corpus, truth = make_synthetic_corpus_with_truth("iemocap", seed=0, train_dialogues=20,
                                                     dev_dialogues=0, test_dialogues=0)
    dialogues, truths = corpus.splits["train"], truth["train"]
    for modality in ("audio", "visual"):
        norms = np.concatenate([np.linalg.norm(d.features[modality], axis=1) for d in dialogues])
        hit = np.concatenate([t.bursts[modality] for t in truths])
        assert 0.1 < hit.mean() < 0.4
        typical = np.median(norms[~hit])
        assert np.median(norms[hit]) > 2.5 * typical
        assert (norms > 2.5 * typical).mean() > 0.1
        assert np.quantile(norms[~hit], 0.99) < 1.5 * typical
        # Runs: consecutive hit utterances, beyond what independent hits would give.
        pairs = np.concatenate([t.bursts[modality][1:] & t.bursts[modality][:-1] for t in truths])
        assert pairs.mean() > 1.5 * hit.mean() ** 2
    text = np.concatenate([np.linalg.norm(d.features["text"], axis=1) for d in dialogues])
    assert text.max() < 1.5 * np.median(text)

    clean = make_synthetic_corpus("iemocap", seed=0, train_dialogues=20, dev_dialogues=0,
                                  test_dialogues=0, burst_modalities=())
    norms = np.concatenate(
        [np.linalg.norm(d.features["audio"], axis=1) for d in clean.splits["train"]]
    )
    assert norms.max() < 1.5 * np.median(norms)
    # Disabling bursts changes only the burst rows.
    hit = truth["train"][0].bursts["audio"]
    np.testing.assert_array_equal(clean.splits["train"][0].features["audio"][~hit],
                                  dialogues[0].features["audio"][~hit])


def test_speaker_context_mean_matches_hand_computation():
    speakers = np.array([0, 1, 0, 0, 1, 0])
    features = np.arange(6, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], dtype=np.float32)
    context = speaker_context_mean(speakers, features, window=2)
    # utterance 0: same speaker within +-2 -> index 2; utterance 1: none -> zeros;
    # utterance 3: indices 2 and 5; utterance 4: none within +-2 (index 1 is 3 away).
    np.testing.assert_allclose(context[0], features[2])
    np.testing.assert_allclose(context[1], 0.0)
    np.testing.assert_allclose(context[3], (features[2] + features[5]) / 2)
    np.testing.assert_allclose(context[4], 0.0)
    assert context.dtype == np.float32 and context.shape == features.shape


def _design(dialogues, *, context: bool) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for d in dialogues:
        blocks = [d.features["text"]]
        if context:
            blocks.append(speaker_context_mean(d.speakers, d.features["text"], window=5))
        rows.append(np.concatenate(blocks, axis=1))
    return np.concatenate(rows), _labels(dialogues)


def test_same_speaker_context_beats_context_free_text_classifier():
    """The property the relation graph relies on: neighbours carry label evidence."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    # Reduced iemocap: fewer dialogues and a smaller text feature size, same generative story.
    corpus = make_synthetic_corpus("iemocap", seed=0, modalities=("text",), train_dialogues=60,
                                   dev_dialogues=0, test_dialogues=30,
                                   modality_dims={"text": 128, "audio": 16, "visual": 16})
    scores = {}
    for context in (False, True):
        x_train, y_train = _design(corpus.splits["train"], context=context)
        x_test, y_test = _design(corpus.splits["test"], context=context)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))
        with threadpool_limits(limits=1):  # small fits: threads only add overhead
            model.fit(x_train, y_train)
        scores[context] = f1_score(y_test, model.predict(x_test), average="weighted")
    assert 0.3 < scores[False] < 0.75  # informative but well below ceiling
    assert scores[True] > scores[False] + 0.04
