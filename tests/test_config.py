"""Experiment config: defaults, YAML files, overrides and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from redifu.config import ExperimentConfig, dump_config, load_config, parse_override
from redifu.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_need_no_file():
    config = load_config()
    assert config.data.path is None and config.data.preset == "iemocap"
    assert config.training.max_epochs >= 1
    assert config.model == {}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    load_config(REPO / "configs" / name)


def test_authors_settings_are_in_config_files_not_code():
    iemocap = load_config(REPO / "configs" / "iemocap.yaml")
    assert (iemocap.model["hidden_size"], iemocap.model["num_heads"], iemocap.model["window"]) == (512, 64, 20)
    assert (iemocap.training.lr, iemocap.training.batch_size) == (1e-4, 16)
    meld = load_config(REPO / "configs" / "meld.yaml")
    assert (meld.model["hidden_size"], meld.model["num_heads"], meld.model["window"]) == (256, 16, 25)


def test_overrides_win_over_file_and_parse_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 64\ntraining:\n  lr: 0.01\n")
    config = load_config(path, ["training.lr=1e-4", "model.denoiser=temporal", "data.modalities=[text, audio]",
                                "training.class_weights=true", "data.synthetic.train_dialogues=5"])
    assert config.training.lr == pytest.approx(1e-4)
    assert config.model == {"hidden_size": 64, "denoiser": "temporal"}
    assert config.data.modalities == ("text", "audio")
    assert config.training.class_weights is True
    assert config.data.synthetic == {"train_dialogues": 5}


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["model.window=4", "training.seed=3", "data.modalities=[text]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert isinstance(config, ExperimentConfig)


@pytest.mark.parametrize("override,key", [
    ("model.hiden_size=3", "model.hiden_size"),
    ("training.lr=fast", "training.lr"),
    ("training.batch_size=0", "training.batch_size"),
    ("training.max_epochs=2.5", "training.max_epochs"),
    ("model.fusion=sum", "model.fusion"),
    ("model.num_classes=4", "model.num_classes"),
    ("data.modalities=[audio]", "data.modalities"),
    ("data.modalities=[text, smell]", "data.modalities"),
    ("optim.lr=1", "optim"),
    ("training.class_weights=maybe", "training.class_weights"),
])
def test_bad_overrides_name_the_key_in_one_line(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert message.startswith(key) and "\n" not in message


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("training.lr")
    with pytest.raises(ConfigError, match="dotted"):
        parse_override("lr=1")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_off_is_a_string_not_a_boolean(tmp_path):
    """YAML 1.1 would read `off` as False; component switches must stay strings."""
    path = tmp_path / "ablate.yaml"
    path.write_text("model:\n  denoiser: off\n  graph: off\ntraining:\n  lr: 1e-3\n  class_weights: true\n")
    config = load_config(path, ["model.fusion=concat"])
    assert config.model == {"denoiser": "off", "graph": "off", "fusion": "concat"}
    assert config.training.lr == pytest.approx(1e-3) and config.training.class_weights is True
    assert load_config(None, ["model.denoiser=off"]).model["denoiser"] == "off"


REPO_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


def test_every_repository_config_is_shipped_in_the_package():
    from redifu.config import shipped_configs

    assert REPO_CONFIGS, "no configs in the repository's configs/"
    assert list(shipped_configs()) == REPO_CONFIGS


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_a_shipped_config_is_found_by_name(name):
    assert load_config(name, ["training.seed=5"]) == load_config(REPO / "configs" / f"{name}.yaml", ["training.seed=5"])


def test_names_and_paths_are_told_apart(tmp_path, monkeypatch):
    # A file path still works, and a file in the working directory wins over a shipped name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "meld-text").write_text("model:\n  hidden_size: 24\n")
    assert load_config("meld-text").model == {"hidden_size": 24}
    assert load_config(str(tmp_path / "meld-text")).model == {"hidden_size": 24}
    assert load_config("synthetic-meld").data.preset == "meld"


@pytest.mark.parametrize("config", ["meld-txt", "synthetic-meld.yml", "configs/meld-txt.yaml"])
def test_an_unknown_config_is_one_line_listing_the_shipped_names(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    message = str(error.value)
    assert message.startswith(config) and "\n" not in message
    assert all(name in message for name in REPO_CONFIGS)


def test_train_help_lists_the_shipped_configs(capsys):
    from redifu.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(f" {name}," in text or f" {name})" in text or f"({name}," in text for name in REPO_CONFIGS)
