"""docker-compose.yml without a Docker engine: valid under the Compose Specification's JSON schema,
every command a real ``dzone`` invocation, every variable it needs provided once .env is filled in (and
not before), ports on loopback, each secret where it belongs, services that wait for each other and
report health, and logs that stay bounded."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click
import jsonschema
import orjson
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from dzone.cli import main
from shared.db import migrate
from shared.settings import (
    DEFAULT_INGEST_HTTP_PORT,
    ConfigError,
    DatabaseSettings,
    IngestSettings,
    ServeSettings,
    load,
)
from tests.certs import LocalCA
from tests.pg import _admin
from tests.test_serve_support import running

LIBPQ_VARIABLES = {"PGPASSWORD"}  # read by asyncpg (and so by alembic) when the URL has no password
ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# The Compose Specification's schema, copied with its source and commit: tests/data/README.md.
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
# What an operator writes into the two empty required lines of .env.example.
FILLED_IN = {"DISCORD_BOT_TOKEN": "MTIz.filled-in.token", "POSTGRES_PASSWORD": "filled-in-password"}

# The settings class each subcommand loads: what its environment must satisfy.
SETTINGS_OF: dict[str, type[BaseSettings]] = {
    "migrate": DatabaseSettings,
    "ingest": IngestSettings,
    "serve": ServeSettings,
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example line without '=': {line!r}"
            values[key.strip()] = value.strip()
    return values


def _env_filled() -> dict[str, str]:
    """.env.example once the operator has filled in the secrets."""
    return {**_env_example(), **FILLED_IN}


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, strict: a required variable that is missing fails the test."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op is None:
            assert current is not None, f"${{{name}}} has no default and is not in .env.example"
            return current
        if op.endswith("?"):
            assert not unset, f"required ${{{name}}} is not provided by .env.example ({arg})"
            return str(current)
        return arg if unset else str(current)

    return VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resolved = _interpolate(raw, _env_filled())
    return {name: svc for name, svc in resolved["services"].items()}


def _dzone_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if svc.get("command", [None])[0] == "dzone"}


def _settings_variables() -> set[str]:
    """Every environment variable any dzone settings class reads."""
    names: set[str] = set()
    for cls in (DatabaseSettings, IngestSettings, ServeSettings):
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            names.add(str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"DZONE_{field.upper()}")
    return names


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "migrate", "ingest", "serve"} <= set(services)
    assert set(_dzone_services(services)) == {"migrate", "ingest", "serve"}


def test_every_command_is_a_real_dzone_invocation(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _dzone_services(services).items():
        command = svc["command"]
        assert isinstance(command, list), f"{name}: use the exec form (a list), not a shell string"
        ctx = click.Context(main)
        sub = main.get_command(ctx, command[1])
        assert sub is not None, f"{name}: `dzone {command[1]}` is not a dzone subcommand"
        # Parsing checks that every option exists and every value has the right type.
        try:
            sub.make_context(command[1], list(command[2:]), parent=ctx)
        except click.UsageError as exc:
            pytest.fail(f"{name}: `{' '.join(command)}` does not parse: {exc}")


def test_each_service_environment_satisfies_its_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env file joins in
    env_file = _env_filled()
    for name, svc in _dzone_services(services).items():
        subcommand = svc["command"][1]
        environment = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        with monkeypatch.context() as m:
            for key in _settings_variables():
                m.delenv(key, raising=False)
            # env_file entries first, explicit environment wins (compose's precedence)
            for key, value in {**env_file, **environment}.items():
                m.setenv(key, value)
            try:
                settings = load(SETTINGS_OF[subcommand])
            except ConfigError as exc:
                pytest.fail(f"{name}: {exc}")
            url = getattr(settings, "database_url", None)
            assert url and "@postgres:5432/" in url, (
                f"{name}: DATABASE_URL must point at the postgres service"
            )


def test_every_variable_is_known(raw: dict[str, Any]) -> None:
    """A typo in a variable name would silently do nothing: each must be read by someone."""
    referenced = set(VARIABLE.findall(COMPOSE.read_text()))
    referenced_names = {name for name, _, _ in referenced}
    known = _settings_variables() | referenced_names | {"POSTGRES_PASSWORD"}
    for key in _env_example():
        assert key in known, f".env.example sets {key}, which neither compose nor any dzone setting reads"
    for name, svc in raw["services"].items():
        for key in svc.get("environment") or {}:
            if name != "postgres":
                assert key in _settings_variables() | LIBPQ_VARIABLES, f"{name}: {key} is not a dzone setting"


# Which secret each service may see (the bot token: the ingest alone; the database password: as
# PGPASSWORD to the dzone services, as POSTGRES_PASSWORD to postgres alone).
SECRETS = {"DISCORD_BOT_TOKEN", "POSTGRES_PASSWORD", "PGPASSWORD"}
SECRETS_OF = {
    "postgres": {"POSTGRES_PASSWORD"},
    "migrate": {"PGPASSWORD"},
    "ingest": {"DISCORD_BOT_TOKEN", "PGPASSWORD"},
    "serve": {"PGPASSWORD"},
}


def test_each_service_gets_only_the_secrets_it_needs(services: dict[str, dict[str, Any]]) -> None:
    env_file = _env_filled()
    for name, svc in services.items():
        environment = svc.get("environment") or {}
        assert set(environment) & SECRETS == SECRETS_OF[name], name
        # .env (which holds the secrets) is never handed to a container whole.
        for entry in svc.get("env_file") or []:
            path = entry["path"] if isinstance(entry, dict) else entry
            assert Path(path).name != ".env", f"{name} reads .env, so it would get every secret"
        if "DATABASE_URL" in environment:
            parts = urlsplit(environment["DATABASE_URL"])
            assert parts.password is None, f"{name}: the password must not be inside DATABASE_URL"
            assert environment["PGPASSWORD"] == env_file["POSTGRES_PASSWORD"]


def test_the_file_is_valid_under_the_compose_specification(raw: dict[str, Any]) -> None:
    """Compose validates the file after interpolation; so does this test, with the schema's own draft."""
    schema = orjson.loads(COMPOSE_SCHEMA.read_bytes())
    validator = jsonschema.Draft7Validator(schema)
    # the schema is what it says it is (a bad copy would validate anything)
    assert schema["title"] == "Compose Specification"
    assert list(validator.iter_errors({"services": {"x": {"restart": 5}}}))
    errors = sorted(validator.iter_errors(_interpolate(raw, _env_filled())), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("left_empty", sorted(FILLED_IN))
def test_the_unedited_example_cannot_start(raw: dict[str, Any], left_empty: str) -> None:
    """.env.example leaves the secrets empty: compose's ${...:?} guards stop it, naming the variable."""
    env = {**_env_filled(), left_empty: _env_example()[left_empty]}
    assert env[left_empty] == ""
    with pytest.raises(AssertionError, match=rf"required \$\{{{left_empty}\}}"):
        _interpolate(raw, env)


def test_published_ports_are_on_loopback_unless_switched(raw: dict[str, Any]) -> None:
    for name, svc in _interpolate(raw, _env_filled())["services"].items():
        for mapping in svc.get("ports") or []:
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"
    switched = _interpolate(raw, {**_env_filled(), "DZONE_PUBLISH_ADDRESS": "0.0.0.0"})
    assert switched["services"]["serve"]["ports"] == ["0.0.0.0:3000-3009:3000"]
    assert "DZONE_PUBLISH_ADDRESS" in (ROOT / "docs" / "deploy.md").read_text()


def test_the_serve_trusts_the_compose_network_it_is_reached_through(raw: dict[str, Any]) -> None:
    """nginx on the host reaches a replica via Docker's published port: the peer is the network's gateway."""
    resolved = _interpolate(raw, _env_filled())
    subnet = resolved["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert resolved["services"]["serve"]["environment"]["DZONE_TRUSTED_PROXIES"] == subnet
    import ipaddress

    gateway = next(ipaddress.ip_network(subnet).hosts())  # Docker's default gateway: the first address
    settings = ServeSettings(trusted_proxies=subnet)
    assert any(gateway in network for network in settings.trusted_proxies)


def test_every_container_log_is_bounded(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file", f"{name}: no bounded log driver"
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name


def test_the_documented_rolling_restart_migrates_first(services: dict[str, dict[str, Any]]) -> None:
    """docs/deploy.md's procedure runs the migrate service before any new replica starts."""
    steps = _rolling_restart_commands()
    migrate_at = steps.index("docker compose run --rm migrate")
    scale_at = next(i for i, step in enumerate(steps) if "--scale serve=" in step)
    assert migrate_at < scale_at, steps
    assert services["migrate"]["command"] == ["dzone", "migrate"]


def _rolling_restart_commands() -> list[str]:
    """The shell lines (comments cut) of deploy.md's rolling restart code block."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("## Rolling restart with docker-compose") :]
    block = section[section.index("```sh") + len("```sh") : section.index("```", section.index("```sh") + 5)]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_start_order_and_health(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "ingest", "serve"):  # migrate is a one-shot: its exit code is its health
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("ingest", "serve"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    serve = services["serve"]
    assert int(serve["deploy"]["replicas"]) >= 2
    port = serve["command"][serve["command"].index("--port") + 1]
    assert serve["command"][serve["command"].index("--host") + 1] == "0.0.0.0"
    assert f":{port}/readyz" in " ".join(serve["healthcheck"]["test"])
    assert all(str(mapping).endswith(f":{port}") for mapping in serve["ports"])
    ingest = services["ingest"]
    ingest_port = ingest["environment"].get("DZONE_INGEST_HTTP_PORT", DEFAULT_INGEST_HTTP_PORT)
    assert f"127.0.0.1:{ingest_port}/readyz" in " ".join(ingest["healthcheck"]["test"])


async def _health_check_exit(services: dict[str, dict[str, Any]], port: int, tls: bool) -> int:
    """Run the serve's health check command (its port swapped) as the container would, in our venv."""
    command = [arg.replace(":3000/", f":{port}/") for arg in services["serve"]["healthcheck"]["test"][1:]]
    assert command[0] == "python"
    env = {**os.environ, "DZONE_TLS_CERT_FILE": "/etc/letsencrypt/live/x/fullchain.pem" if tls else ""}
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_serve_health_check_runs_with_and_without_tls(
    services: dict[str, dict[str, Any]], database_url: str, tmp_path: Path
) -> None:
    """The healthcheck line passes against a plain and a TLS serve, and fails where nothing is ready."""
    pair = LocalCA(tmp_path).issue()
    async with running(database_url) as plain:
        assert await _health_check_exit(services, plain.port, tls=False) == 0
        assert await _health_check_exit(services, plain.port, tls=True) != 0  # plain HTTP is no TLS
        closed_port = plain.port
    async with running(
        database_url, tls_cert_file=str(pair.cert_file), tls_key_file=str(pair.key_file)
    ) as tls:
        assert await _health_check_exit(services, tls.port, tls=True) == 0
        assert await _health_check_exit(services, tls.port, tls=False) != 0
    assert await _health_check_exit(services, closed_port, tls=False) != 0


def test_serve_outlives_its_drain(services: dict[str, dict[str, Any]]) -> None:
    """docker stop must not SIGKILL a draining replica: its grace exceeds the default drain."""
    grace = re.fullmatch(r"(\d+)s", str(services["serve"]["stop_grace_period"]))
    assert grace, services["serve"]["stop_grace_period"]
    assert int(grace.group(1)) >= ServeSettings.model_fields["drain_s"].default + 20


def test_the_image_builds_from_this_repository(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, svc in _dzone_services(services).items():
        assert svc["build"] == ".", name
    # the packages the image copies are the ones pyproject installs
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (pattern.rstrip("*") for pattern in include["include"]):
        assert f"COPY {package} ./{package}" in dockerfile


HARD_PASSWORD = "p@ss/w%rd:#?&=+ 'x\"y"  # every character that breaks a hand-built URL


async def _connect_as_the_containers_do(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


def test_a_password_with_url_characters_works(
    services: dict[str, dict[str, Any]], pg: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The containers' DATABASE_URL + PGPASSWORD, pointed at the test server, with a password that needs
    a real check (scram for this one role) and holds ``@ / % :``: migrate, then connect, as serve does."""
    role, database = "dzone_pw_check", "dzone_pw_check"
    admin = pg.admin_url
    hba_changed = _require_password_for(pg, role)
    try:
        asyncio.run(_admin(admin, f"DROP DATABASE IF EXISTS {database}", f"DROP ROLE IF EXISTS {role}"))
        asyncio.run(
            _admin(
                admin,
                f"CREATE ROLE {role} LOGIN PASSWORD '{HARD_PASSWORD.replace(chr(39), chr(39) * 2)}'",
                f"CREATE DATABASE {database} OWNER {role}",
            )
        )
        environment = services["serve"]["environment"]
        compose_url = urlsplit(environment["DATABASE_URL"])
        assert (compose_url.username, compose_url.password) == ("dzone", None)
        server = urlsplit(admin)
        # Only the host, role and database differ from the containers' URL (postgres:5432 is not here).
        url = urlunsplit(
            compose_url._replace(netloc=f"{role}@{server.hostname}:{server.port}", path=f"/{database}")
        )
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("PGPASSWORD", HARD_PASSWORD)
        settings = load(ServeSettings)
        assert settings.database_url == url
        migrate(url)  # alembic (SQLAlchemy over asyncpg), as the migrate service runs it
        assert asyncio.run(_connect_as_the_containers_do(url)) == role
        if hba_changed:  # the password was really checked: a wrong one is refused
            monkeypatch.setenv("PGPASSWORD", HARD_PASSWORD + "nope")
            with pytest.raises(asyncpg.InvalidPasswordError):
                asyncio.run(_connect_as_the_containers_do(url))
    finally:
        asyncio.run(_admin(admin, f"DROP DATABASE IF EXISTS {database}", f"DROP ROLE IF EXISTS {role}"))


def _require_password_for(pg: Any, role: str) -> bool:
    """On the embedded test server (trust for everyone), make ``role`` log in with scram; False elsewhere
    (a Docker postgres:15 checks passwords already; a DATABASE_URL server is left as it is)."""
    if pg.local is None:
        return False
    hba = pg.local.directory / "data" / "pg_hba.conf"
    rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    if not hba.read_text().startswith(rule):
        hba.write_text(rule + hba.read_text())
    asyncio.run(_admin(pg.admin_url, "SELECT pg_reload_conf()"))
    return True


def test_the_nginx_recipe_lists_every_published_port(services: dict[str, dict[str, Any]]) -> None:
    """A rolling restart moves replicas to other ports of the range: nginx must know them all."""
    from tests.nginx import RECIPE, RECIPE_UPSTREAMS

    published = str(services["serve"]["ports"][0]).split(":")[1]
    first, last = (int(port) for port in published.split("-"))
    expected = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in range(first, last + 1))
    assert expected == RECIPE_UPSTREAMS and expected in RECIPE.read_text()
