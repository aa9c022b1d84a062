"""The emails the pipeline sends (SPEC §7); composition only, no I/O.

District emails carry counts and error codes, never student data: the details are in the
error file on the district's SFTP site. Only the fields of the summary named below are
read, counts must be integers and error codes must look like codes, so nothing else can
slip into a message.
"""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from eams_pipeline.core.licenses import LicensesLow, OrderLicenses, license_line
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.core.pauses import FIRST_AFTER_PAUSE, PAUSE_RULES, PAUSED
from eams_pipeline.core.template import HEADER

COUNT_LABELS = (
    ("added", "Students added"),
    ("activated", "Students activated"),
    ("deactivated", "Students deactivated"),
    ("updated", "Students updated"),
    ("unchanged", "Rows without changes"),
    ("errors", "Rows with errors (not applied)"),
)
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_MAX_FILE_ERROR_CHARS = 2000
_WIDTH = 76
_MAX_OPERATOR_ERROR_CHARS = 20000
# the template header, as a message quotes it: an email shows it on one line of its own
_HEADER_LINE = ",".join(HEADER)
_HEADER_WORD = re.compile(f"({re.escape(_HEADER_LINE)}\\S*)")
_FOOTER = [
    "",
    "-- ",
    "MY Access Enterprise AMS (eAMS) batch process. This is an automated message.",
]


def build_upload_email(
    *,
    district_code: str,
    district_name: str,
    contacts: list[str],
    sender: str,
    summary: Mapping[str, object],
    error_file_path: str | None,
    file_error: str | None = None,
    upload_key: str | None = None,
    reviewed_by: str | None = None,
    change_report_path: str | None = None,
    licenses: Sequence[OrderLicenses] = (),
) -> EmailMessage:
    """The outcome email for one upload, to the district's contacts.

    ``upload_key`` (e.g. ``D001-20260114T020000123456Z``) names the upload in the subject
    and the body: it is what the district quotes back; the body names the summary's
    ``upload_id`` beside it (the number in the error file's name), so that support can be
    given either. Without a key the upload id is shown.

    ``licenses``: the district's orders as they are now, one line each in the body (in
    use, total, available).

    ``summary`` is the processing summary (SPEC §8 ``eams process`` keys); ``error_file_path``
    is where the error file was published on the SFTP site (None: it is not there, e.g. an
    upload an operator processed with ``eams process``); ``file_error`` is the file-level
    error (code and message) of a rejected upload. ``reviewed_by`` is the operator who
    approved (processed statuses) or discarded a held upload; the summary's ``guard`` (the
    rule(s) that held it, with their figures) says why it was held.
    """
    if not contacts:
        raise ValueError(f"district {district_code} has no contact address")
    status = str(summary.get("status"))
    upload_id = upload_key if upload_key else summary.get("upload_id")
    district = f"{district_name} ({district_code})"
    reviewer = _printable(reviewed_by, 100) if reviewed_by else None
    reviewed = " after review" if reviewer else ""
    if status == UploadStatus.REJECTED:
        subject = f"eAMS student update FAILED: {district}, upload {upload_id}"
    elif status == UploadStatus.PARTIALLY_PROCESSED:
        errors = _count(summary, "errors")
        subject = (
            f"eAMS student update PARTIALLY processed{reviewed} ({rows_with_errors(errors)}): "
            f"{district}, upload {upload_id}"
        )
    elif status == UploadStatus.PROCESSED:
        subject = f"eAMS student update SUCCESSFUL{reviewed}: {district}, upload {upload_id}"
    elif status == UploadStatus.HELD:
        subject = f"eAMS student update HELD for review: {district}, upload {upload_id}"
    elif status == UploadStatus.DISCARDED:
        subject = f"eAMS student update DISCARDED after review: {district}, upload {upload_id}"
    else:
        raise ValueError(f"unknown upload status {status!r}")

    lines = ["Hello,", ""]
    lines += _result_paragraph(status, district, upload_id, reviewer, _held_rule(summary))
    lines += _upload_names(upload_key, summary.get("upload_id"))
    reasons = _guard_reasons(summary)
    if reasons and (status in (UploadStatus.HELD, UploadStatus.DISCARDED) or reviewer):
        lines += ["", "Why it was held:", *reasons]
    if status in (UploadStatus.HELD, UploadStatus.DISCARDED):
        lines += ["", "Counts the file would have applied:", *_count_table(summary)[1:]]
        missing = _count(summary, "deactivated_missing")
        if missing:
            lines += [f"  {'Students absent from the file':<32}{missing:>8}"]
    elif status == UploadStatus.REJECTED:
        lines += ["", "Error:", *_file_error_lines(_file_error_text(summary, file_error))]
    else:
        lines += ["", *_count_table(summary)]
        missing = _count(summary, "deactivated_missing")
        if missing:
            lines += [f"  {'Deactivated: absent from file':<32}{missing:>8}"]
    lines += _error_codes(summary)
    lines += _license_lines(licenses)
    lines += _error_file_paragraph(status, error_file_path, summary)
    if change_report_path and status in (UploadStatus.PROCESSED, UploadStatus.PARTIALLY_PROCESSED):
        lines += _change_report_paragraph("every change made to your students", change_report_path)
    if status != UploadStatus.PROCESSED and error_file_path:
        lines += [
            "",
            "This message contains no student data; the error file lists each error",
            "with its line number in the uploaded file.",
        ]
    else:
        lines += ["", "This message contains no student data."]
    lines += _FOOTER
    return _message(sender, contacts, subject, "\n".join(lines) + "\n")


