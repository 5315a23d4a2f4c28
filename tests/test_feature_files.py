"""Reading the published ERC feature pickles: every layout, detection, options, bad inputs."""

from __future__ import annotations

import hashlib
import logging
import pickle

import numpy as np
import pytest

from feature_fixtures import LAYOUT_NAMES, RECIPES, build_fixture, dump_fixture, write_fixture
from redifu.data.dialogue import SPLITS, DataError
from redifu.data.feature_files import detect_layout, read_feature_file
from redifu.data.safe_pickle import UnsafePickleError, load_pickle_safely

PUBLISHED_CLASSES = {  # the label orders of the authors' loaders, written out (not read from redifu)
    "iemocap": ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
    "meld": ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
}
SMALL = dict(num_train=6, num_test=3, num_dev=2, lengths=(2, 6))


@pytest.fixture(scope="session")
def written(tmp_path_factory):
    """One realistic fixture per layout (a few dozen dialogues, real feature sizes)."""
    directory = tmp_path_factory.mktemp("feature_files")
    return {layout: write_fixture(layout, directory, seed=index) for index, layout in enumerate(LAYOUT_NAMES)}


def _assert_one_line_error(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def _bad(layout, tmp_path, corrupt, **read_options):
    """Write a small ``layout`` fixture altered by ``corrupt(fixture)``; reading it must fail."""
    fixture = build_fixture(layout, seed=3, **SMALL)
    corrupt(fixture)
    path = dump_fixture(fixture, tmp_path / f"bad-{layout}.pkl")
    with pytest.raises(DataError) as excinfo:
        read_feature_file(path, **read_options)
    return fixture, path, excinfo


def _compare(corpus, fixture, text_layer=0):
    for split in SPLITS:
        for dialogue in corpus.splits[split]:
            expected = fixture.dialogues[dialogue.dialogue_id]
            assert dialogue.speakers.dtype == np.int64 and dialogue.labels.dtype == np.int64
            np.testing.assert_array_equal(dialogue.speakers, expected.speakers)
            np.testing.assert_array_equal(dialogue.labels, expected.labels)
            assert all(array.dtype == np.float32 for array in dialogue.features.values())
            np.testing.assert_array_equal(dialogue.features["text"],
                                          expected.text_layers[text_layer].astype(np.float32))
            for modality in ("audio", "visual"):
                reference = getattr(expected, modality)
                if reference is None:
                    assert modality not in dialogue.features
                else:
                    np.testing.assert_array_equal(dialogue.features[modality], reference.astype(np.float32))


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_layout_round_trips(written, layout):
    fixture = written[layout]
    corpus = read_feature_file(fixture.path)

    _compare(corpus, fixture)
    ids = {split: [d.dialogue_id for d in corpus.splits[split]] for split in SPLITS}
    assert all(isinstance(i, str) for split in SPLITS for i in ids[split])
    # List order is kept; sets (the Python-2 files) come out sorted.
    test_order = sorted(fixture.test_ids) if RECIPES[layout]["split_container"] is set else fixture.test_ids
    assert ids["test"] == [str(i) for i in test_order]
    assert sorted(ids["train"] + ids["dev"]) == sorted(
        str(i) for i in fixture.train_ids + (fixture.dev_ids or []))

    metadata = corpus.metadata
    recipe = RECIPES[layout]
    assert metadata.name == recipe["dataset"]
    assert metadata.classes == PUBLISHED_CLASSES[recipe["dataset"]]
    assert metadata.num_speakers == fixture.num_speakers
    expected_dims = {"text": recipe["text"][0][1]}
    expected_dims.update({m: recipe[m] for m in ("audio", "visual") if recipe[m]})
    assert dict(metadata.modality_dims) == expected_dims
    sha = hashlib.sha256(fixture.path.read_bytes()).hexdigest()
    for fragment in (str(fixture.path), sha, f"layout {layout}", "text feature", "dev split"):
        assert fragment in metadata.description
    corpus.validate(str(fixture.path))


def test_meld_ids_become_strings_and_speakers_argmax(written):
    fixture = written["dialoguernn-meld"]
    assert all(isinstance(i, int) for i in fixture.train_ids)
    corpus = read_feature_file(fixture.path)
    assert corpus.splits["test"][0].dialogue_id == str(fixture.test_ids[0])
    speakers = np.concatenate([d.speakers for d in corpus.splits["train"]])
    assert speakers.max() < 9 and len(np.unique(speakers)) > 2


def test_features_stored_as_one_matrix_per_dialogue(tmp_path):
    fixture = write_fixture("sdt-iemocap", tmp_path, seed=5, rows_as_matrix=True, **SMALL)
    _compare(read_feature_file(fixture.path), fixture)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_detect_layout(written, layout):
    path = written[layout].path
    assert detect_layout(load_pickle_safely(path), source=str(path)) == layout


@pytest.mark.parametrize("layout", ["sdt-iemocap", "dialoguernn-iemocap", "cosmic-meld"])
def test_explicit_layout_matches_detection(written, layout):
    path = written[layout].path
    explicit, detected = read_feature_file(path, layout=layout), read_feature_file(path)
    for split in SPLITS:
        assert [d.dialogue_id for d in explicit.splits[split]] == [d.dialogue_id for d in detected.splits[split]]
    assert explicit.metadata == detected.metadata


def test_explicit_layout_settles_an_ambiguous_file(tmp_path):
    # A 9-field IEMOCAP file with 100-d audio and 342-d visual is one feature size away from both
    # mmgcn-iemocap and dialoguernn-iemocap: detection refuses to guess, an explicit layout reads it.
    fixture = build_fixture("mmgcn-iemocap", seed=1, **SMALL)
    audio = fixture.field("videoAudio")
    for key in audio:
        audio[key] = [row[:100] for row in audio[key]]
    path = dump_fixture(fixture, tmp_path / "IEMOCAP_features.pkl")
    with pytest.raises(DataError) as excinfo:
        read_feature_file(path)
    _assert_one_line_error(excinfo, path, "ambiguous", "mmgcn-iemocap", "dialoguernn-iemocap", "layout=")
    corpus = read_feature_file(path, layout="mmgcn-iemocap")
    assert corpus.metadata.modality_dims["audio"] == 100


def test_wrong_explicit_layout_length(written):
    path = written["sdt-iemocap"].path
    with pytest.raises(DataError) as excinfo:
        read_feature_file(path, layout="mmgcn-iemocap")
    _assert_one_line_error(excinfo, path, "layout 'mmgcn-iemocap' expects a tuple of 9 fields", "got 12",
                           "looks like layout 'sdt-iemocap'")


def test_wrong_explicit_layout_same_length(written):
    path = written["dialoguernn-meld"].path
    with pytest.raises(DataError) as excinfo:
        read_feature_file(path, layout="mmgcn-iemocap")
    _assert_one_line_error(excinfo, path, "does not match layout 'mmgcn-iemocap'", "field 'videoSpeakers'",
                           "looks like layout 'dialoguernn-meld'")


def test_unknown_layout_names_what_was_seen(tmp_path):
    path = tmp_path / "other.pkl"
    with open(path, "wb") as handle:
        pickle.dump(({"d1": ["M"]}, {"d1": [0]}, ["d1"]), handle, protocol=4)
    with pytest.raises(DataError) as excinfo:
        read_feature_file(path)
    _assert_one_line_error(excinfo, path, "unknown feature-file layout", "tuple of 3 fields",
                           "dict of str lists", "dict of int lists", "list of 1 ids")


def test_not_a_tuple(tmp_path):
    path = tmp_path / "dict.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"videoIDs": {}}, handle, protocol=4)
    with pytest.raises(DataError) as excinfo:
        read_feature_file(path)
    _assert_one_line_error(excinfo, path, "expected a tuple of fields", "got dict")


def test_unsafe_file_is_refused_by_the_reader(tmp_path):
    path = tmp_path / "iemocap_multimodal_features.pkl"
    path.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    with pytest.raises(UnsafePickleError) as excinfo:
        read_feature_file(path)
    _assert_one_line_error(excinfo, path, "refused to load 'posix.system'")


@pytest.mark.parametrize("layout", ["sdt-iemocap", "cosmic-meld"])
@pytest.mark.parametrize("choice", ["roberta1", "roberta2", "roberta3", "roberta4", "mean"])
def test_text_feature_choices(written, layout, choice):
    fixture = written[layout]
    corpus = read_feature_file(fixture.path, text_feature=choice)
    for dialogue in corpus.splits["train"][:5] + corpus.splits["test"][:2]:
        layers = fixture.dialogues[dialogue.dialogue_id].text_layers
        if choice == "mean":
            expected = np.mean(np.stack(layers).astype(np.float64), axis=0)
            np.testing.assert_allclose(dialogue.features["text"], expected, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(dialogue.features["text"], layers[int(choice[-1]) - 1])
    assert f"text feature {choice}" in corpus.metadata.description


def test_text_feature_needs_roberta_layers(written):
    path = written["mmgcn-meld"].path
    with pytest.raises(ValueError, match="text_feature.*single text feature 'videoText'"):
        read_feature_file(path, text_feature="mean")


@pytest.mark.parametrize(
    "options, option",
    [({"layout": "sdt"}, "layout"), ({"text_feature": "roberta5"}, "text_feature"),
     ({"dev_fraction": 0.0}, "dev_fraction"), ({"dev_fraction": 1.0}, "dev_fraction")],
)
def test_invalid_options(written, options, option):
    with pytest.raises(ValueError, match=f"^{option}:"):
        read_feature_file(written["sdt-meld"].path, **options)


def _dev_ids(corpus):
    return [d.dialogue_id for d in corpus.splits["dev"]]


def test_dev_split_deterministic_and_disjoint(written, tmp_path):
    fixture = written["mmgcn-iemocap"]  # trainVid is a set in this layout
    first = read_feature_file(fixture.path, dev_seed=7)
    again = read_feature_file(fixture.path, dev_seed=7)
    other = read_feature_file(fixture.path, dev_seed=8, dev_fraction=0.25)

    assert _dev_ids(first) == _dev_ids(again)
    assert len(_dev_ids(first)) == round(0.1 * len(fixture.train_ids))
    assert len(_dev_ids(other)) == round(0.25 * len(fixture.train_ids))
    for corpus in (first, other):
        ids = {split: {d.dialogue_id for d in corpus.splits[split]} for split in SPLITS}
        assert not ids["dev"] & ids["train"] and not ids["dev"] & ids["test"]
        assert not ids["train"] & ids["test"]
        assert ids["train"] | ids["dev"] == {str(i) for i in fixture.train_ids}
        assert ids["test"] == {str(i) for i in fixture.test_ids}
    assert "dev_fraction=0.1" in first.metadata.description
    assert "default_rng(7)" in first.metadata.description

    # The choice is made over the sorted ids, so the file's list order does not matter.
    shuffled = build_fixture("sdt-iemocap", seed=2, **SMALL)
    path = dump_fixture(shuffled, tmp_path / "forward.pkl")
    forward = read_feature_file(path, dev_seed=3, dev_fraction=0.3)
    shuffled.fields[shuffled.index("trainVid")].reverse()
    path = dump_fixture(shuffled, tmp_path / "reversed.pkl")
    backward = read_feature_file(path, dev_seed=3, dev_fraction=0.3)
    assert _dev_ids(forward) == _dev_ids(backward)


@pytest.mark.parametrize("layout", ["cosmic-iemocap", "cosmic-meld"])
def test_cosmic_valid_ids_are_the_dev_split(written, layout):
    fixture = written[layout]
    corpus = read_feature_file(fixture.path, dev_fraction=0.5)
    assert _dev_ids(corpus) == [str(i) for i in fixture.dev_ids]
    assert [d.dialogue_id for d in corpus.splits["train"]] == [str(i) for i in fixture.train_ids]
    assert "validIds" in corpus.metadata.description


# ---------------------------------------------------------------------------------------------
# Bad inputs: one-line DataError naming the file, the dialogue and the field.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, field", [
    ("mmgcn-iemocap", "videoAudio"), ("sdt-meld", "videoSpeakers"), ("cosmic-iemocap", "speakers"),
    ("cosmic-meld", "roberta2"),
])
def test_unequal_field_lengths(tmp_path, layout, field):
    def corrupt(fixture):
        fixture.field(field)[fixture.train_ids[2]].pop()

    options = {"text_feature": "roberta2"} if layout == "cosmic-meld" else {}
    fixture, path, excinfo = _bad(layout, tmp_path, corrupt, **options)
    labels = "emotion_labels" if layout == "cosmic-meld" else "labels" if layout.startswith("cosmic") else "videoLabels"
    n = len(fixture.dialogues[str(fixture.train_ids[2])].labels)
    _assert_one_line_error(excinfo, path, f"dialogue {fixture.train_ids[2]}", f"field '{field}'",
                           f"{n - 1} utterances, but '{labels}' has {n}")


