"""Settings: read once from the environment; a bad value names its variable."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fraud_inference.settings import Settings, SettingsError, redact_credentials, settings_reference


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
        ({"MODELS": "a=x@"}, "MODELS"),
        ({"MODELS": "a=x/latest"}, "MODELS"),
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
        ("file:///srv/models@2/m", "file:///srv/models@2/m"),
        ("https://token-only@host/x", "https://***@host/x"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_credentials(uri) == expected


# Passwords as they appear in a URI: raw `@` and `:` (urllib and requests read the userinfo up to the LAST
# `@`), percent-encoded `@` and `/`, and a raw `/` (unparsable, but then quoted whole in a client's error).
PASSWORDS = ["p@ss-w0rd", "pa:ss@w0rd", "p%40ss%2Fw0rd", "p@ss/w0rd", "a@b:c@d%40e/f?g#h@w0rd"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "{uri}",
        "API request to {uri}/api/2.0/mlflow/registered-models/alias failed",
        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: '{uri}/api' (Caused by x)",
        '{{"event": "startup.load_failed", "error": "cannot reach {uri}"}}',
    ],
)
def test_redact_hides_the_whole_password_up_to_the_last_at(password: str, template: str) -> None:
    uri = f"http://alice:{password}@mlflow.internal:5000"
    shown = redact_credentials(template.format(uri=uri))
    assert shown == template.format(uri="http://alice:***@mlflow.internal:5000")
    for fragment in ("p@ss", "ss-w0rd", "w0rd", "ss%2F", "b:c"):
        assert fragment not in shown


def test_redact_matches_how_urllib_reads_the_password() -> None:
    from urllib.parse import urlsplit

    for password in ("p@ss-w0rd", "pa:ss@w0rd", "p%40ss%2Fw0rd"):
        uri = f"http://alice:{password}@mlflow.internal:5000/x"
        assert urlsplit(uri).password == password
        assert redact_credentials(uri) == "http://alice:***@mlflow.internal:5000/x"


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


def test_each_setting_is_one_field_with_its_variable_and_a_docstring() -> None:
    reference = settings_reference()
    assert [setting.field for setting in reference] == list(Settings.__struct_fields__)
    variables = [setting.variable for setting in reference]
    assert len(set(variables)) == len(variables)
    for setting in reference:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", setting.variable), setting
        assert len(setting.doc) > 10, setting


def test_workers_defaults_to_the_cpu_count_however_settings_are_built() -> None:
    assert Settings().workers == Settings.from_env({}).workers == (os.cpu_count() or 1)


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {
        cells[0].strip("` "): cells[1].replace("`", "").strip()
        for line in readme.splitlines()
        if line.startswith("| `") and len(cells := [cell.strip() for cell in line.strip("|").split("|")]) >= 3
    }
    for setting in settings_reference():
        assert setting.variable in rows, f"{setting.variable} is missing from the README's configuration table"
        assert rows[setting.variable].startswith(setting.shown_default.replace("`", "")), setting.variable


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


def test_challengers_are_on_by_default_and_an_empty_alias_turns_them_off() -> None:
    assert (Settings.from_env({}).challenger_alias, Settings.from_env({}).shadow_share) == ("challenger", 1.0)
    assert Settings.from_env({"CHALLENGER_ALIAS": ""}).challenger_alias == ""
    assert Settings.from_env({"CHALLENGER_ALIAS": "candidate"}).challenger_alias == "candidate"
    assert Settings.from_env({"SHADOW_SHARE": "0.25"}).shadow_share == 0.25
    with pytest.raises(SettingsError, match="SHADOW_SHARE"):
        Settings.from_env({"SHADOW_SHARE": "1.5"})