def _upload_names(upload_key: str | None, upload_id: object) -> list[str]:
    """The upload's key beside its id (the number in the error file's name), on one line:
    support finds the upload by either."""
    if not upload_key or upload_id is None:
        return []
    if isinstance(upload_id, bool) or not isinstance(upload_id, int):
        raise ValueError(f"upload_id must be an integer, got {type(upload_id).__name__}")
    return ["", f"Upload key {upload_key}, upload id {upload_id}."]


def _license_lines(licenses: Sequence[OrderLicenses]) -> list[str]:
    """One line per order of the district: in use, total, available (never wrapped)."""
    if not licenses:
        return []
    return ["", "Licenses now:", *(f"  {_printable(license_line(o), 300)}" for o in licenses)]


def _file_error_lines(error: str) -> list[str]:
    """A file-level error, its parts (` | `) one paragraph each, wrapped between words; the
    template header it quotes stands on one line of its own, never wrapped, and so does the
    header found (HEADER_MISMATCH's `Found (n names): ...`), under it."""
    lines: list[str] = []
    for part in error.split(" | "):
        label, colon, found = part.partition("): ")
        if part.startswith("Found (") and colon:
            lines += _wrap(f"{label}):", initial_indent="  ", subsequent_indent="  ")
            lines.append(f"    {found.strip()}")
            continue
        # the header with what is glued to it (`Status;`) is one line: no word is split
        pieces = _HEADER_WORD.split(part)
        for k, piece in enumerate(pieces):
            if k % 2:
                lines.append(f"    {piece}")
            else:
                lines += _wrap(piece.strip(), initial_indent="  ", subsequent_indent="  ")
    return lines


def build_failure_email(
    *,
    operators: list[str],
    sender: str,
    district_code: str,
    run_id: str,
    upload_key: str | None,
    error_text: str,
) -> EmailMessage:
    """An alert to the pipeline's operators that a run crashed (not sent to districts).

    ``error_text`` is the exception text or traceback; the caller must not put row values
    in it. It is cut to a bounded length.
    """
    if not operators:
        raise ValueError("no operator address to alert")
    subject = f"eAMS pipeline run FAILED for district {district_code} (run {run_id})"
    text = error_text.strip()
    if len(text) > _MAX_OPERATOR_ERROR_CHARS:
        text = text[:_MAX_OPERATOR_ERROR_CHARS] + "\n[... cut ...]"
    body = "\n".join(
        [
            "A Dagster run of the eAMS pipeline failed.",
            "",
            f"District:   {district_code}",
            f"Run ID:     {run_id}",
            f"Upload:     {upload_key or '(none claimed)'}",
            "",
            "The district was not notified of an outcome. Inspect the run in the Dagster",
            "UI, fix the cause and re-execute it. A claimed upload stays in processed/ on",
            "the district's SFTP site and in the encrypted archive.",
            "",
            "Error:",
            text,
        ]
    )
    return _message(sender, operators, subject, body + "\n")