def test_ragged_feature_rows(tmp_path):
    def corrupt(fixture):
        fixture.field("videoText")[fixture.train_ids[0]][1] = np.zeros(5, dtype=np.float32)

    fixture, path, excinfo = _bad("sdt-iemocap", tmp_path, corrupt)
    _assert_one_line_error(excinfo, path, f"dialogue {fixture.train_ids[0]}", "field 'videoText'",
                           "utterance 1 has 5 values, utterance 0 has 1024 values")


def test_feature_size_changes_between_dialogues(tmp_path):
    def corrupt(fixture):
        visual = fixture.field("videoVisual")
        dialogue = fixture.test_ids[0]
        visual[dialogue] = [row[:341] for row in visual[dialogue]]

    fixture, path, excinfo = _bad("sdt-meld", tmp_path, corrupt)
    _assert_one_line_error(excinfo, path, f"dialogue {fixture.test_ids[0]}", "field 'videoVisual'",
                           "size 341", "earlier dialogues have size 342")


@pytest.mark.parametrize("layout, field, value", [
    ("cosmic-iemocap", "labels", 6), ("sdt-meld", "videoLabels", 7), ("dialoguernn-meld", "videoLabels", -1),
])
def test_labels_out_of_range(tmp_path, layout, field, value):
    def corrupt(fixture):
        fixture.field(field)[fixture.train_ids[2]][-1] = value

    fixture, path, excinfo = _bad(layout, tmp_path, corrupt)
    dialogue = fixture.train_ids[2]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", f"field '{field}'", f"label {value}",
                           "out of range")


