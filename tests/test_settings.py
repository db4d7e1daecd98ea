"""Settings: read once from the environment; a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud_inference.settings import Settings, SettingsError, redact_credentials


def test_defaults_serve_the_three_demo_models() -> None:
    settings = Settings.from_env({})
    assert settings.models == {"xgboost": "fraud-xgboost", "lightgbm": "fraud-lightgbm", "sklearn": "fraud-sklearn"}
    assert settings.default_model == "xgboost"
    assert settings.model_alias == "champion"
    assert settings.model_stages == ("Production", "Staging")
    assert settings.port == 8000
    assert settings.max_batch_rows == 10_000
    assert settings.workers >= 1
    assert settings.api_keys == ()
    assert settings.cors_origins == ()


def test_default_model_is_the_first_served_key() -> None:
    settings = Settings.from_env({"MODELS": "lgb=fraud-lightgbm, xgb=fraud-xgboost"})
    assert settings.models == {"lgb": "fraud-lightgbm", "xgb": "fraud-xgboost"}
    assert settings.default_model == "lgb"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"WORKERS": "two"}, "WORKERS"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"PORT": "70000"}, "PORT"),
        ({"MAX_BATCH_ROWS": "-1"}, "MAX_BATCH_ROWS"),
        ({"MAX_BODY_BYTES": "lots"}, "MAX_BODY_BYTES"),
        ({"INFERENCE_TIMEOUT_S": "0"}, "INFERENCE_TIMEOUT_S"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"MODELS": "xgboost"}, "MODELS"),
        ({"MODELS": "a=x,a=y"}, "MODELS"),
        ({"DEFAULT_MODEL": "catboost"}, "DEFAULT_MODEL"),
        ({"MODEL_STAGES": " , "}, "MODEL_STAGES"),
        ({"API_KEYS_FILE": "/nonexistent/keys"}, "API_KEYS_FILE"),
    ],
)
def test_bad_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_api_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("from-file-1\n\nfrom-file-2\n")
    settings = Settings.from_env({"API_KEYS": "k1, k2", "API_KEYS_FILE": str(key_file)})
    assert settings.api_keys == ("k1", "k2", "from-file-1", "from-file-2")


def test_redacted_settings_hide_keys_and_uri_password() -> None:
    settings = Settings.from_env(
        {"API_KEYS": "s3cret-key", "MLFLOW_TRACKING_URI": "https://svc:hunter2@mlflow.internal/path"}
    )
    shown = repr(settings.redacted())
    assert "s3cret-key" not in shown
    assert "hunter2" not in shown
    assert "mlflow.internal" in shown


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("https://user:pw@host:443/x", "https://user:***@host:443/x"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_credentials(uri) == expected


def test_tracking_uri_can_come_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "uri"
    secret.write_text("https://svc:pw@mlflow.internal\n")
    assert Settings.from_env({"MLFLOW_TRACKING_URI_FILE": str(secret)}).mlflow_tracking_uri == (
        "https://svc:pw@mlflow.internal"
    )
    with pytest.raises(SettingsError, match="MLFLOW_TRACKING_URI_FILE"):
        Settings.from_env({"MLFLOW_TRACKING_URI_FILE": str(tmp_path / "missing")})


def test_redact_credentials_hides_every_uri_password_in_a_message() -> None:
    message = (
        "API request to http://fraud:s3cr3t@127.0.0.1:5000/api/2.0 failed; db postgresql://u:pw@db/x, http://h:80/x"
    )
    assert redact_credentials(message) == (
        "API request to http://fraud:***@127.0.0.1:5000/api/2.0 failed; db postgresql://u:***@db/x, http://h:80/x"
    )


def test_model_serving_policies_default_to_the_safe_side_and_are_validated() -> None:
    settings = Settings.from_env({})
    assert (settings.parity_check, settings.pyfunc, settings.extra_features) == ("strict", "refuse", "reject")
    assert settings.model_trust().pyfunc == "refuse"
    chosen = Settings.from_env({"PARITY_CHECK": "warn", "PYFUNC": "allow", "EXTRA_FEATURES": "ignore"})
    assert (chosen.parity_check, chosen.pyfunc, chosen.extra_features) == ("warn", "allow", "ignore")
    assert chosen.model_trust().pyfunc == "allow"
    for variable in ("PARITY_CHECK", "PYFUNC", "EXTRA_FEATURES"):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: "sometimes"})