def build_missing_upload_email(
    *,
    district_code: str,
    district_name: str,
    contacts: list[str],
    operators: list[str],
    sender: str,
    due: dt.datetime,
    since: dt.datetime,
    last_received: dt.datetime | None,
) -> EmailMessage:
    """No students.csv arrived in the 24 hours before the district's ``expected_by``: to
    the district's contacts, the operators in copy."""
    if not contacts and not operators:
        raise ValueError(f"district {district_code} has no contact address")
    district = f"{district_name} ({district_code})"
    subject = f"eAMS: no students.csv received from {district} since {_when(since)}"
    last = _when(last_received) if last_received else "never"
    lines = [
        "Hello,",
        "",
        *_wrap(
            f"No students.csv was received from {district} since {_when(since)}. The nightly "
            f"file is expected by {_when(due)}. The last upload was received: {last}."
        ),
        "",
        *_wrap(
            "Please check that the SIS export ran and that it copies the file to the "
            "incoming/ directory of your eAMS SFTP site, named exactly students.csv. Until a "
            "file arrives, MY Access keeps the students as they are."
        ),
        "",
        "This alert is sent once a day while no file arrives.",
        "",
        "-- ",
        "MY Access Enterprise AMS (eAMS) batch process. This is an automated message.",
    ]
    message = _message(sender, contacts or operators, subject, "\n".join(lines) + "\n")
    if contacts and operators:
        message["Cc"] = ", ".join(operators)
    return message


def build_stray_files_email(
    *,
    district_code: str,
    district_name: str,
    contacts: list[str],
    sender: str,
    files: list[tuple[str, int]],
    more: int = 0,
) -> EmailMessage:
    """The daily digest of the files in incoming/ that are not students.csv: they are not
    processed. ``files``: (name as it can be shown, size) of the files listed; ``more``: how
    many other stray files are there, not listed."""
    if not contacts:
        raise ValueError(f"district {district_code} has no contact address")
    district = f"{district_name} ({district_code})"
    total = len(files) + more
    noun = "file" if total == 1 else "files"
    subject = f"eAMS: {total} {noun} in incoming/ not processed: {district}"
    listing = [f"  incoming/{_printable(name)} ({size} bytes)" for name, size in files]
    if more:
        listing.append(f"  ... and {more} more {'file' if more == 1 else 'files'}")
    lines = [
        "Hello,",
        "",
        *_wrap(
            "Only a file named exactly students.csv is processed. The eAMS SFTP site of "
            f"{district} holds {total} other {noun} in incoming/, left alone and not applied:"
        ),
        "",
        *listing,
        "",
        *_wrap(
            "If one of them is the nightly student file, rename it (or set the SIS export) to "
            "students.csv, lower case, in CSV format (not Excel .xlsx). Please delete the "
            "others. A name shown with \\xNN holds a byte that is not UTF-8 text."
        ),
        "",
        "This notice is sent at most once a day, when a file is new.",
        "",
        "-- ",
        "MY Access Enterprise AMS (eAMS) batch process. This is an automated message.",
    ]
    return _message(sender, contacts, subject, "\n".join(lines) + "\n")


