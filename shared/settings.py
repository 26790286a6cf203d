"""All configuration, read from the environment and an optional ``.env`` file.

``DATABASE_URL`` and ``DISCORD_BOT_TOKEN`` keep their customary names; everything else is ``DZONE_*``.
Each process loads the class it needs with :func:`load`, which turns validation errors into one
:class:`ConfigError` naming the variable and what was expected.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared import redaction
from shared.discord_rules import DISCORD_API_BASE
from shared.errors import DzoneError


class ConfigError(DzoneError):
    """A setting is missing or malformed; the message names the variable."""


def split_list(value: object) -> object:
    """A list setting from the environment: ``0``, ``a,b`` or JSON ``[0, 1]`` (other values pass through)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"not a JSON list ({exc.msg} at {exc.pos}); or write a,b without brackets"
            ) from None
    return [part.strip() for part in text.split(",") if part.strip()]


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DZONE_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )


def _check_database_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("expected a libpq URL such as postgresql://user:pass@host:5432/dbname")
    return value


class DatabaseSettings(_Base):
    """How to reach PostgreSQL. Without ``DATABASE_URL`` the commands that can start an embedded one do."""

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL"), description="libpq URL"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    log_traceback_locals: bool = False  # debugging: each frame's local variables in tracebacks (redacted)

    _url = field_validator("database_url")(_check_database_url)


class DiscordSettings(_Base):
    """Where Discord is. Unset base/gateway mean the real Discord; tests point them at the simulator."""

    discord_api_base: str = DISCORD_API_BASE
    discord_gateway_url: str | None = None


DEFAULT_INGEST_HTTP_PORT = 8081


