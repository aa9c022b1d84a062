"""SFTP client against a real asyncssh server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
import pytest

from eams_pipeline.core.master_data import SftpAccount
from eams_pipeline.core.remote_files import RemoteFile
from eams_pipeline.devtools.sftp_server import LoopbackSftpServer
from eams_pipeline.io.sftp import (
    SftpAuthError,
    SftpError,
    SftpFileChangingError,
    SftpFileExistsError,
    SftpFileNotFoundError,
    SftpHostKeyError,
    SftpPathError,
    SftpSession,
    SftpTransientError,
)
from eams_pipeline.orchestration.resources import SftpResource

if TYPE_CHECKING:
    from eams_pipeline_tests.fixtures_servers import ClientKey

MakeSettings = Callable[..., SftpAccount]


def _connect(resource: SftpResource, settings: SftpAccount) -> None:
    """Open a session and close it again."""
    with resource.session(settings):
        pass


def _user_file(server: LoopbackSftpServer, user: str, rel: str, data: bytes) -> Path:
    path = server.user_dir(user) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def d001(sftp_resource: SftpResource, sftp_settings: MakeSettings) -> Iterator[SftpSession]:
    """An open session of d001 with its directories created."""
    with sftp_resource.session(sftp_settings("d001")) as session:
        session.ensure_dirs()
        yield session


def test_ensure_dirs_creates_the_districts_directories_under_the_root(
    sftp_server: LoopbackSftpServer, sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    (sftp_server.user_dir("d001") / "district").mkdir(parents=True)
    with sftp_resource.session(sftp_settings("d001", root="/district")) as session:
        session.ensure_dirs()
        session.ensure_dirs()  # idempotent
    created = sorted(p.name for p in (sftp_server.user_dir("d001") / "district").iterdir())
    assert created == ["check", "errors", "incoming", "processed", "reports"]


def test_list_incoming_reports_name_size_mtime_of_regular_files(
    sftp_server: LoopbackSftpServer, d001
) -> None:
    big = _user_file(sftp_server, "d001", "incoming/students.csv", b"x" * 70_000)
    part = _user_file(sftp_server, "d001", "incoming/students.csv.filepart", b"abc")
    os.utime(big, (1_700_000_000, 1_700_000_123))
    os.utime(part, (1_700_000_000, 1_700_000_456))
    (sftp_server.user_dir("d001") / "incoming" / "subdir").mkdir()

    listing = d001.list_incoming()

    assert listing == [
        RemoteFile(name="students.csv", size=70_000, mtime=1_700_000_123),
        RemoteFile(name="students.csv.filepart", size=3, mtime=1_700_000_456),
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_list_incoming_only_stats_an_unreadable_file(sftp_server: LoopbackSftpServer, d001) -> None:
    path = _user_file(sftp_server, "d001", "incoming/students.csv", b"secret rows")
    path.chmod(0)
    try:
        assert [f.name for f in d001.list_incoming()] == ["students.csv"]
        with pytest.raises(SftpError):
            d001.read("incoming/students.csv")
    finally:
        path.chmod(0o600)


def test_names_that_are_not_utf8_are_listed_not_raised(
    sftp_server: LoopbackSftpServer, d001: SftpSession
) -> None:
    """OpenSSH servers pass names as raw bytes: a Latin-1 name must not stop the listing."""
    root = os.fsencode(sftp_server.user_dir("d001"))
    for directory in (b"incoming", b"errors", b"processed"):
        with open(root + b"/" + directory + b"/Sch\xfcler \x1b.csv", "wb") as f:
            f.write(b"junk")
    _user_file(sftp_server, "d001", "incoming/students.csv", b"x" * 7)
    listing = d001.list_incoming()
    assert [(f.name, f.size) for f in listing] == [
        ("Sch\udcfcler \x1b.csv", 4),
        ("students.csv", 7),
    ]
    assert listing[0].shown == "Sch\\xfcler \\x1b.csv"  # escaped, one line, ASCII
    assert [f.shown for f in d001.list_dir("processed")] == ["Sch\\xfcler \\x1b.csv"]
    d001.put_atomic("errors/students_errors_1.csv", b"published")  # lists errors/ after
    assert (sftp_server.user_dir("d001") / "errors/students_errors_1.csv").read_bytes() == (
        b"published"
    )


def test_read_settled_waits_for_a_changing_file_and_gives_up_when_it_never_settles(
    sftp_server: LoopbackSftpServer, d001: SftpSession
) -> None:
    path = _user_file(sftp_server, "d001", "processed/students_x.csv", b"12345")
    mtime = int(path.stat().st_mtime)
    kwargs = {"settle_seconds": 0.3, "max_wait_seconds": 1.5, "max_bytes": 1 << 20}
    got = d001.read_settled("processed/students_x.csv", expected=(5, mtime), **kwargs)
    assert (got.data, got.waited, got.seen) == (b"12345", 0.0, ())
    # grown since the sensor saw it (5 bytes): watched until unchanged, then read again
    path.write_bytes(b"1234567")
    got = d001.read_settled("processed/students_x.csv", expected=(5, mtime), **kwargs)
    assert got.data == b"1234567" and got.waited >= 0.3 and "has 7 bytes" in got.seen[0]
    assert (
        d001.read_settled(  # larger than allowed: not read
            "processed/students_x.csv", expected=None, **{**kwargs, "max_bytes": 6}
        ).data
        is None
    )

    stop = threading.Event()

    def keep_writing() -> None:
        with path.open("ab") as f:
            while not stop.wait(0.1):
                f.write(b"x")
                f.flush()

    thread = threading.Thread(target=keep_writing, daemon=True)
    thread.start()
    try:
        with pytest.raises(SftpFileChangingError, match=r"still changing after 1\.5s"):
            d001.read_settled("processed/students_x.csv", expected=(5, mtime), **kwargs)
    finally:
        stop.set()
        thread.join(5)


def test_claim_is_one_rename_and_the_source_disappears(
    sftp_server: LoopbackSftpServer, d001
) -> None:
    source = _user_file(sftp_server, "d001", "incoming/students.csv", b"h\n1\n")
    inode = source.stat().st_ino

    new_path = d001.claim("students.csv", "students_42.csv")

    assert new_path == "processed/students_42.csv"
    target = sftp_server.user_dir("d001") / new_path
    assert not source.exists()
    assert target.read_bytes() == b"h\n1\n"
    assert target.stat().st_ino == inode  # renamed, not copied
    assert d001.read(new_path) == b"h\n1\n"
    assert not d001.exists("incoming/students.csv")


def test_claim_from_check_moves_the_check_drop_and_nothing_else(
    sftp_server: LoopbackSftpServer, d001
) -> None:
    upload = _user_file(sftp_server, "d001", "incoming/students.csv", b"upload")
    check = _user_file(sftp_server, "d001", "check/students.csv", b"check")
    assert d001.claim("students.csv", "students_c.csv", source="check") == (
        "processed/students_c.csv"
    )
    assert not check.exists() and upload.read_bytes() == b"upload"
    assert d001.read("processed/students_c.csv") == b"check"
    with pytest.raises(SftpPathError, match="incoming/ or check/"):
        d001.claim("students.csv", "x.csv", source="errors")


def test_claim_fails_when_the_source_is_gone(sftp_server: LoopbackSftpServer, d001) -> None:
    _user_file(sftp_server, "d001", "incoming/students.csv", b"data")
    d001.claim("students.csv", "first.csv")
    with pytest.raises(SftpFileNotFoundError, match=r"d001@127\.0\.0\.1"):
        d001.claim("students.csv", "second.csv")
    assert not d001.exists("processed/second.csv")


def test_claim_never_overwrites_an_existing_target(sftp_server: LoopbackSftpServer, d001) -> None:
    _user_file(sftp_server, "d001", "incoming/students.csv", b"new upload")
    _user_file(sftp_server, "d001", "processed/u1.csv", b"old upload")
    with pytest.raises(SftpFileExistsError):
        d001.claim("students.csv", "u1.csv")
    assert d001.read("processed/u1.csv") == b"old upload"
    assert d001.read("incoming/students.csv") == b"new upload"


def test_put_atomic_replaces_the_file_and_leaves_no_temp_file(
    sftp_server: LoopbackSftpServer, d001
) -> None:
    d001.put_atomic("errors/students_errors_7.csv", b"first")
    payload = b"Line Number,Student ID,Column,Error Code,Message\n" * 2000
    d001.put_atomic("errors/students_errors_7.csv", payload)

    errors_dir = sftp_server.user_dir("d001") / "errors"
    assert [p.name for p in errors_dir.iterdir()] == ["students_errors_7.csv"]
    assert d001.read("errors/students_errors_7.csv") == payload


def test_put_atomic_removes_the_temp_files_of_attempts_that_were_cut_off(
    sftp_server: LoopbackSftpServer, d001
) -> None:
    errors_dir = sftp_server.user_dir("d001") / "errors"
    errors_dir.mkdir(parents=True, exist_ok=True)
    (errors_dir / ".students_errors_7.csv.tmp-0123456789abcdef").write_bytes(b"Line Num")
    (errors_dir / ".students_errors_8.csv.tmp-0123456789abcdef").write_bytes(b"other")
    d001.put_atomic("errors/students_errors_7.csv", b"complete")
    assert sorted(p.name for p in errors_dir.iterdir()) == [
        ".students_errors_8.csv.tmp-0123456789abcdef",  # another file's: not this publish's
        "students_errors_7.csv",
    ]


def test_put_atomic_into_a_missing_directory_fails_and_leaves_nothing(
    sftp_server: LoopbackSftpServer, d001
) -> None:
    with pytest.raises(SftpFileNotFoundError):
        d001.put_atomic("nowhere/file.csv", b"x")
    assert not (sftp_server.user_dir("d001") / "nowhere").exists()


def test_read_and_exists_of_a_missing_file(d001) -> None:
    assert d001.exists("incoming") is True
    assert d001.exists("incoming/students.csv") is False
    with pytest.raises(SftpFileNotFoundError):
        d001.read("incoming/students.csv")


@pytest.mark.parametrize(
    "bad", ["../d002/incoming/students.csv", "/etc/passwd", "incoming/../../x", "", "a\\b"]
)
def test_paths_that_escape_the_root_are_refused(d001, bad: str) -> None:
    with pytest.raises(SftpPathError):
        d001.read(bad)
    with pytest.raises(SftpPathError):
        d001.put_atomic(bad, b"x")


@pytest.mark.parametrize(("name", "target"), [("../students.csv", "a.csv"), ("s.csv", "../a")])
def test_claim_refuses_names_with_directories(d001, name: str, target: str) -> None:
    with pytest.raises(SftpPathError):
        d001.claim(name, target)


def test_users_are_chrooted_to_their_own_directory(
    sftp_server: LoopbackSftpServer, sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    _user_file(sftp_server, "d002", "incoming/students.csv", b"d002 private data")
    _user_file(sftp_server, "d001", "incoming/mine.csv", b"d001 data")

    with sftp_resource.session(sftp_settings("d002")) as d002:  # control: d002 sees it
        assert d002.read("incoming/students.csv") == b"d002 private data"

    with sftp_resource.session(sftp_settings("d001")) as session:
        raw = session.client
        assert sorted(raw.listdir("/")) == ["incoming"]
        assert sorted(raw.listdir("/..")) == ["incoming"]  # .. of / is / in the chroot
        for attempt in ("../d002/incoming/students.csv", "/../d002/incoming/students.csv"):
            with pytest.raises(FileNotFoundError):
                raw.open(attempt).read()
    other_root = sftp_settings("d001", root="/../d002")
    with sftp_resource.session(other_root) as session, pytest.raises(SftpFileNotFoundError):
        session.list_incoming()


def test_wrong_password_is_an_auth_error_without_the_password(
    sftp_resource: SftpResource,
    sftp_settings: MakeSettings,
    sftp_passwords: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = sftp_settings("d001")
    monkeypatch.setenv(settings.password_env, "Wrong-Password-123")
    with pytest.raises(SftpAuthError) as info, sftp_resource.session(settings):
        pass
    message = str(info.value)
    assert f"d001@127.0.0.1:{settings.port}" in message
    assert "Wrong-Password-123" not in message
    assert sftp_passwords["d001"] not in message


def test_unknown_user_is_an_auth_error(
    sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    with pytest.raises(SftpAuthError), sftp_resource.session(sftp_settings("d999")):
        pass


def test_missing_password_variable_is_an_auth_error(
    sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    settings = sftp_settings("d001", password_env="EAMS_TEST_UNSET_VARIABLE_X")
    with pytest.raises(SftpAuthError, match="EAMS_TEST_UNSET_VARIABLE_X"):
        _connect(sftp_resource, settings)


def test_password_from_a_secret_file(
    tmp_path: Path,
    sftp_passwords: dict[str, str],
    sftp_resource: SftpResource,
    sftp_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "d001.password"
    secret.write_text(sftp_passwords["d001"] + "\n", encoding="utf-8")
    monkeypatch.delenv("EAMS_TEST_FILE_PW", raising=False)
    monkeypatch.setenv("EAMS_TEST_FILE_PW_FILE", str(secret))
    with sftp_resource.session(sftp_settings("d001", password_env="EAMS_TEST_FILE_PW")) as s:
        s.ensure_dirs()
        assert s.exists("incoming")


def test_password_from_the_secrets_directory(
    tmp_path: Path,
    sftp_passwords: dict[str, str],
    sftp_resource: SftpResource,
    sftp_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A district added with a password needs a file in the mounted secrets directory (a
    Kubernetes Secret, a host directory), read at the next login: no variable, no restart."""
    name = "EAMS_TEST_DIR_PW_D001"
    monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(f"{name}_FILE", raising=False)
    monkeypatch.setenv("EAMS_SECRETS_DIR", str(tmp_path))
    settings = sftp_settings("d001", password_env=name)
    with pytest.raises(SftpAuthError, match=f"no file {name} in EAMS_SECRETS_DIR"):
        _connect(sftp_resource, settings)
    (tmp_path / name).write_text(sftp_passwords["d001"] + "\n", encoding="utf-8")  # added later
    with sftp_resource.session(settings) as s:
        s.ensure_dirs()
        assert s.exists("incoming")