def build_raw_file_kept_email(
    *,
    operators: list[str],
    sender: str,
    district_code: str,
    district_name: str,
    upload_key: str,
    path: str,
    archived_size: int,
    archived_sha256: str,
    raw_size: int,
    raw_sha256: str | None,
) -> EmailMessage:
    """To the operators: a raw upload was kept in processed/ because it is not the copy the
    pipeline archived and processed (its writer went on writing after the claim)."""
    if not operators:
        raise ValueError("no operator address to alert")
    district = f"{district_name} ({district_code})"
    subject = f"eAMS: raw upload {upload_key} kept in processed/: it changed after the claim"
    raw_digest = raw_sha256 or "(not computed: the sizes differ)"
    lines = [
        *_wrap(
            f"The raw upload {path} of {district} is not the file the pipeline archived and "
            f"processed as upload {upload_key}: a client went on writing it after it was "
            "claimed (an upload that paused past the settle window). It was NOT removed."
        ),
        "",
        f"Archived and processed:  {archived_size} bytes, sha256 {archived_sha256}",
        f"Now in processed/:       {raw_size} bytes, sha256 {raw_digest}",
        "",
        *_wrap(
            f"What was applied (or rejected) is the archived copy: see `eams uploads show "
            f"{upload_key}`. A copy cut short is rejected as FILE_TRUNCATED and the district "
            "was told to upload the file again. To process the file as it is now, move it "
            "back to the district's incoming/students.csv (the sensor takes it as a new "
            "upload); otherwise delete it: it holds clear-text passwords."
        ),
        "",
        "This alert is sent once per upload.",
    ]
    return _message(sender, operators, subject, "\n".join(lines) + "\n")


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M %Z").strip()


def _printable(name: str, limit: int = 120) -> str:
    text = "".join(c if c.isprintable() else "?" for c in name)
    return text if len(text) <= limit else text[:limit] + "..."


def build_held_operator_email(
    *,
    operators: list[str],
    sender: str,
    district_code: str,
    district_name: str,
    upload_key: str,
    upload_id: object,
    summary: Mapping[str, object],
    guard_trip: Mapping[str, object],
) -> EmailMessage:
    """To the operators: an upload was held by the change guard, with the rule(s), the
    figures and how to approve or discard it. Counts and percentages only, no student data."""
    if not operators:
        raise ValueError("no operator address to notify")
    trips = guard_trip.get("trips") or []
    if not isinstance(trips, list):
        raise ValueError("guard_trip['trips'] must be a list")
    rules = []
    for t in trips:
        if not isinstance(t, Mapping):
            raise ValueError("a guard trip must be a mapping")
        rule = str(t.get("rule"))
        if not _ERROR_CODE.fullmatch(rule.upper()):
            raise ValueError(f"{rule!r} is not a guard rule")
        rules.append(f"  {rule}: {' '.join(str(t.get('message', '')).split())}")
    subject = (
        f"eAMS upload HELD by the change guard: {district_name} ({district_code}), "
        f"upload {upload_key}"
    )
    missing = _count(summary, "deactivated_missing")
    body = [
        f"The change guard held upload {upload_key} of {district_name} ({district_code}).",
        "Nothing was applied. The district was told that its file is held for review.",
        *_upload_names(upload_key, upload_id),
        "",
        "Rule(s) tripped:",
        *rules,
        "",
        *_count_table(summary),
        *([f"  {'Deactivated: absent from file':<32}{missing:>8}"] if missing else []),
        *_error_codes(summary),
        "",
        "To apply it as it would have been applied (re-planned against the current data):",
        f"  eams uploads approve {upload_key} --by YOUR_NAME",
        "  or in Dagster: re-execute the upload's run with",
        "  ops: {upload_outcome: {config: {approve_hold: true}}}",
        "To discard it (nothing applied; the district is emailed):",
        f"  eams uploads discard {upload_key} --by YOUR_NAME",
        f"Details: eams uploads show {upload_key}",
        "",
        "A newer upload of the district supersedes this one (then approving it needs",
        "--allow-older).",
    ]
    return _message(sender, operators, subject, "\n".join(body) + "\n")


