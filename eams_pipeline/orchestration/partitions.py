"""Uploads as dynamic partitions: one partition per upload, keyed by district and time.

A key is ``<district code>-<UTC time to the microsecond>``, e.g.
``D001-20260114T020000000000Z`` (``eams_pipeline.db.uploads.make_upload_key``): the time the
pipeline took the file in. Keys hold only ``A-Z a-z 0-9 _ -`` and the digits of the time, so
never ``|``, ``,`` or ``...`` (which Dagster reserves in partition ranges and lists).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import dagster as dg

from eams_pipeline.db.uploads import make_upload_key

UPLOADS = dg.DynamicPartitionsDefinition(name="uploads")

# run tags
DISTRICT_TAG = "eams/district"
FILE_SIZE_TAG = "eams/file_size"
FILE_MTIME_TAG = "eams/file_mtime"

_KEY = re.compile(r"(?P<district>[A-Za-z0-9_-]{1,32})-(?P<stamp>\d{8}T\d{12}Z)")


class BadUploadKey(ValueError):
    pass


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
        return f"students_{self.key}.csv"


def district_tags(partition_key: str) -> dict[str, str]:
    """The run tags every run of an upload carries (the per-district concurrency limit)."""
    return {DISTRICT_TAG: UploadRef.parse(partition_key).district}


def error_file_name(upload_id: int) -> str:
    """SPEC §5: the error file's name in the district's ``errors/`` directory."""
    return f"students_errors_{upload_id}.csv"
