"""The encrypted upload archive, on a real directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from eams_pipeline.config import ConfigError
from eams_pipeline.io.archive import (
    Archive,
    ArchiveConflictError,
    ArchiveError,
    generate_key,
    sha256,
)
from eams_pipeline.orchestration.resources import ArchiveResource

UPLOAD = (
    b"School Code,Student ID,Last Name,First Name,Middle Name,Grade,Username,Password,"
    b"Email,Class Name,Status\n"
    b"101,S-000123,Quixotic-Zephyrine,Marisol,,5,mzephyr123,Hunter2-Secret!,,,A\n"
)


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(tmp_path / "archive", generate_key())


def test_round_trip(archive: Archive) -> None:
    stored = archive.store("D001", "20260301T020000Z-1", UPLOAD)
    assert stored.path == str(archive.directory / "D001" / "20260301T020000Z-1.csv.fernet")
    assert stored.sha256 == hashlib.sha256(UPLOAD).hexdigest() == sha256(UPLOAD)
    assert archive.load(stored.path) == UPLOAD
    assert archive.load(stored.path, expected_sha256=stored.sha256) == UPLOAD


def test_the_file_on_disk_holds_no_readable_upload(archive: Archive) -> None:
    stored = archive.store("D001", "u1", UPLOAD)
    raw = Path(stored.path).read_bytes()
    for secret in (b"Hunter2-Secret!", b"S-000123", b"Quixotic-Zephyrine", b"mzephyr123"):
        assert secret not in raw
    assert Path(stored.path).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in Path(stored.path).parent.iterdir()) == ["u1.csv.fernet"]


def test_wrong_key_cannot_read_it(archive: Archive) -> None:
    stored = archive.store("D001", "u1", UPLOAD)
    other = Archive(archive.directory, generate_key())
    with pytest.raises(ArchiveError, match="cannot decrypt"):
        other.load(stored.path)


def test_a_damaged_file_is_detected(archive: Archive) -> None:
    stored = archive.store("D001", "u1", UPLOAD)
    token = bytearray(Path(stored.path).read_bytes())
    token[len(token) // 2] ^= 0x01
    Path(stored.path).write_bytes(bytes(token))
    with pytest.raises(ArchiveError):
        archive.load(stored.path)


def test_expected_sha256_mismatch_is_an_error(archive: Archive) -> None:
    stored = archive.store("D001", "u1", UPLOAD)
    with pytest.raises(ArchiveError, match="does not match"):
        archive.load(stored.path, expected_sha256=sha256(b"something else"))


def test_storing_the_same_content_twice_is_a_no_op(archive: Archive) -> None:
    first = archive.store("D001", "u1", UPLOAD)
    before = Path(first.path).read_bytes()  # Fernet tokens differ per encryption
    second = archive.store("D001", "u1", UPLOAD)
    assert second == first
    assert Path(first.path).read_bytes() == before


def test_different_content_for_the_same_upload_is_refused(archive: Archive) -> None:
    archive.store("D001", "u1", UPLOAD)
    with pytest.raises(ArchiveConflictError):
        archive.store("D001", "u1", UPLOAD + b"101,S-9,X,Y,,5,xy99,Passw0rd!,,,A\n")
    assert archive.load(str(archive.path_for("D001", "u1"))) == UPLOAD


def test_districts_are_kept_apart(archive: Archive) -> None:
    a = archive.store("D001", "u1", b"one")
    b = archive.store("D002", "u1", b"two")
    assert a.path != b.path
    assert (archive.load(a.path), archive.load(b.path)) == (b"one", b"two")


@pytest.mark.parametrize(("district", "key"), [("../D001", "u1"), ("D001", "../x"), ("D001", "")])
def test_unsafe_names_are_refused(archive: Archive, district: str, key: str) -> None:
    with pytest.raises(ValueError):
        archive.store(district, key, UPLOAD)
    assert not archive.directory.exists()


def test_key_rotation_first_key_encrypts_all_keys_decrypt(tmp_path: Path) -> None:
    old_key, new_key = generate_key(), generate_key()
    old = Archive(tmp_path, old_key)
    old_file = old.store("D001", "u1", b"old")
    rotated = Archive(tmp_path, f"{new_key}, {old_key}")
    new_file = rotated.store("D001", "u2", b"new")
    assert rotated.load(old_file.path) == b"old"
    assert Archive(tmp_path, new_key).load(new_file.path) == b"new"
    with pytest.raises(ArchiveError):
        old.load(new_file.path)


def test_from_env_with_key_and_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EAMS_ARCHIVE_KEY", generate_key())
    monkeypatch.setenv("EAMS_ARCHIVE_DIR", str(tmp_path / "a"))
    archive = _archive_from_env()
    stored = archive.store("D001", "u1", UPLOAD)
    assert Path(stored.path).is_relative_to(tmp_path / "a")


def test_from_env_with_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    key_file = tmp_path / "archive.key"
    key_file.write_text(key + "\n")
    monkeypatch.delenv("EAMS_ARCHIVE_KEY", raising=False)
    monkeypatch.setenv("EAMS_ARCHIVE_KEY_FILE", str(key_file))
    monkeypatch.setenv("EAMS_ARCHIVE_DIR", str(tmp_path / "a"))
    stored = _archive_from_env().store("D001", "u1", UPLOAD)
    assert Archive(tmp_path, key).load(stored.path) == UPLOAD


def test_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EAMS_ARCHIVE_KEY", raising=False)
    monkeypatch.delenv("EAMS_ARCHIVE_KEY_FILE", raising=False)
    with pytest.raises(ConfigError, match="EAMS_ARCHIVE_KEY"):
        _archive_from_env()


def test_malformed_key_is_a_config_error_that_does_not_echo_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Archive(tmp_path, "not-a-fernet-key-but-secret-text")
    assert "not-a-fernet-key-but-secret-text" not in str(info.value)


def _archive_from_env() -> Archive:
    """The archive as the code location configures it (ArchiveResource)."""
    return ArchiveResource().get()