def _result_paragraph(
    status: str,
    district: str,
    upload_id: object,
    reviewer: str | None = None,
    held_by: str | None = None,
) -> list[str]:
    """The email's first paragraph; `held_by`: the rule that held the upload (the first)."""
    intro = f"The students.csv file uploaded by {district} (upload {upload_id}) was"
    why = _HELD_BECAUSE.get(held_by or "", _HELD_BECAUSE[""])
    approved = (
        f"{intro} HELD for review because {why}, then APPROVED after review by {reviewer} "
        "and applied:"
    )
    if status == UploadStatus.REJECTED:
        text = (
            f"{intro} REJECTED. Nothing was applied: no student was added, changed, "
            "activated or deactivated. Please correct the file and upload it again."
        )
    elif status == UploadStatus.PARTIALLY_PROCESSED:
        head = approved if reviewer else f"{intro} PARTIALLY processed:"
        text = (
            f"{head} all valid rows were applied; the rows with errors were not. Please "
            "correct those rows and include them in the next upload."
        )
    elif status == UploadStatus.HELD:
        text = (
            f"{intro} HELD FOR REVIEW: {why}, so NOTHING was applied. Our operators will "
            "review it and apply or discard it; you will get another message. "
            + _HELD_ADVICE.get(held_by or "", _HELD_ADVICE[""])
        )
    elif status == UploadStatus.DISCARDED:
        by = f" by {reviewer}" if reviewer else ""
        text = (
            f"{intro} DISCARDED after review{by}: it was held because {why}, and nothing of "
            "it was applied. Please check the export from your SIS and upload a corrected "
            "file."
        )
    elif reviewer:
        text = f"{approved} every row was applied."
    else:
        text = f"{intro} processed SUCCESSFULLY: every row was applied."
    return _wrap(text)


# why an upload was held, by the rule that held it ("": a rule of the figures)
_HELD_BECAUSE = {
    "": "it would change an unusual share of your students",
    PAUSED: "it arrived while uploads of your district are paused",
    FIRST_AFTER_PAUSE: (
        "it is the first file after a long pause, when a wrong file (last year's "
        "roster, one school only) would do the most damage"
    ),
}
_HELD_ADVICE = {
    "": (
        "If the file is wrong (for example one school only, or every student marked D), "
        "upload a corrected file: it replaces this one."
    ),
    PAUSED: (
        "If it was sent by mistake, nothing needs to be done. If it must be applied "
        "during the pause, tell eAMS support."
    ),
    FIRST_AFTER_PAUSE: (
        "If the file is wrong (for example last year's roster, or one school only), "
        "upload a corrected file: it replaces this one."
    ),
}


def _held_rule(summary: Mapping[str, object]) -> str | None:
    """The rule that held the upload (the first of its guard record), if any."""
    trip = summary.get("guard")
    rule = trip.get("rule") if isinstance(trip, Mapping) else None
    return rule if isinstance(rule, str) else None


# what each rule of the change guard watches, in the district's words
_RULE_LABELS = {
    "max_deactivated_pct": "many students deactivated",
    "max_updated_pct": "many students updated",
    "max_row_drop_pct": "far fewer rows than usual",
    PAUSED: "uploads paused",
    FIRST_AFTER_PAUSE: "first upload after a long pause",
}
# a guard rule's figures: counts, percentages and the words of core.guard, nothing else
_GUARD_TEXT = re.compile(r"[a-z][a-z0-9 ,.%()]{0,300}")
# a pause rule's words (core.pauses): dates and days, nothing else
_PAUSE_TEXT = re.compile(r"[a-z][a-z0-9 ,.;()-]{0,300}")


def _guard_reasons(summary: Mapping[str, object]) -> list[str]:
    """The rule(s) that held the upload, with the night's figures, e.g. `the file
    deactivates 30 of 100 active students, 30%, limit 10%`."""
    trip = summary.get("guard")
    if not trip:
        return []
    trips = trip.get("trips") if isinstance(trip, Mapping) else None
    if not isinstance(trips, list):
        raise ValueError("summary['guard'] must be a guard trip record")
    lines = []
    for t in trips:
        rule = t.get("rule") if isinstance(t, Mapping) else None
        if rule not in _RULE_LABELS:
            raise ValueError(f"{rule!r} is not a guard rule")
        said = " ".join(str(t.get("message", "")).split())
        if rule in PAUSE_RULES:
            if not _PAUSE_TEXT.fullmatch(said):
                raise ValueError(f"the {rule} message must be dates and days")
            reason = f"{_RULE_LABELS[rule]} ({rule}): {said}."
        elif not _GUARD_TEXT.fullmatch(said):
            raise ValueError(f"the {rule} message must be counts and percentages")
        else:
            reason = f"{_RULE_LABELS[rule]} ({rule}): the file {said}."
        lines += _wrap(
            reason,
            initial_indent="  ",
            subsequent_indent="    ",
        )
    return lines


