"""The district's email for an upload's recorded outcome, the same from the Dagster job
(district_email) and from the CLI's approve, discard and revert (composition only: the
callers send it)."""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage

from eams_pipeline.core.licenses import OrderLicenses
from eams_pipeline.core.notifications import build_revert_email, build_upload_email
from eams_pipeline.core.outcome import FAILURE_STATUSES, UploadResult, UploadStatus
from eams_pipeline.db.districts import District
from eams_pipeline.db.uploads import UploadRow

# outcomes the district is not told of: superseded (an older file, never applied: the
# newer one's email says what was applied), received (no outcome yet); checked (a check
# drop: its check result is sent by its own run, services.check)
NOT_EMAILED = frozenset({UploadStatus.SUPERSEDED, UploadStatus.RECEIVED, UploadStatus.CHECKED})


def district_outcome_email(
    district: District,
    result: UploadResult,
    *,
    upload_key: str,
    error_file: str | None,
    sender: str,
    licenses: Sequence[OrderLicenses],
    upload: UploadRow | None = None,
    change_report: str | None = None,
) -> tuple[EmailMessage, tuple[str, ...]]:
    """The email and its recipients: the contacts, plus the failure contacts when the file
    was rejected or held, and when a held file was decided (they were told it was held).
    `error_file` is the error file's path on the district's SFTP site (None when it is not
    there: it is then not pointed to), `change_report` the change report's (None: not
    there). `licenses`: the district's orders now (db.export.order_licenses), one line
    each. `upload` (the recorded upload) adds the review: why it was held, who approved
    or discarded it."""
    file_error = result.file_error
    summary = result.summary(error_file)
    reviewed_by = None
    if upload is not None:
        if upload.guard_trip is not None:
            summary["guard"] = upload.guard_trip  # the figures of the night it was held
        if upload.decision in ("approved", "discarded"):
            reviewed_by = upload.decided_by or "an operator"
    told_of_failure = result.status in FAILURE_STATUSES or reviewed_by is not None
    recipients = district.failure_recipients if told_of_failure else district.contacts
    message = build_upload_email(
        district_code=district.code,
        district_name=district.name,
        contacts=list(recipients),
        sender=sender,
        summary=summary,
        error_file_path=error_file if result.has_errors else None,
        change_report_path=change_report,
        file_error=f"{file_error.code}: {file_error.message}" if file_error else None,
        upload_key=upload_key,
        reviewed_by=reviewed_by,
        licenses=licenses,
    )
    return message, recipients


def recorded_outcome_email(
    district: District,
    upload: UploadRow,
    result: UploadResult,
    *,
    error_file: str | None,
    sender: str,
    licenses: Sequence[OrderLicenses],
    change_report: str | None = None,
) -> tuple[EmailMessage, tuple[str, ...]] | None:
    """The district's email for what is recorded of the upload now: its outcome (after a
    review: who approved or discarded it), what a revert put back, or None when the district
    is not told (NOT_EMAILED). `change_report`: the path on the district's SFTP site of the
    change report of what was applied, or of what the revert put back (None: not there)."""
    if upload.status in NOT_EMAILED:
        return None
    if upload.status == UploadStatus.REVERTED:
        message = build_revert_email(
            district_code=district.code,
            district_name=district.name,
            contacts=list(district.contacts),
            sender=sender,
            upload_key=upload.upload_key,
            reverted_by=upload.reverted_by or "an operator",
            reverted_at=upload.reverted_at,
            counts=upload.revert_counts or {"restored": 0, "created_deactivated": 0},
            change_report_path=change_report,
            upload_id=upload.upload_id,
            licenses=licenses,
        )
        return message, tuple(district.contacts)
    return district_outcome_email(
        district,
        result,
        upload_key=upload.upload_key,
        error_file=error_file,
        sender=sender,
        licenses=licenses,
        upload=upload,
        change_report=change_report,
    )
