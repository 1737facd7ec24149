"""Credentials come from the environment or a secret file, never from the YAML, and no
password leaves in a file, a printed config or a job file."""

from __future__ import annotations

import json

import pytest

from ftops import security
from ftops.config import Config
from ftops.errors import ConfigError

TOKEN_A, TOKEN_B = "a" * 24, "b-" + "x" * 30


def test_tokens_from_the_environment_name_their_senders(tmp_path):
    cfg = Config()
    tokens = security.gateway_tokens(cfg, {security.ENV_TOKENS: f"labelling={TOKEN_A}, ops={TOKEN_B}"})
    assert tokens == {TOKEN_A: "labelling", TOKEN_B: "ops"}
    assert security.sender(tokens, f"Bearer {TOKEN_B}") == "ops"
    assert security.sender(tokens, f"bearer {TOKEN_A}") == "labelling"
    for header in (None, "", TOKEN_A, f"Basic {TOKEN_A}", "Bearer " + "a" * 23, f"Bearer {TOKEN_A}x"):
        assert security.sender(tokens, header) is None
    assert security.gateway_tokens(cfg, {security.ENV_TOKENS: TOKEN_A}) == {TOKEN_A: "default"}
    assert security.gateway_tokens(cfg, {}) == {}


def test_a_tokens_file_is_named_by_the_config_and_checked(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# who may send labels\nlabelling {TOKEN_A}\n\nops={TOKEN_B}\n")
    cfg = Config.model_validate({"security": {"tokens_file": str(path)}})
    assert security.gateway_tokens(cfg, {}) == {TOKEN_A: "labelling", TOKEN_B: "ops"}
    path.write_text("labelling short\n")
    with pytest.raises(ConfigError, match=r"entry 1: .*16 characters"):
        security.gateway_tokens(cfg, {})
    path.write_text(f"one {TOKEN_A}\ntwo {TOKEN_A}\n")
    with pytest.raises(ConfigError, match="entry 2: the same token"):
        security.gateway_tokens(cfg, {})
    missing = Config.model_validate({"security": {"tokens_file": str(tmp_path / "absent")}})
    with pytest.raises(ConfigError, match="Cannot read the gateway tokens file"):
        security.gateway_tokens(missing, {})


def test_the_yaml_cannot_hold_a_token():
    with pytest.raises(Exception, match="tokens"):
        Config.model_validate({"security": {"tokens": [TOKEN_A]}})


def test_prefect_auth_from_env_or_file(tmp_path):
    path = tmp_path / "prefect-auth"
    path.write_text("admin:pw\n")
    cfg = Config.model_validate({"security": {"prefect_auth_file": str(path)}})
    assert security.prefect_auth(cfg, {}) == "admin:pw"
    assert security.prefect_auth(cfg, {security.ENV_PREFECT_AUTH: "u:p"}) == "u:p"
    assert security.prefect_auth(Config(), {}) is None
    path.write_text("no-colon")
    with pytest.raises(ConfigError, match="user:password"):
        security.prefect_auth(cfg, {})


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                            ("0.0.0.0", False), ("10.0.0.5", False), ("gateway", False)])
def test_loopback(host, loopback):
    assert security.is_loopback(host) is loopback


def test_passwords_are_masked_and_travel_only_by_environment():
    cfg = Config.model_validate({"uris": {"prediction_log": "postgresql+psycopg://ftops:pw%40x@db:5432/predictions",
                                          "mlflow_tracking": "sqlite:///tmp/mlflow.db"}})
    text, env = security.seal(cfg)
    assert "pw%40x" not in text and "ftops:***@db" in text
    assert "sqlite:///tmp/mlflow.db" in text  # nothing to hide there
    assert security.unseal(text, env) == cfg
    assert json.loads(text)["uris"]["prediction_log"] == security.mask_url(cfg.uris.prediction_log)
    assert security.seal(Config())[1] == {}
    assert security.mask_url("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200/api"


def test_config_show_masks_passwords(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ftops.cli import app

    monkeypatch.setenv("FTOPS_URIS__PREDICTION_LOG", "postgresql://ftops:topsecret@db/predictions")
    result = CliRunner().invoke(app, ["config", "show", "--project-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "topsecret" not in result.output and "ftops:***@db" in result.output