def _wrap(text: str, **indent: str) -> list[str]:
    """Lines of at most _WIDTH characters, broken between words only: a code, a path or
    a header in a message is never cut in two (a longer word gets a line of its own)."""
    return textwrap.wrap(
        text, _WIDTH, break_long_words=False, break_on_hyphens=False, **indent
    )


def _count(summary: Mapping[str, object], key: str) -> int:
    value = summary.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"summary[{key!r}] must be an integer, got {type(value).__name__}")
    return value


def _count_table(summary: Mapping[str, object]) -> list[str]:
    lines = [f"  {'Rows in the file':<32}{_count(summary, 'rows'):>8}"]
    lines += [f"  {label:<32}{_count(summary, key):>8}" for key, label in COUNT_LABELS]
    return ["Counts:", *lines]


def _error_codes(summary: Mapping[str, object]) -> list[str]:
    codes = summary.get("error_codes") or {}
    if not isinstance(codes, Mapping):
        raise ValueError("summary['error_codes'] must be a mapping of code to count")
    rows = []
    for code, count in sorted(codes.items()):
        if not isinstance(code, str) or not _ERROR_CODE.fullmatch(code):
            raise ValueError(f"{code!r} is not an error code")
        rows.append(f"  {code:<32}{_count({'n': count}, 'n'):>8}")
    return ["", "Errors by code:", *rows] if rows else []


def _file_error_text(summary: Mapping[str, object], file_error: str | None) -> str:
    if file_error:
        text = " ".join(file_error.split())
        if len(text) > _MAX_FILE_ERROR_CHARS:
            text = text[:_MAX_FILE_ERROR_CHARS] + " [...]"
        return text
    codes = summary.get("error_codes") or {}
    return ", ".join(sorted(str(c) for c in codes)) if isinstance(codes, Mapping) else "unknown"


def _error_file_paragraph(
    status: str, error_file_path: str | None, summary: Mapping[str, object]
) -> list[str]:
    """Where the error file is: only a file published on the district's SFTP site is
    named; none is mentioned when there is nothing to look at."""
    if status == UploadStatus.PROCESSED:
        return []  # no row errors: nothing to look at
    if error_file_path:
        return [
            "",
            "The error file with every error is on your SFTP site:",
            f"  {error_file_path}",
        ]
    if status != UploadStatus.REJECTED and not _count(summary, "errors"):
        return []  # a held or discarded file without row errors has no error file
    return ["", *_wrap("The error file is not on your SFTP site; eAMS support can send it to you.")]


def _change_report_paragraph(what: str, path: str) -> list[str]:
    return [
        "",
        *_wrap(f"The change report with {what}, one line per changed field, is on your SFTP site:"),
        f"  {path}",
    ]


def rows_with_errors(count: int) -> str:
    """``1 row with errors``, ``6 rows with errors``: the subjects' count of rows not applied."""
    return f"{count} row with errors" if count == 1 else f"{count} rows with errors"


# what a checked file would have come to, in the subject of its check result
_CHECK_VERDICTS = {
    UploadStatus.REJECTED: "the file would be REJECTED",
    UploadStatus.HELD: "the file would be HELD for review",
    UploadStatus.PARTIALLY_PROCESSED: "{errors}",
    UploadStatus.PROCESSED: "no errors",
}


