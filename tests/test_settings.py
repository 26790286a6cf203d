"""Settings fail at start with a message naming the variable and what was expected."""

from __future__ import annotations

import pytest

from shared.settings import ConfigError, DatabaseSettings, IngestSettings, ServeSettings, default_of, load


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in (
        "DATABASE_URL",
        "DISCORD_BOT_TOKEN",
        "DZONE_PORT",
        "DZONE_LOG_LEVEL",
        "DZONE_SHARD_IDS",
        "DZONE_ALLOWED_ORIGINS",
        "DZONE_INGEST_HTTP_PORT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_database_url_must_be_a_libpq_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://localhost/x")
    with pytest.raises(ConfigError, match=r"DATABASE_URL: .*postgresql://"):
        load(DatabaseSettings)


def test_missing_bot_token_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DISCORD_BOT_TOKEN: Field required"):
        load(IngestSettings)


def test_blank_bot_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "   ")
    with pytest.raises(ConfigError, match=r"DISCORD_BOT_TOKEN: .*empty"):
        load(IngestSettings)


def test_prefixed_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DZONE_PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"DZONE_PORT: .*integer"):
        load(ServeSettings)


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://u@h/db\nDZONE_LOG_LEVEL=debug\n")
    settings = load(DatabaseSettings)
    assert settings.database_url == "postgresql://u@h/db" and settings.log_level == "debug"


def test_token_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "super-secret-token")
    settings = load(IngestSettings)
    assert "super-secret-token" not in repr(settings) and "super-secret-token" not in str(settings)


@pytest.mark.parametrize(
    ("value", "expected"), [("0", [0]), ("0,2", [0, 2]), (" 1 , 3 ", [1, 3]), ("[0, 1]", [0, 1]), ("[]", [])]
)
def test_shard_ids_take_one_value_a_list_or_json(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[int]
) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "t")
    monkeypatch.setenv("DZONE_SHARD_IDS", value)
    assert load(IngestSettings).shard_ids == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://a.example", ["https://a.example"]),
        ("https://a.example,https://b.example", ["https://a.example", "https://b.example"]),
        ('["https://a.example", "https://b.example"]', ["https://a.example", "https://b.example"]),
    ],
)
def test_allowed_origins_take_one_value_a_list_or_json(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("DZONE_ALLOWED_ORIGINS", value)
    assert load(ServeSettings).allowed_origins == expected


@pytest.mark.parametrize(
    ("value", "problem"), [("[0,", "not a JSON list"), ("zero", "valid integer"), ("[[0]]", "valid integer")]
)
def test_bad_list_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "t")
    monkeypatch.setenv("DZONE_SHARD_IDS", value)
    with pytest.raises(ConfigError, match=f"DZONE_SHARD_IDS: .*{problem}"):
        load(IngestSettings)


def test_list_settings_accept_lists_from_code() -> None:
    assert load(IngestSettings, DISCORD_BOT_TOKEN="t", shard_ids=[1]).shard_ids == [1]
    assert load(ServeSettings, allowed_origins=["https://a.example"]).allowed_origins == ["https://a.example"]


def test_tls_pair_is_set_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DZONE_TLS_CERT_FILE", "/etc/letsencrypt/live/x/fullchain.pem")
    with pytest.raises(ConfigError, match="DZONE_TLS_CERT_FILE and DZONE_TLS_KEY_FILE must be set together"):
        load(ServeSettings)
    monkeypatch.setenv("DZONE_TLS_KEY_FILE", "/etc/letsencrypt/live/x/privkey.pem")
    monkeypatch.setenv("DZONE_TLS_MIN_VERSION", "1.1")
    with pytest.raises(ConfigError, match=r"DZONE_TLS_MIN_VERSION: .*'1.2' or '1.3'"):
        load(ServeSettings)


def test_drain_is_never_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(ServeSettings).drain_s == 120
    monkeypatch.setenv("DZONE_DRAIN_S", "-1")
    with pytest.raises(ConfigError, match=r"DZONE_DRAIN_S: .*greater than or equal to 0"):
        load(ServeSettings)


def test_writer_defaults_are_the_ingest_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.worker import writer_config
    from ingest.writer import WriterConfig

    monkeypatch.setenv("DISCORD_BOT_TOKEN", "x")
    monkeypatch.setenv("DZONE_BATCH_MAX_DELAY_MS", "7")
    assert writer_config(load(IngestSettings)) == WriterConfig(batch_max_delay_s=0.007)
    monkeypatch.delenv("DZONE_BATCH_MAX_DELAY_MS")
    assert writer_config(load(IngestSettings)) == WriterConfig()


def test_default_of_is_typed_and_refuses_the_wrong_kind() -> None:
    assert default_of(IngestSettings, "batch_max_rows", int) == 2000
    with pytest.raises(TypeError, match=r"IngestSettings.batch_max_rows defaults to 2000, not a str"):
        default_of(IngestSettings, "batch_max_rows", str)