@pytest.mark.parametrize("layout, field, bad", [
    ("sdt-iemocap", "videoAudio", np.nan), ("mmgcn-iemocap", "videoText", np.inf),
    ("cosmic-meld", "roberta3", -np.inf),
])
def test_nan_or_inf(tmp_path, layout, field, bad):
    def corrupt(fixture):
        fixture.field(field)[fixture.test_ids[1]][1][4] = bad

    options = {"text_feature": "mean"} if layout == "cosmic-meld" else {}
    fixture, path, excinfo = _bad(layout, tmp_path, corrupt, **options)
    dialogue = fixture.test_ids[1]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", f"field '{field}'", "NaN or Inf at utterance 1")


def test_empty_dialogue(tmp_path):
    def corrupt(fixture):
        dialogue = fixture.train_ids[0]
        for name in fixture.names:
            value = fixture.field(name)
            if isinstance(value, dict):
                value[dialogue] = []

    fixture, path, excinfo = _bad("cosmic-iemocap", tmp_path, corrupt)
    dialogue = fixture.train_ids[0]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", "field 'labels'", "empty")


def test_split_id_missing_from_data(tmp_path):
    def corrupt(fixture):
        fixture.field("testVid").add("Ses05F_ghost01")

    fixture, path, excinfo = _bad("dialoguernn-iemocap", tmp_path, corrupt)
    _assert_one_line_error(excinfo, path, "dialogue Ses05F_ghost01", "field 'videoLabels'", "missing",
                           "listed in 'testVid'")