def build_check_email(
    *,
    district_code: str,
    district_name: str,
    contacts: list[str],
    sender: str,
    upload_key: str,
    summary: Mapping[str, object],
    report_path: str,
    file_error: str | None = None,
) -> EmailMessage:
    """The result of a check drop (``check/students.csv``): the engine ran the file as a
    dry run against MY Access as it is now and applied nothing.

    ``summary`` is the dry run's summary (SPEC §8 keys) whose ``status`` is what the file
    would have come to as an upload (processed, partially_processed, rejected or held) and
    whose ``guard`` is the change guard's verdict (None: it would let the file through);
    ``report_path`` is where the check report was published on the SFTP site;
    ``file_error`` the file-level error (code and message) of a file that would be
    rejected. Counts, codes and the guard's figures only: no student data.
    """
    if not contacts:
        raise ValueError(f"district {district_code} has no contact address")
    status = str(summary.get("status"))
    if status not in _CHECK_VERDICTS:
        raise ValueError(f"{status!r} is not what a checked file can come to")
    district = f"{district_name} ({district_code})"
    verdict = _CHECK_VERDICTS[UploadStatus(status)].format(
        errors=rows_with_errors(_count(summary, "errors"))
    )
    subject = f"eAMS check result: {verdict}, nothing applied: {district}, check {upload_key}"
    would_be = {
        UploadStatus.REJECTED: "REJECTED: nothing of it would be applied.",
        UploadStatus.HELD: "HELD for review by the change guard: nothing of it would be "
        "applied until our operators approve it.",
        UploadStatus.PARTIALLY_PROCESSED: "PARTIALLY processed: the valid rows would be "
        "applied, the rows with errors would not.",
        UploadStatus.PROCESSED: "processed SUCCESSFULLY: every row would be applied.",
    }[UploadStatus(status)]
    lines = [
        "Hello,",
        "",
        *_wrap(
            f"The students.csv file that {district} put in check/ (check {upload_key}) was "
            "CHECKED by the same engine that applies your nightly upload, against your "
            "students in MY Access as they are now. NOTHING was applied: no student was "
            "added, changed, activated or deactivated, and no password was stored."
        ),
        "",
        *_wrap(f"Uploaded to incoming/ now, the file would be {would_be}"),
    ]
    if status == UploadStatus.REJECTED:
        error = _file_error_text(summary, file_error)
        lines += ["", "Error:", *_wrap(error, initial_indent="  ", subsequent_indent="  ")]
        lines += ["", *_wrap("Change guard: not evaluated (the file would be rejected).")]
    else:
        reasons = _guard_reasons(summary)
        if reasons:
            lines += ["", "Change guard: it WOULD HOLD the file for review:", *reasons]
        else:
            lines += ["", *_wrap("Change guard: it would let the file through.")]
        lines += ["", "Counts the file would apply:", *_count_table(summary)[1:]]
        missing = _count(summary, "deactivated_missing")
        if missing:
            lines += [f"  {'Deactivated: absent from file':<32}{missing:>8}"]
    lines += _error_codes(summary)
    has_errors = status == UploadStatus.REJECTED or _count(summary, "errors") > 0
    lines += [
        "",
        "The check report is on your SFTP site:",
        f"  {report_path}",
        *_wrap(
            "It lists every error with its line number in the checked file."
            if has_errors
            else "It holds only the header line: the file has no errors."
        ),
        "",
        *_wrap(
            "Tonight's upload is checked again against your students as they are then: "
            "changes made in between (another upload) can change these figures."
        ),
        "",
        "This message contains no student data.",
        "",
        "-- ",
        "MY Access Enterprise AMS (eAMS) batch process. This is an automated message.",
    ]
    return _message(sender, contacts, subject, "\n".join(lines) + "\n")


