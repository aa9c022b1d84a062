"""One builder for what the CLI and the Dagster resources both take from the environment
(services.wiring): the engine, the archive and the mail relay, each default defined once."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from eams_pipeline import config
from eams_pipeline.cli import _engine
from eams_pipeline.io.sftp import SftpConnector
from eams_pipeline.orchestration.resources import (
    ArchiveResource,
    EngineResource,
    SftpResource,
    SmtpResource,
    smtp_resource_from_env,
)
from eams_pipeline.services import wiring
from eams_pipeline.services.process import Engine


def _described(engine: Engine) -> tuple:
    return (
        engine.secret,
        engine.previous_secrets,
        engine.hasher.settings,
        engine.hash_batch_size,
        engine.hash_cache_days,
    )


def test_the_cli_and_dagster_build_the_same_engine_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EAMS_SECRET_KEY", "ab" * 16)
    monkeypatch.setenv("EAMS_SECRET_KEY_PREVIOUS", "old-key")
    monkeypatch.setenv("EAMS_HASH_BATCH_SIZE", "37")
    monkeypatch.setenv("EAMS_HASH_CACHE_DAYS", "3")
    monkeypatch.setenv("EAMS_ARGON2_TIME_COST", "3")
    monkeypatch.setenv("EAMS_HASH_WORKERS", "1")
    built = _described(wiring.engine())
    assert built == (b"ab" * 16, (b"old-key",), config.argon2_settings(), 37, 3)
    assert built[2].time_cost == 3 and built[2].workers == 1
    assert _described(_engine()) == built
    assert _described(EngineResource().get()) == built


def test_the_engine_defaults_are_the_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EAMS_HASH_BATCH_SIZE", "EAMS_HASH_CACHE_DAYS", "EAMS_SECRET_KEY_PREVIOUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("EAMS_SECRETS_DIR", raising=False)
    engine = wiring.engine()
    assert (engine.hash_batch_size, engine.hash_cache_days, engine.previous_secrets) == (
        config.DEFAULT_HASH_BATCH_SIZE,
        config.DEFAULT_HASH_CACHE_DAYS,
        (),
    )
    default = Engine(secret=b"k", hasher=engine.hasher)
    assert (default.hash_batch_size, default.hash_cache_days) == (
        config.DEFAULT_HASH_BATCH_SIZE,
        config.DEFAULT_HASH_CACHE_DAYS,
    )


def test_the_cli_and_dagster_open_the_same_archive(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("EAMS_ARCHIVE_DIR", str(tmp_path / "archive"))
    monkeypatch.setenv("EAMS_ARCHIVE_KEY", key)
    stored = wiring.archive().store("D001", "D001-20260114T020000000000Z", b"a,b\n")
    assert ArchiveResource().get().load(stored.path) == b"a,b\n"
    other = tmp_path / "elsewhere"
    assert ArchiveResource(directory=str(other)).get().directory == wiring.archive(
        str(other)
    ).directory
    monkeypatch.delenv("EAMS_ARCHIVE_KEY")
    with pytest.raises(config.ConfigError, match="EAMS_ARCHIVE_KEY"):
        ArchiveResource().get()


def test_the_resources_defaults_are_the_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "SECURITY", "USERNAME", "PASSWORD_ENV", "CA_FILE"):
        monkeypatch.delenv(f"EAMS_SMTP_{name}", raising=False)
    monkeypatch.delenv("EAMS_SMTP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.delenv("EAMS_MAIL_FROM", raising=False)
    assert SmtpResource().settings() == config.SmtpSettings()
    assert smtp_resource_from_env().settings() == wiring.mail_relay()
    assert wiring.mail_relay() == config.SmtpSettings(
        password_env=config.SMTP_DEFAULT_PASSWORD_ENV
    )
    assert SftpResource().connector() == SftpConnector()