class IngestSettings(DatabaseSettings, DiscordSettings):
    """Settings of ``dzone ingest``."""

    discord_bot_token: SecretStr = Field(validation_alias=AliasChoices("DISCORD_BOT_TOKEN"))
    include_bots: bool = False
    relay_messages: bool = True
    # Sharding: None = every shard (shard_count None: the count Discord recommends).
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: Annotated[list[int] | None, NoDecode] = None  # DZONE_SHARD_IDS=0,2 (or 0, or [0,2])
    guild_ready_timeout_s: float = Field(default=2.0, ge=0)  # discord.py's wait for GUILD_CREATEs
    batch_max_rows: int = Field(default=2000, ge=1)
    batch_max_delay_ms: float = Field(default=5.0, ge=0)
    bulk_threshold: int = Field(default=500, ge=1)  # a sync changing this many rows announces one resync
    sync_connections: int = Field(default=2, ge=1)  # full syncs run on this many connections at once
    resync_after_outage_s: float = Field(default=30.0, ge=0)
    message_queue_max: int = Field(default=10_000, ge=1)
    stats_interval_s: float = Field(default=10.0, ge=0)  # 0 = no periodic rate log
    shutdown_flush_timeout_s: float = Field(default=10.0, gt=0)
    # /healthz, /readyz, /metrics: None = the command's default (DEFAULT_INGEST_HTTP_PORT for
    # `dzone ingest`, off for IngestWorker used as a library); 0 = off.
    ingest_http_port: int | None = Field(default=None, ge=0, le=65535)
    ingest_http_host: str = "127.0.0.1"
    ready_max_pending_rows: int = Field(default=100_000, ge=1)  # /readyz is 503 with this many pending

    _shard_ids = field_validator("shard_ids", mode="before")(split_list)

    @field_validator("discord_bot_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class ServeSettings(DatabaseSettings, DiscordSettings):
    """Settings of ``dzone serve``; every limit of protocol rule 20 has a safe default here."""

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)
    static_dir: str | None = None
    oauth_client_id: str | None = None
    max_frame_bytes: int = Field(default=16 * 1024, ge=256)
    max_connections: int = Field(default=20_000, ge=1)
    max_connections_per_ip: int = Field(default=500, ge=1)
    # Peers (addresses or networks) whose X-Forwarded-For names the client (serve/addresses.py).
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    connects_per_minute: int = Field(default=30, ge=1)
    write_buffer_bytes: int = Field(default=256 * 1024, ge=1024)
    # Unsent data held in memory: a socket above socket_buffer_max_bytes is dropped at once; a snapshot is
    # written only while its address and the process stay under their caps (else the join waits).
    socket_buffer_max_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024)
    address_buffer_max_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    process_buffer_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    snapshot_max_users: int = Field(default=2000, ge=1)
    message_max_chars: int = Field(default=300, ge=1, le=2000)
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # a,b or JSON
    ping_interval_s: float = Field(default=20.0, gt=0)
    ping_timeout_s: float = Field(default=20.0, gt=0)
    oauth_timeout_s: float = Field(default=5.0, gt=0)
    oauth_cache_s: float = Field(default=60.0, ge=0)
    # Calls to Discord's users/@me: refusals cached this long, at most this many per second per client
    # address and for the whole process (over it: an error frame, no call).
    oauth_failure_cache_s: float = Field(default=10.0, ge=0)
    oauth_calls_per_ip_per_s: float = Field(default=2.0, gt=0)
    oauth_calls_per_s: float = Field(default=20.0, gt=0)
    # serve internals: how long a viewer may sit above its write buffer before it is dropped, how long a
    # registered provider callback may take, and how the LISTEN connection is watched and re-opened.
    slow_viewer_grace_s: float = Field(default=10.0, gt=0)
    provider_timeout_s: float = Field(default=10.0, gt=0)
    listener_probe_interval_s: float = Field(default=5.0, gt=0)
    listener_probe_timeout_s: float = Field(default=3.0, gt=0)
    listener_backoff_max_s: float = Field(default=5.0, gt=0)
    pool_max_size: int = Field(default=5, ge=1)
    # Native TLS (serve/tls.py): HTTP and WebSocket on the same port; the pair is re-read when the files
    # change (certbot renewals), checked every TLS_RELOAD_INTERVAL_S.
    tls_cert_file: str | None = None  # PEM chain, leaf first (certbot's fullchain.pem)
    tls_key_file: str | None = None
    tls_key_password_file: str | None = None  # for an encrypted key; the file holds the password
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    tls_ciphers: str | None = None  # OpenSSL cipher list for TLS 1.2 (1.3 suites are OpenSSL's)
    tls_reload_interval_s: float = Field(default=60.0, gt=0)
    # Restarts (docs/deploy.md): on SIGTERM /readyz turns 503 and new sockets are refused, open viewers are
    # served this long (or until they have all left), then closed with 1001. 0 = close at once.
    drain_s: float = Field(default=120.0, ge=0)

    @model_validator(mode="after")
    def _tls_pair_complete(self) -> ServeSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("DZONE_TLS_CERT_FILE and DZONE_TLS_KEY_FILE must be set together")
        if self.tls_key_password_file and not self.tls_key_file:
            raise ValueError("DZONE_TLS_KEY_PASSWORD_FILE needs DZONE_TLS_KEY_FILE")
        return self

    _origins = field_validator("allowed_origins", mode="before")(split_list)
    _proxies = field_validator("trusted_proxies", mode="before")(split_list)


S = TypeVar("S", bound=BaseSettings)
T = TypeVar("T")


def default_of(cls: type[BaseSettings], field: str, kind: type[T]) -> T:
    """A setting's default, for code that has the same knob outside the settings (one definition)."""
    value = cls.model_fields[field].get_default(call_default_factory=True)
    if not isinstance(value, kind):
        raise TypeError(f"{cls.__name__}.{field} defaults to {value!r}, not a {kind.__name__}")
    return value


def _variable_name(cls: type[BaseSettings], field: str) -> str:
    info = cls.model_fields.get(field)
    if info is None:  # pydantic reports aliased fields by their alias, which is the variable name
        return field
    if isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"DZONE_{field.upper()}"


def load(cls: type[S], **overrides: Any) -> S:  # Any: keywords pydantic validates
    """Read ``cls`` from the environment; raise :class:`ConfigError` naming each bad variable.

    Its secrets (every ``SecretStr``, the password in ``DATABASE_URL``, ``PGPASSWORD``) are registered
    with :mod:`shared.redaction` before anything can log them.
    """
    redaction.add_environment()
    try:
        settings = cls(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a rule across fields names its variables itself
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            problems.append(f"{_variable_name(cls, str(error['loc'][0]))}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            redaction.add(value.get_secret_value())
    redaction.add_url_password(getattr(settings, "database_url", None))
    return settings