def test_the_variable_and_its_file_come_before_the_secrets_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eams_pipeline.config import ConfigError, env_secret

    secrets, other = tmp_path / "secrets", tmp_path / "other"
    secrets.mkdir()
    other.mkdir()
    (secrets / "EAMS_TEST_ORDER_PW").write_text("from-the-directory\n", encoding="utf-8")
    (other / "pw").write_text("from-the-file\n", encoding="utf-8")
    monkeypatch.setenv("EAMS_SECRETS_DIR", str(secrets))
    monkeypatch.delenv("EAMS_TEST_ORDER_PW", raising=False)
    monkeypatch.delenv("EAMS_TEST_ORDER_PW_FILE", raising=False)
    assert env_secret("EAMS_TEST_ORDER_PW") == "from-the-directory"
    monkeypatch.setenv("EAMS_TEST_ORDER_PW_FILE", str(other / "pw"))
    assert env_secret("EAMS_TEST_ORDER_PW") == "from-the-file"
    monkeypatch.setenv("EAMS_TEST_ORDER_PW", "from-the-variable")
    assert env_secret("EAMS_TEST_ORDER_PW") == "from-the-variable"
    # only a variable's name is a file name there: nothing outside the directory is read
    (tmp_path / "outside").write_text("not-a-secret", encoding="utf-8")
    assert env_secret("../outside") is None
    assert env_secret("EAMS_TEST_MISSING_PW") is None
    (secrets / "EAMS_TEST_DIR_PW").mkdir()  # unreadable as a file: said, with the path
    with pytest.raises(ConfigError, match="EAMS_TEST_DIR_PW"):
        env_secret("EAMS_TEST_DIR_PW")


