"""The names of things, in one place: the district's SFTP directories and files, the upload
key, the raw file's name once claimed, the error file's and the change report's names.

    incoming/students.csv             the district writes here (``*.filepart``: in progress)
    check/students.csv                a check drop: validated as a dry run, never applied
    processed/students_<key>.csv      the raw file once claimed, until retention removes it
    errors/students_errors_<id>.csv   the error file (SPEC §5: named by upload id)
    reports/students_check_<key>.csv  a check drop's report (the error file's columns)
    reports/students_changes_<key>.csv         what the applied upload changed
    reports/students_changes_<key>_revert.csv  what its revert put back

An upload key is ``<district>-<UTC time received, to the microsecond>``, e.g.
``D001-20260115T020000123456Z``: unique per district, ordered by time, and safe as a Dagster
partition key, a run tag and a file name.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

# the district's SFTP directories (SPEC §6)
INCOMING = "incoming"
ERRORS = "errors"
PROCESSED = "processed"
CHECK = "check"  # students.csv to check only (a dry run, nothing applied)
REPORTS = "reports"  # reports the pipeline publishes (change reports, checks)
# the directories of a district's root, created when missing
DISTRICT_DIRS = (INCOMING, ERRORS, PROCESSED, CHECK, REPORTS)

UPLOAD_NAME = "students.csv"
PARTIAL_SUFFIX = ".filepart"  # WinSCP's temporary name while a transfer is in progress

_KEY = re.compile(r"(?P<district>[A-Za-z0-9_-]{1,32})-(?P<stamp>\d{8}T\d{12}Z)")
PROCESSED_NAME = re.compile(r"students_(?P<key>[A-Za-z0-9_-]+)\.csv")
ERROR_FILE_NAME = re.compile(r"students_errors_(?P<id>\d+)\.csv")
# reports/: students_check_<upload key>.csv, students_changes_<upload key>[_revert].csv and
# other kinds of report of an upload
REPORT_FILE_NAME = re.compile(
    r"students_(?P<kind>[a-z]+)_(?P<key>[A-Za-z0-9_-]{1,32}-\d{8}T\d{12}Z)(?:_revert)?\.csv"
)


class BadUploadKey(ValueError):
    pass


def make_upload_key(district_code: str, received_at: dt.datetime) -> str:
    """`<district>-<UTC time to the microsecond>`: safe as a Dagster partition key."""
    stamp = received_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{district_code}-{stamp}"


@dataclass(frozen=True)
class UploadRef:
    """What an upload key says: the district and the time the upload was received."""

    key: str
    district: str
    received_at: dt.datetime

    @classmethod
    def parse(cls, key: str) -> UploadRef:
        match = _KEY.fullmatch(key)
        if match is None:
            raise BadUploadKey(
                f"{key!r} is not an upload key (<district>-<YYYYMMDDTHHMMSSffffffZ>)"
            )
        received_at = dt.datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S%fZ").replace(
            tzinfo=dt.UTC
        )
        return cls(key=key, district=match["district"], received_at=received_at)

    @classmethod
    def new(cls, district: str, received_at: dt.datetime) -> UploadRef:
        return cls.parse(make_upload_key(district, received_at))

    @property
    def processed_name(self) -> str:
        """The file's name in ``processed/`` once claimed."""
        return processed_name(self.key)


def is_upload_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None


def processed_name(upload_key: str) -> str:
    """The raw file's name in ``processed/`` once claimed."""
    return f"students_{upload_key}.csv"


def error_file_name(upload_id: int | None) -> str:
    """SPEC §5: the error file's name in the district's ``errors/`` directory (and the
    CLI's default local name; ``dry-run`` for a dry run, which has no upload id)."""
    return f"students_errors_{upload_id if upload_id is not None else 'dry-run'}.csv"


def check_report_name(upload_key: str) -> str:
    """A check drop's report in the district's ``reports/`` directory: the error file's
    columns (SPEC §5), only the header when the file is clean."""
    return f"students_check_{upload_key}.csv"


def change_report_name(upload_key: str, *, revert: bool = False) -> str:
    """The change report of an upload (`students_changes_<upload key>.csv`), or of its revert
    (`students_changes_<upload key>_revert.csv`), in ``reports/``."""
    return f"students_changes_{upload_key}{'_revert' if revert else ''}.csv"
