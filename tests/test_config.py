from pathlib import Path

import pytest

from ftops.config import DEFAULT_CONFIG, Config, load_config
from ftops.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftops.yaml"
    path.write_text(text)
    return path


def test_shipped_default_config_is_valid_and_resolves_embedded_uris(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, env={})
    assert cfg.model.name == "minilm-l6"
    assert [c.name for c in cfg.candidates] == ["lora", "full"]
    cfg.project.dir = tmp_path / "p"
    resolved = cfg.resolved()
    assert resolved.uris.mlflow_tracking == f"sqlite:///{tmp_path / 'p' / 'mlflow.db'}"
    assert resolved.uris.prediction_log.startswith("sqlite:///") and resolved.uris.prediction_log.endswith("predictions.db")
    assert resolved.uris.evidently_workspace == str(tmp_path / "p" / "evidently")


def test_env_overrides_are_parsed_and_nested(tmp_path):
    path = write(tmp_path, "data:\n  seed: 1\n")
    cfg = load_config(path, env={"FTOPS_DATA__SEED": "7", "FTOPS_DATA__AUGMENT__ENABLED": "true",
                                 "FTOPS_URIS__MLFLOW_TRACKING": "postgresql+psycopg://u@h/db",
                                 "FTOPS_HOME": "/ignored"})
    assert cfg.data.seed == 7
    assert cfg.data.augment.enabled is True
    assert cfg.resolved().uris.mlflow_tracking == "postgresql+psycopg://u@h/db"


def test_cli_style_overrides_win_over_env(tmp_path):
    path = write(tmp_path, "")
    cfg = load_config(path, env={"FTOPS_DATA__SEED": "7"}, overrides={"data.seed": 9})
    assert cfg.data.seed == 9


def test_a_relative_data_source_in_a_file_is_read_from_that_files_folder(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    path = tmp_path / "project" / "ftops.yaml"
    path.write_text("data:\n  source: data/tickets.csv\n")
    monkeypatch.chdir(tmp_path)  # another folder, as the deployments process has
    assert load_config(path, env={}).data.source == str(tmp_path / "project" / "data" / "tickets.csv")
    for spec in ("builtin:tweets?domain=airline", "s3://bucket/tickets.csv", "/abs/tickets.csv"):
        path.write_text(f"data:\n  source: '{spec}'\n")
        assert load_config(path, env={}).data.source == spec
    # a value typed by the user (env or flag) stays relative to where it was typed
    assert load_config(path, env={"FTOPS_DATA__SOURCE": "mine.csv"}).data.source == "mine.csv"


def test_bad_value_names_key_value_and_env_var(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={"FTOPS_DATA__VALIDATION_SIZE": "0.9"})
    message = str(exc.value)
    assert "data.validation_size" in message and "0.9" in message
    assert "$FTOPS_DATA__VALIDATION_SIZE" in message and "less than 0.5" in message


def test_bad_literal_lists_allowed_values(tmp_path):
    path = write(tmp_path, "data:\n  on_invalid: ignore\n")
    with pytest.raises(ConfigError, match=r"data\.on_invalid.*'ignore'.*'error' or 'drop'"):
        load_config(path, env={})


def test_unknown_key_lists_allowed_keys(tmp_path):
    path = write(tmp_path, "data:\n  sed: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert "unknown key 'data.sed'" in str(exc.value)
    assert "seed" in str(exc.value) and "text_column" in str(exc.value)


def test_unknown_key_in_a_candidate_lists_candidate_keys(tmp_path):
    path = write(tmp_path, "candidates:\n  - name: a\n    strategy: full\n    lr: 1\n")
    with pytest.raises(ConfigError, match=r"candidates\.0\.lr.*learning_rate"):
        load_config(path, env={})


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  seed: 1\n  labels: [a, b\n")
    with pytest.raises(ConfigError, match=rf"{path}.*not valid YAML at line \d+"):
        load_config(path, env={})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="leaves too little to train on"):
        Config.model_validate({"data": {"validation_size": 0.3, "test_size": 0.3}})
    with pytest.raises(ValueError, match="5 fields"):
        Config.model_validate({"schedules": {"retrain_cron": "0 3 * *"}})
    with pytest.raises(ValueError, match="repeated: a"):
        Config.model_validate({"candidates": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="unknown text encoding"):
        Config.model_validate({"data": {"encoding": "utf-99"}})
