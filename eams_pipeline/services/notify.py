"""The district's outcome email for an upload, the same from the Dagster job and from the
CLI's approve and discard (composition only: the callers send it)."""

from __future__ import annotations

from email.message import EmailMessage

from eams_pipeline.core.notifications import build_upload_email
from eams_pipeline.core.outcome import FAILURE_STATUSES, UploadResult
from eams_pipeline.db.districts import District


def district_outcome_email(
    district: District,
    result: UploadResult,
    *,
    upload_key: str,
    error_file: str | None,
    sender: str,
) -> tuple[EmailMessage, tuple[str, ...]]:
    """The email and its recipients: the contacts, plus the failure contacts when the file
    was rejected or held."""
    recipients = (
        district.failure_recipients if result.status in FAILURE_STATUSES else district.contacts
    )
    file_error = result.file_error
    message = build_upload_email(
        district_code=district.code,
        district_name=district.name,
        contacts=list(recipients),
        sender=sender,
        summary=result.summary(error_file),
        error_file_path=error_file if result.has_errors else None,
        file_error=f"{file_error.code}: {file_error.message}" if file_error else None,
        upload_key=upload_key,
    )
    return message, recipients
