"""SMTP resource against a real aiosmtpd server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eams_pipeline.config import ConfigError
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.orchestration.resources import SmtpResource, smtp_resource_from_env

if TYPE_CHECKING:
    from eams_pipeline_tests.fixtures_servers import TlsFiles

# aiosmtpd itself warns about AUTH without TLS and about its own deprecated login_data
ignore_auth_without_tls = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning"
)
ignore_login_data = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)


def _message(subject: str = "eAMS student update SUCCESSFUL: Springfield (D001)") -> EmailMessage:
    message = EmailMessage()
    message["To"] = "sis-admin@springfield.example.org, it@springfield.example.org"
    message["Cc"] = "copy@springfield.example.org"
    message["Subject"] = subject
    message.set_content("Rows in the file: 3\nÉcole Élémentaire: all good\n")
    return message


def test_plain_send_is_captured_with_subject_recipients_and_sender(
    smtp_server: LoopbackSmtpServer,
) -> None:
    SmtpResource(port=smtp_server.port, sender="eams@vantage.example").send(_message())

    assert len(smtp_server.received) == 1
    mail = smtp_server.received[0]
    assert mail.mail_from == "eams@vantage.example"
    assert set(mail.rcpt_tos) == {
        "sis-admin@springfield.example.org",
        "it@springfield.example.org",
        "copy@springfield.example.org",
    }
    got = smtp_server.messages[0]
    assert got["Subject"] == "eAMS student update SUCCESSFUL: Springfield (D001)"
    assert got["From"] == "eams@vantage.example"
    assert "École Élémentaire: all good" in got.get_content()
    assert mail.path.parent == smtp_server.maildir
    assert mail.path.suffix == ".eml"
    assert b"Subject: eAMS student update SUCCESSFUL" in mail.path.read_bytes()


def test_an_explicit_from_header_is_kept(smtp_server: LoopbackSmtpServer) -> None:
    message = _message()
    message["From"] = "district-mail@vantage.example"
    SmtpResource(port=smtp_server.port).send(message)
    assert smtp_server.received[0].mail_from == "district-mail@vantage.example"


def test_every_message_gets_its_own_file(smtp_server: LoopbackSmtpServer) -> None:
    resource = SmtpResource(port=smtp_server.port)
    for n in range(3):
        resource.send(_message(f"subject {n}"))
    files = sorted(smtp_server.maildir.glob("*.eml"))
    assert len(files) == 3
    assert [m["Subject"] for m in smtp_server.wait_for(3)] == [
        "subject 0",
        "subject 1",
        "subject 2",
    ]


def test_stopped_server_refuses_the_connection(smtp_server: LoopbackSmtpServer) -> None:
    resource = SmtpResource(port=smtp_server.port, timeout_seconds=5)
    smtp_server.stop()
    with pytest.raises(OSError):
        resource.send(_message())


@ignore_auth_without_tls
@ignore_login_data
def test_login_with_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_TEST_SMTP_PW", "relay-pw-1")
    with LoopbackSmtpServer(tmp_path / "mail", users={"eams": "relay-pw-1"}) as server:
        good = SmtpResource(port=server.port, username="eams", password_env="EAMS_TEST_SMTP_PW")
        good.send(_message())
        assert len(server.messages) == 1

        monkeypatch.setenv("EAMS_TEST_SMTP_PW", "wrong")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            good.send(_message())

        monkeypatch.delenv("EAMS_TEST_SMTP_PW")
        with pytest.raises(ConfigError, match="EAMS_TEST_SMTP_PW"):
            good.send(_message())

        with pytest.raises(smtplib.SMTPSenderRefused):  # the server requires AUTH
            SmtpResource(port=server.port).send(_message())
        assert len(server.messages) == 1


@ignore_login_data
def test_starttls_with_a_private_ca_and_login(
    tmp_path: Path, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAMS_SMTP_PASSWORD", "tls-pw")
    server = LoopbackSmtpServer(
        tmp_path / "mail", users={"eams": "tls-pw"}, tls_context=tls_files.server_context()
    )
    with server:
        resource = SmtpResource(
            port=server.port, security="starttls", username="eams", ca_file=str(tls_files.cert_file)
        )
        resource.send(_message())
        assert len(server.messages) == 1

        untrusted = SmtpResource(port=server.port, security="starttls", username="eams")
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.send(_message())
        assert len(server.messages) == 1


def test_implicit_tls(tmp_path: Path, tls_files: TlsFiles) -> None:
    server = LoopbackSmtpServer(
        tmp_path / "mail", tls_context=tls_files.server_context(), implicit_tls=True
    )
    with server:
        SmtpResource(port=server.port, security="ssl", ca_file=str(tls_files.cert_file)).send(
            _message()
        )
        assert server.messages[0]["Subject"].startswith("eAMS student update")
        with pytest.raises(smtplib.SMTPServerDisconnected):  # plain text to a TLS port
            SmtpResource(port=server.port, timeout_seconds=1).send(_message())


def test_unknown_security_mode_is_a_config_error(smtp_server: LoopbackSmtpServer) -> None:
    with pytest.raises(ConfigError, match="security"):
        SmtpResource(port=smtp_server.port, security="tls1.3").send(_message())
    assert smtp_server.messages == []


def test_resource_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EAMS_SMTP_PORT", "EAMS_SMTP_PASSWORD_ENV", "EAMS_SMTP_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EAMS_SMTP_HOST", "relay.example.org")
    monkeypatch.setenv("EAMS_SMTP_SECURITY", "STARTTLS")
    monkeypatch.setenv("EAMS_SMTP_USERNAME", "eams")
    monkeypatch.setenv("EAMS_MAIL_FROM", "eams@vantage.example")

    resource = smtp_resource_from_env()

    assert resource.host == "relay.example.org"
    assert resource.port == 587
    assert resource.security == "starttls"
    assert resource.username == "eams"
    assert resource.password_env == "EAMS_SMTP_PASSWORD"
    assert resource.sender == "eams@vantage.example"

    monkeypatch.setenv("EAMS_SMTP_PORT", "2525")
    monkeypatch.setenv("EAMS_SMTP_PASSWORD_ENV", "RELAY_SECRET")
    resource = smtp_resource_from_env()
    assert (resource.port, resource.password_env) == (2525, "RELAY_SECRET")

    monkeypatch.setenv("EAMS_SMTP_SECURITY", "maybe")
    with pytest.raises(ConfigError, match="EAMS_SMTP_SECURITY"):
        smtp_resource_from_env()


def test_resource_from_empty_environment_is_plain_localhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "EAMS_SMTP_HOST",
        "EAMS_SMTP_PORT",
        "EAMS_SMTP_SECURITY",
        "EAMS_SMTP_USERNAME",
        "EAMS_MAIL_FROM",
    ):
        monkeypatch.delenv(name, raising=False)
    resource = smtp_resource_from_env()
    assert (resource.host, resource.port, resource.security, resource.username) == (
        "127.0.0.1",
        25,
        "none",
        None,
    )
