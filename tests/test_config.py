"""Settings: defaults, the store chosen by what is set, bad values named, .env read, secrets hidden."""

import pytest

from app.config import ConfigError, StoreKind, load_settings


def test_defaults_run_the_embedded_store(tmp_path):
    settings = load_settings(_env_file=None)
    assert settings.store_kind is StoreKind.SQLITE
    assert settings.max_tasks_per_request == 10_000
    assert settings.feishu_domain == "https://open.feishu.cn"
    assert settings.feishu_timeout_seconds == 30


def test_feishu_app_id_switches_auto_to_bitable_and_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("FEISHU_APP_ID", "cli_x")
    with pytest.raises(ConfigError, match="FEISHU_APP_SECRET, FEISHU_BITABLE_APP_TOKEN, FEISHU_BITABLE_TABLE_ID"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_TASKS_PER_REQUEST", "0"), ("FEISHU_TIMEOUT_SECONDS", "soon"), ("STORE", "mongo"), ("FEISHU_DOMAIN", "x")],
)
def test_an_invalid_value_fails_naming_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(_env_file=None)


def test_dedup_keys_are_comma_separated(monkeypatch):
    monkeypatch.setenv("DEDUP_KEYS", " alpha, region ,")
    assert load_settings(_env_file=None).dedup_keys == ["alpha", "region"]


def test_settings_come_from_a_dotenv_file(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MAX_TASKS_PER_REQUEST=7\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().max_tasks_per_request == 7


def test_the_app_secret_never_shows_in_a_repr(monkeypatch):
    monkeypatch.setenv("FEISHU_APP_SECRET", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(load_settings(_env_file=None))


def test_env_example_lists_every_setting_once():
    import re
    from pathlib import Path

    from app.config import Settings

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    listed = re.findall(r"^([A-Z_]+)=", text, re.M)
    assert sorted(listed) == sorted(name.upper() for name in Settings.model_fields)