def test_other_host_key_is_refused(
    sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    settings = sftp_settings("d001", host_key=other.strip())
    with pytest.raises(SftpHostKeyError, match="host key mismatch"):
        _connect(sftp_resource, settings)


@pytest.mark.parametrize("pin", ["", "ssh-ed25519", "ssh-ed25519 not-base64!", "ssh-foo AAAA"])
def test_missing_or_invalid_pin_is_refused(
    sftp_resource: SftpResource, sftp_settings: MakeSettings, pin: str
) -> None:
    with pytest.raises(SftpHostKeyError):
        _connect(sftp_resource, sftp_settings("d001", host_key=pin))


def test_host_key_persists_across_restarts(tmp_path: Path) -> None:
    key_path = tmp_path / "host_key"
    with LoopbackSftpServer(tmp_path / "a", {"u": "p"}, host_key_path=key_path) as first:
        line = first.host_key_line
    with LoopbackSftpServer(tmp_path / "b", {"u": "p"}, host_key_path=key_path) as second:
        assert second.host_key_line == line
    assert line.startswith("ssh-ed25519 AAAA")
    assert key_path.stat().st_mode & 0o777 == 0o600


def test_stopped_server_is_a_transient_error(
    sftp_server: LoopbackSftpServer, sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    settings = sftp_settings("d001")
    sftp_server.stop()
    with pytest.raises(SftpTransientError, match=rf"127\.0\.0\.1:{settings.port}\b"):
        _connect(sftp_resource, settings)


def test_unresolvable_host_is_a_transient_error(
    sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    settings = sftp_settings("d001", host="no-such-host.invalid")
    with pytest.raises(SftpTransientError), sftp_resource.session(settings):
        pass


def test_silent_server_times_out_as_a_transient_error(sftp_settings: MakeSettings) -> None:
    """A TCP listener that never sends an SSH banner."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    resource = SftpResource(
        connect_timeout_seconds=1, banner_timeout_seconds=0.5, connect_attempts=1
    )
    settings = sftp_settings("d001", port=listener.getsockname()[1])
    started = time.monotonic()
    try:
        with pytest.raises(SftpTransientError), resource.session(settings):
            pass
        assert time.monotonic() - started < 5
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_private_key_authentication(
    sftp_server: LoopbackSftpServer,
    sftp_resource: SftpResource,
    sftp_settings: MakeSettings,
    sftp_client_keys: dict[str, ClientKey],
    key_type: str,
) -> None:
    _user_file(sftp_server, "d001", "incoming/students.csv", b"by key")
    key = sftp_client_keys[key_type]
    settings = sftp_settings("d001", password_env=None, private_key_file=str(key.private_key_file))
    with sftp_resource.session(settings) as session:
        assert session.read("incoming/students.csv") == b"by key"


def test_private_key_not_authorized_for_the_user(
    sftp_resource: SftpResource,
    sftp_settings: MakeSettings,
    sftp_client_keys: dict[str, ClientKey],
) -> None:
    key = sftp_client_keys["ssh-ed25519"]
    settings = sftp_settings("d002", password_env=None, private_key_file=str(key.private_key_file))
    with pytest.raises(SftpAuthError, match="public key authentication failed"):
        _connect(sftp_resource, settings)


def test_unreadable_private_key_file_is_an_auth_error(
    tmp_path: Path, sftp_resource: SftpResource, sftp_settings: MakeSettings
) -> None:
    garbage = tmp_path / "id_garbage"
    garbage.write_text("not a key\n")
    for path in (tmp_path / "missing", garbage):
        settings = sftp_settings("d001", password_env=None, private_key_file=str(path))
        with pytest.raises(SftpAuthError, match="private key file"):
            _connect(sftp_resource, settings)


def test_connect_retries_until_the_server_is_back(
    tmp_path: Path, sftp_server: LoopbackSftpServer, sftp_settings: MakeSettings
) -> None:
    settings = sftp_settings("d001")
    host_key = tmp_path / "sftp_host_ed25519_key"  # the fixture's persisted key
    sftp_server.stop()
    revived = LoopbackSftpServer(
        tmp_path / "sftp",
        {"d001": os.environ[settings.password_env or ""]},
        host_key_path=host_key,
        port=settings.port,
    )
    assert revived.host_key_line == settings.host_key
    timer = threading.Timer(0.3, revived.start)
    timer.start()
    resource = SftpResource(connect_attempts=5, retry_wait_seconds=0.2)
    try:
        with resource.session(settings) as session:
            session.ensure_dirs()
            assert session.exists("processed")
    finally:
        timer.join()
        revived.stop()
    with pytest.raises(SftpTransientError):  # and without retries it fails at once
        _connect(SftpResource(connect_attempts=1), settings)


@pytest.mark.parametrize("operation", ["put_atomic", "list_incoming", "read"])
def test_a_connection_closed_under_an_operation_is_a_transient_error(
    sftp_resource: SftpResource, sftp_settings: MakeSettings, operation: str
) -> None:
    """The server going away mid-transfer may surface as paramiko's plain OSError "Socket is
    closed" (not an EOFError or SSHException, by timing): it is the connection lost, which a
    retry can cure, never a permanent SftpError."""
    with sftp_resource.session(sftp_settings("d001")) as session:
        session.ensure_dirs()
        session.put_atomic("incoming/students.csv", b"x")
        session.client.get_channel().close()
        call = {
            "put_atomic": lambda: session.put_atomic("errors/students_errors_1.csv", b"data"),
            "list_incoming": session.list_incoming,
            "read": lambda: session.read("incoming/students.csv"),
        }[operation]
        with pytest.raises(SftpTransientError, match="connection lost"):
            call()
