"""Pytest fixtures for the real loopback SFTP and SMTP servers (127.0.0.1, ephemeral ports).

Register with ``pytest_plugins = ["eams_pipeline_tests.fixtures_servers"]``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.devtools.smtp_server import LoopbackSmtpServer
from eams_pipeline.orchestration.resources import SftpResource

SFTP_PASSWORDS = {"d001": "d001-Secret-pw", "d002": "d002-Other-pw"}
CLIENT_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")


@dataclass(frozen=True)
class ClientKey:
    key_type: str
    private_key_file: Path
    public_line: str


@pytest.fixture(scope="session")
def sftp_client_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientKey]:
    """One unencrypted OpenSSH private key per supported type, written to files."""
    directory = tmp_path_factory.mktemp("client-keys")
    keys = {}
    for key_type in CLIENT_KEY_TYPES:
        key = asyncssh.generate_private_key(key_type, comment=f"test {key_type}")
        path = directory / f"id_{key_type}"
        key.write_private_key(path)
        path.chmod(0o600)
        public_line = key.export_public_key("openssh").decode("ascii").strip()
        keys[key_type] = ClientKey(key_type, path, public_line)
    return keys


@pytest.fixture
def sftp_passwords() -> dict[str, str]:
    """The loopback SFTP server's users and passwords."""
    return dict(SFTP_PASSWORDS)


@pytest.fixture
def sftp_server(
    tmp_path: Path, sftp_client_keys: dict[str, ClientKey]
) -> Iterator[LoopbackSftpServer]:
    """Users d001 and d002 (passwords in SFTP_PASSWORDS); d001 also accepts every client
    key of :func:`sftp_client_keys`. Each user's ``/`` is ``<base>/<user>``."""
    authorized = "\n".join(k.public_line for k in sftp_client_keys.values()) + "\n"
    server = LoopbackSftpServer(
        tmp_path / "sftp",
        SFTP_PASSWORDS,
        host_key_path=tmp_path / "sftp_host_ed25519_key",
        authorized_keys={"d001": authorized},
    )
    with server:
        yield server


@pytest.fixture
def sftp_resource() -> SftpResource:
    """Short timeouts and no retry wait, so failure tests stay fast."""
    return SftpResource(
        connect_timeout_seconds=5,
        banner_timeout_seconds=5,
        auth_timeout_seconds=5,
        operation_timeout_seconds=10,
        connect_attempts=2,
        retry_wait_seconds=0,
    )


@pytest.fixture
def sftp_settings(
    sftp_server: LoopbackSftpServer, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., SftpAccount]:
    """``make(user="d001", **overrides)``: settings for a password login to sftp_server."""

    def make(user: str = "d001", **overrides: object) -> SftpAccount:
        env_name = f"EAMS_TEST_SFTP_{user.upper()}_PASSWORD"
        monkeypatch.setenv(env_name, SFTP_PASSWORDS.get(user, "no-such-user"))
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": sftp_server.port,
            "username": user,
            "host_key": sftp_server.host_key_line,
            "root": "/",
            "password_env": env_name,
        }
        values.update(overrides)
        return SftpAccount(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[LoopbackSmtpServer]:
    """A plain SMTP server without authentication."""
    with LoopbackSmtpServer(tmp_path / "mail") as server:
        yield server


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed CA-less certificate for 127.0.0.1 and its key."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate valid for ``127.0.0.1`` and ``localhost``."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eams test relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "relay.crt"
    key_file = directory / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(cert_file, key_file)