def test_dialogue_missing_from_one_feature_field(tmp_path):
    def corrupt(fixture):
        del fixture.field("videoVisual")[fixture.train_ids[3]]

    fixture, path, excinfo = _bad("sdt-iemocap", tmp_path, corrupt)
    dialogue = fixture.train_ids[3]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", "field 'videoVisual'", "missing")


def test_all_zero_one_hot_speaker_row(tmp_path):
    def corrupt(fixture):
        fixture.field("videoSpeakers")[fixture.train_ids[0]][1] = [0] * 9

    fixture, path, excinfo = _bad("mmgcn-meld", tmp_path, corrupt)
    dialogue = fixture.train_ids[0]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", "field 'videoSpeakers'", "utterance 1",
                           "all-zero")


def test_unknown_gender_speaker(tmp_path):
    def corrupt(fixture):
        fixture.field("speakers")[fixture.test_ids[0]][0] = "X"

    fixture, path, excinfo = _bad("cosmic-iemocap", tmp_path, corrupt)
    dialogue = fixture.test_ids[0]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", "field 'speakers'", "'X'")


def test_multi_hot_speaker_rows_warn_and_use_argmax(tmp_path, caplog):
    fixture = build_fixture("sdt-meld", seed=3, **SMALL)
    row = fixture.field("videoSpeakers")[fixture.train_ids[0]][0]
    row[:] = [0, 0, 0, 0, 0, 0.5, 0, 1, 0]
    path = dump_fixture(fixture, tmp_path / "multi.pkl")
    with caplog.at_level(logging.WARNING, logger="redifu.data.feature_files"):
        corpus = read_feature_file(path)
    dialogue = next(d for split in SPLITS for d in corpus.splits[split] if d.dialogue_id == str(fixture.train_ids[0]))
    assert dialogue.speakers[0] == 7
    assert "more than one non-zero" in caplog.text


def test_overlapping_splits(tmp_path):
    def corrupt(fixture):
        fixture.field("testIds").append(fixture.train_ids[0])

    fixture, path, excinfo = _bad("cosmic-meld", tmp_path, corrupt)
    dialogue = fixture.train_ids[0]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", "field 'testIds'", "also listed in 'trainIds'")


def test_id_listed_twice(tmp_path):
    def corrupt(fixture):
        fixture.field("trainVid").append(fixture.train_ids[0])

    fixture, path, excinfo = _bad("sdt-iemocap", tmp_path, corrupt)
    dialogue = fixture.train_ids[0]
    _assert_one_line_error(excinfo, path, f"dialogue {dialogue}", "field 'trainVid'", "listed twice")