def build_revert_email(
    *,
    district_code: str,
    district_name: str,
    contacts: list[str],
    sender: str,
    upload_key: str,
    reverted_by: str,
    reverted_at: dt.datetime | None,
    counts: Mapping[str, object],
    change_report_path: str | None = None,
    upload_id: int | None = None,
    licenses: Sequence[OrderLicenses] = (),
) -> EmailMessage:
    """An operator reverted an applied upload: what was put back (counts only; the change
    report of the revert at ``change_report_path`` on the SFTP site, when it is there), and
    the district's licenses now."""
    if not contacts:
        raise ValueError(f"district {district_code} has no contact address")
    district = f"{district_name} ({district_code})"
    when = f" on {_when(reverted_at.astimezone(dt.UTC))}" if reverted_at else ""
    subject = f"eAMS student update REVERTED: {district}, upload {upload_key}"
    lines = [
        "Hello,",
        "",
        *_wrap(
            f"The changes that upload {upload_key} of {district} made to your students were "
            f"REVERTED by {_printable(reverted_by, 100)}{when}: MY Access holds those "
            "students as they were before that upload."
        ),
        "",
        "What was put back:",
        f"  {'Students restored as before':<40}{_count(counts, 'restored'):>8}",
        f"  {'Students it had added, deactivated':<40}{_count(counts, 'created_deactivated'):>8}",
        "",
        *_wrap(
            "Restored students have their data, status, school and order of before the "
            "upload; the licenses moved back with them. Students the upload had added keep "
            "their accounts, deactivated (their usernames stay reserved). If the reverted "
            "changes came from wrong data in your SIS, correct it there before the next "
            "upload, or they may be applied again."
        ),
        *_upload_names(upload_key, upload_id),
        *_license_lines(licenses),
        *(
            _change_report_paragraph("every change the revert made", change_report_path)
            if change_report_path
            else []
        ),
        "",
        "This message contains no student data.",
        *_FOOTER,
    ]
    return _message(sender, contacts, subject, "\n".join(lines) + "\n")


def build_licenses_low_email(
    *,
    district_code: str,
    district_name: str,
    contacts: list[str],
    account_managers: list[str],
    sender: str,
    low: LicensesLow,
    upload_key: str | None = None,
) -> EmailMessage:
    """The district's Enterprise order is running low on licenses (or an upload had rows
    refused NO_LICENSE_AVAILABLE): to its contacts, its account managers in copy. Figures
    only, no student data."""
    if not contacts and not account_managers:
        raise ValueError(f"district {district_code} has no contact address")
    district = f"{district_name} ({district_code})"
    order = low.order
    number = _printable(order.number, 100)
    subject = (
        f"eAMS licenses running low: {district}, order {number}: "
        f"{order.available} of {order.total} available"
    )
    lines = ["Hello,", ""]
    if low.no_license_rows:
        noun = "row" if low.no_license_rows == 1 else "rows"
        lines += _wrap(
            f"Upload {upload_key} of {district} had {low.no_license_rows} {noun} refused with "
            f"NO_LICENSE_AVAILABLE: the Enterprise order {number} had no free license left "
            "for those students, and the rows were not applied (its error file lists them)."
        )
    else:
        lines += _wrap(
            f"The Enterprise order {number} of {district} is running low on licenses: fewer "
            f"than {low.threshold} are available."
        )
    lines += [
        "",
        "Licenses now:",
        f"  {_printable(license_line(order), 300)}",
        "",
        *_wrap(
            (
                f"You are alerted when fewer than {low.threshold} licenses of the Enterprise "
                "order are available (low_licenses)."
                if low.threshold
                else "You are not alerted by the number of available licenses (low_licenses: 0)."
            )
            + " A row that activates or adds a student while no license is free fails with "
            "NO_LICENSE_AVAILABLE and is not applied. To free licenses, deactivate the "
            "students who left (status D in the nightly file); to add licenses to the order, "
            "contact your Vantage account manager."
        ),
        "",
        *_wrap(
            "This alert is sent at most once a day, and for every upload with rows refused "
            "for want of a license."
        ),
        "",
        "This message contains no student data.",
        *_FOOTER,
    ]
    message = _message(sender, contacts or account_managers, subject, "\n".join(lines) + "\n")
    copy = [a for a in account_managers if a not in contacts]
    if contacts and copy:
        message["Cc"] = ", ".join(copy)
    return message


def _message(sender: str, recipients: list[str], subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message
