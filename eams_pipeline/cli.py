"""The `eams` command line (SPEC §8). Same code paths as the Dagster job.

Start-up: each command imports what it needs when it runs (`eams --help` loads neither
pandas, pandera, pyarrow, psycopg nor argon2; `eams process` loads what processing needs
and no more), so the command's wall time stays close to the work it does.

Output: `eams process`, `uploads approve|discard|revert` print a short summary for a person
when standard output is a terminal (`cli_output` makes the lines), and one JSON object with
--json or whenever standard output is not a terminal, so scripts read exactly what they
always read. Every failure is one line on stderr, `eams: error: <message>` (`main`), with
exit code 1; no traceback for anything a user can get wrong.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from eams_pipeline import config
from eams_pipeline.services.progress import LineProgress, Progress

if TYPE_CHECKING:
    import psycopg

    from eams_pipeline.core.outcome import UploadResult
    from eams_pipeline.services.process import Engine

EXIT_OK, EXIT_FAILURE, EXIT_REJECTED, EXIT_HELD, EXIT_SUPERSEDED = 0, 1, 2, 3, 4


def connect() -> psycopg.Connection:  # psycopg is imported by the commands that use it
    from eams_pipeline.db.connection import connect as _connect

    return _connect()


# how much of an argument a message repeats (a district code has at most 32 characters,
# an upload key 55), and of any error message
ECHO_LIMIT = 64
MESSAGE_LIMIT = 1000
_DISTRICT_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")  # sql/001's CHECK
_STUDENT_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


def _echoed(value: str, limit: int = ECHO_LIMIT) -> str:
    """An argument as a message repeats it: quoted, control characters escaped, cut."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def _capped(message: str, limit: int = MESSAGE_LIMIT) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit]}… ({len(message) - limit:,} more characters)"


def _district_code(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """--district: the shape of a district code, checked before any work."""
    if not _DISTRICT_CODE.fullmatch(value):
        raise click.BadParameter(
            f"{_echoed(value)} is not a district code (1 to 32 of A-Z a-z 0-9 _ -)"
        )
    return value


def _student_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """--student: the shape of a Student ID (SPEC §3)."""
    if not _STUDENT_ID.fullmatch(value):
        raise click.BadParameter(
            f"{_echoed(value)} is not a Student ID (1 to 32 of A-Z a-z 0-9 . _ -)"
        )
    return value


def _exit_code(status: object) -> int:
    from eams_pipeline.core.outcome import UploadStatus

    if status == UploadStatus.REJECTED:
        return EXIT_REJECTED
    if status == UploadStatus.HELD:
        return EXIT_HELD
    if status == UploadStatus.SUPERSEDED:
        return EXIT_SUPERSEDED
    return EXIT_OK


def _human(as_json: bool) -> bool:
    """Print for a person? Not with --json, and never when stdout is not a terminal."""
    return not as_json and sys.stdout.isatty()


def _json_option(f: Any) -> Any:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the JSON object even on a terminal (always printed when standard "
        "output is not a terminal).",
    )(f)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        click.echo(f"eams {version('eams-pipeline')}")
    except PackageNotFoundError:  # run from a checkout that was never installed
        click.echo("eams (version unknown: the eams-pipeline package is not installed)")
    ctx.exit(EXIT_OK)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
def cli() -> None:
    """eAMS batch pipeline: students.csv uploads into the MY Access database.

    The database is named by EAMS_DATABASE_URL
    (default postgresql://postgres@127.0.0.1:5432/eams).
    """


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create the database if needed and apply the missing migrations of sql/ (idempotent)."""
    from eams_pipeline.db import migrations
    from eams_pipeline.db.connection import create_database_if_missing

    created = create_database_if_missing()
    with connect() as conn:
        applied = migrations.upgrade(conn)
    click.echo(json.dumps({"database_created": created, "migrations_applied": applied}), err=True)


@cli.group()
def setup() -> None:
    """Master data (districts, schools, orders) entered by Vantage staff."""


@setup.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def setup_load(file: Path) -> None:
    """Load or update master data from FILE.yaml (shape of examples/districts.yaml).

    Loading the same file twice changes nothing; a changed file updates what changed.
    Students under existing_students are created when absent, never overwritten.
    """
    from eams_pipeline.core.master_data import MasterDataError, parse_master_data
    from eams_pipeline.db.setup import load_master_data

    try:
        districts = parse_master_data(file.read_text(encoding="utf-8"))
        with connect() as conn:
            changed = load_master_data(conn, districts)
    except MasterDataError as exc:
        raise click.ClickException(f"{file}: {exc}\nNothing was changed.") from exc
    click.echo(json.dumps({"districts": [d.code for d in districts], "changed": changed}))


@cli.command("process")
@click.option(
    "--district",
    "district_code",
    required=True,
    callback=_district_code,
    help="The district's code.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Report the same figures; change nothing (no error file unless --errors-out).",
)
@click.option(
    "--errors-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the error file (default: ./students_errors_<upload id>.csv).",
)
@click.option(
    "--changes-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the change report (what the applied upload changed, one line per "
    "student and field) to this file.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Show progress on stderr even when it is not a terminal (plain lines).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr, even on a terminal.")
@_json_option
def process_cmd(
    district_code: str,
    file: Path,
    dry_run: bool,
    errors_out: Path | None,
    changes_out: Path | None,
    verbose: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Process FILE as an upload of a district; print its summary.

    Exit code 0 when the file was accepted (even with row errors), 2 when it was
    rejected (file-level error), 3 when the change guard held it (nothing applied: see
    `eams uploads approve|discard`; the district's `pauses` hold a file received now
    within one, or the first after a long one), 4 when it was superseded (an upload of the
    district received after it was applied first: nothing applied), 1 on an operational
    failure.

    On a terminal: a few lines (status, counts, error codes, the error file, the guard's
    rule and the approve/discard commands when held). With --json, or when standard
    output is not a terminal: one JSON object (SPEC §8), and nothing else on stdout.
    Progress (each step with its duration; hashing passwords: done/total, rate, ETA) goes
    to stderr when it is a terminal, or with --verbose.

    --dry-run writes no error file unless --errors-out is given, and records no upload.
    """
    from dataclasses import replace

    from eams_pipeline.core.error_file import render_error_file
    from eams_pipeline.core.names import error_file_name, make_upload_key
    from eams_pipeline.core.outcome import APPLIED_STATUSES
    from eams_pipeline.io.files import NotARegularFile, read_upload_file
    from eams_pipeline.services.process import (
        Upload,
        file_too_large,
        process_upload,
        shown_file_name,
    )

    def error_path(upload_id: int | None) -> str:
        if errors_out is not None:
            return str(errors_out)
        return error_file_name(upload_id)

    # Everything that could stop the command after the upload is committed is checked first.
    try:
        file.name.encode("utf-8")  # the name is recorded with the upload
    except UnicodeEncodeError:
        raise click.ClickException(
            f"{shown_file_name(str(file))}: the file name is not UTF-8 (its bytes are shown "
            "as \\xNN); rename the file and run again. Nothing was read or recorded."
        ) from None
    if errors_out is not None or not dry_run:  # a dry run writes no file of its own
        _check_errors_out(errors_out, file)
    if changes_out is not None:
        if dry_run:
            raise click.ClickException(
                "--changes-out: a dry run changes nothing, so it has no change report"
            )
        _check_output_file("--changes-out", changes_out, file)
    engine = _engine()  # the secret keys' format: before the file is read
    limit = config.max_upload_bytes()
    progress = _progress(verbose=verbose, quiet=quiet)
    try:
        with connect() as conn:
            _require_district(conn, district_code)
            conn.rollback()  # idle again: the processing's first phase runs outside a lock
            try:
                local = read_upload_file(file, limit)
            except NotARegularFile as exc:
                raise click.ClickException(str(exc)) from exc
            received_at = dt.datetime.now(dt.UTC)
            upload = Upload(
                district=district_code,
                data=local.data,
                file_name=file.name,
                key=None if dry_run else make_upload_key(district_code, received_at),
                received_at=received_at,
            )
            if local.too_large:
                upload = replace(upload, rejection=file_too_large(local.size, limit))
            result = process_upload(
                conn,
                upload,
                engine,
                dry_run=dry_run,
                error_file_name=error_path,
                progress=progress,
            )
    finally:
        _close(progress)
    if type(progress) is not Progress:  # progress is shown: end with the total
        click.echo(
            f"eams: processed in {sum(result.timings.values()):.2f} s "
            f"({result.hashed_passwords:,} passwords hashed by this run, "
            f"{result.cached_hashes:,} hashes ready before the lock"
            + (
                f", {result.rekeyed_passwords:,} fingerprints moved to the new secret key)"
                if result.rekeyed_passwords
                else ")"
            ),
            err=True,
        )
    error_file = None
    if result.has_errors and (errors_out is not None or not dry_run):
        error_file = error_path(result.upload_id)
        try:
            Path(error_file).write_bytes(render_error_file(result.errors))
        except OSError as exc:
            # The outcome is committed: report it and exit by it, never as a failure.
            click.echo(
                f"eams: warning: the upload was processed but its error file could not be "
                f"written to {error_file}: {exc.strerror or exc}. The errors are recorded "
                f"with upload {result.upload_id} (table upload_errors).",
                err=True,
            )
            error_file = None
    extra = {}
    if changes_out is not None:
        written = None
        if result.status in APPLIED_STATUSES and upload.key is not None:
            with connect() as conn:
                written = _write_change_report(conn, upload.key, changes_out, revert=False)
        extra["change_report"] = written  # null: nothing was applied (or not written)
    _report_and_exit(
        result,
        error_file,
        extra,
        as_json=as_json,
        upload_key=upload.key,
        dry_run=dry_run,
        approve_file=str(file),
    )


def _report_and_exit(
    result: UploadResult,
    error_file: str | None,
    extra: dict[str, object] | None = None,
    *,
    as_json: bool,
    upload_key: str | None,
    dry_run: bool = False,
    approve_file: str | None = None,
    decided: str | None = None,
) -> NoReturn:
    """Print the upload's summary (for a person, or the JSON object with why a superseded
    upload was not applied on stderr; `extra`: more keys, e.g. the change report's path),
    then exit by its status."""
    summary = {**result.summary(error_file), **(extra or {})}
    if _human(as_json):
        from eams_pipeline import cli_output

        first_error = None
        if result.file_error is not None and len(result.errors):
            first = result.errors.iloc[0]
            first_error = f"{first['code']}: {first['message']}"
        lines = cli_output.upload_summary(
            summary,
            upload_key=upload_key,
            dry_run=dry_run,
            first_error=first_error,
            approve_file=approve_file,
            superseded_by=result.superseded_by,
            superseded_held=result.superseded_held,
            decided=decided,
        )
        click.echo("\n".join(lines))
    else:
        click.echo(json.dumps(summary))
        if result.superseded_by is not None:
            click.echo(
                f"eams: upload {result.upload_id} was not applied: it is superseded by upload "
                f"{result.superseded_by} of {result.district}, received after it and applied "
                "first (students are never rolled back to an older file). Process the file "
                "again if it must be applied over that upload.",
                err=True,
            )
    sys.exit(_exit_code(result.status))


def _progress(*, verbose: bool, quiet: bool) -> Progress:
    """Where the steps' progress goes: a live bar on a terminal, plain lines with
    --verbose when stderr is not one, nothing otherwise (or with --quiet)."""
    if quiet:
        return Progress()
    if sys.stderr.isatty():
        from eams_pipeline.cli_output import TerminalProgress

        return TerminalProgress()
    if verbose:
        return LineProgress(lambda line: click.echo(f"eams: {line}", err=True))
    return Progress()


def _close(progress: Progress) -> None:
    close = getattr(progress, "close", None)  # the live bar on a terminal
    if close is not None:
        close()


@cli.group()
def uploads() -> None:
    """A district's uploads: list, show, approve or discard a held one, revert one."""


def _operator(by: str | None) -> str:
    return by or config.operator_name()


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return str(value)


@uploads.command("list")
@click.option("--district", "district_code", required=True, callback=_district_code)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Only uploads received on or after this date (UTC).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def uploads_list(district_code: str, since: dt.datetime | None, as_json: bool) -> None:
    """The district's uploads, newest first: key, received, status, counts, error codes,
    the guard rule that held it, its revert."""
    from eams_pipeline.db.history import list_uploads

    with connect() as conn:
        _require_district(conn, district_code)
        rows = list_uploads(conn, district_code, since.replace(tzinfo=dt.UTC) if since else None)
    if as_json:
        click.echo(json.dumps(rows, default=_json_default, indent=1))
        return
    from eams_pipeline import cli_output

    click.echo("\n".join(cli_output.uploads_table(rows)))


@uploads.command("show")
@click.argument("upload_key")
@click.option("--json", "as_json", is_flag=True)
def uploads_show(upload_key: str, as_json: bool) -> None:
    """One upload: its summary, the guard's figures, the first error lines."""
    from eams_pipeline.db.history import show_upload

    with connect() as conn:
        row = show_upload(conn, upload_key)
    if row is None:
        raise click.ClickException(f"no upload {_echoed(upload_key)}")
    if as_json:
        click.echo(json.dumps(row, default=_json_default, indent=1))
        return
    from eams_pipeline import cli_output

    click.echo("\n".join(cli_output.upload_details(row)))


_DAGSTER_EMAILS = " (an upload that ran in Dagster is emailed by its follow-up run there)."


def _tell_district(conn: Any, upload_key: str, *, no_email: bool) -> None:
    """After a decision, the district's email. An upload that ran in Dagster is followed up
    there (sensor eams_decisions: a run of its partition emails the district, republishes
    its error file, removes its raw file and tags its runs); the CLI emails the district of
    the others (best effort: the decision stands when the mail relay fails), never pointing
    to an error file on the SFTP site (nothing of such an upload is there)."""
    from eams_pipeline.db import uploads as db_uploads
    from eams_pipeline.db.districts import district_code, get_district
    from eams_pipeline.db.export import order_licenses
    from eams_pipeline.io.smtp import send_email
    from eams_pipeline.services import wiring
    from eams_pipeline.services.notify import recorded_outcome_email

    upload = db_uploads.get_upload(conn, upload_key)
    if upload is None:
        return
    if upload.reported_status is not None:
        click.echo(
            f"eams: upload {upload_key} ran in Dagster: its follow-up run (sensor "
            "eams_decisions) emails the district, republishes the error file, removes the "
            f"raw file and tags its runs eams/outcome={upload.status}",
            err=True,
        )
        return
    if no_email:
        return
    code = district_code(conn, upload.district_id)
    district = get_district(conn, code)
    if district is None or not district.contacts:
        return
    result = db_uploads.recorded_result(conn, upload, code)
    try:
        settings = wiring.mail_relay()
        email = recorded_outcome_email(
            district,
            upload,
            result,
            error_file=None,
            sender=settings.sender,
            licenses=order_licenses(conn, code),
        )
        if email is not None:
            send_email(settings, email[0])
    except (OSError, ValueError) as exc:
        click.echo(f"eams: warning: the district was not emailed: {exc}", err=True)


@uploads.command("approve")
@click.argument("upload_key")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The upload's file (an upload of `eams process`, which has no archive copy).",
)
@click.option("--by", "by", help="Who approves (default: $USER).")
@click.option(
    "--allow-older",
    is_flag=True,
    help="Approve although a newer upload of the district superseded it.",
)
@click.option(
    "--no-email",
    is_flag=True,
    help="Do not email the district the outcome" + _DAGSTER_EMAILS,
)
@click.option("--verbose", "-v", is_flag=True, help="Progress on stderr even when not a terminal.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@_json_option
def uploads_approve(
    upload_key: str,
    file: Path | None,
    by: str | None,
    allow_older: bool,
    no_email: bool,
    verbose: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Apply a held upload as it would have been applied, re-planned against the current
    database. Prints its summary as `eams process` does (exit codes too). Progress on
    stderr as `eams process` (on a terminal, or with --verbose)."""
    from eams_pipeline.core.names import error_file_name
    from eams_pipeline.db import uploads as db_uploads
    from eams_pipeline.services.review import approve

    engine = _engine()  # the secret keys' format: before anything is read
    with connect() as conn:
        record = db_uploads.get_upload(conn, upload_key)
        if record is None:
            raise click.ClickException(f"no upload {_echoed(upload_key)}")
        if file is not None:
            data = file.read_bytes()
        elif record.archive_path:
            from eams_pipeline.services import wiring

            archive = wiring.archive()
            data = archive.load(record.archive_path, record.content_sha256)
        else:
            raise click.ClickException(
                f"upload {_echoed(upload_key)} has no archive copy: give its file with --file"
            )
        conn.rollback()  # end that read: the approval hashes first, in commits of its own
        progress = _progress(verbose=verbose, quiet=quiet)
        try:
            result = approve(
                conn,
                upload_key,
                data,
                engine,
                decided_by=_operator(by),
                allow_older=allow_older,
                error_file_name=lambda _id: record.error_file or error_file_name(_id),
                progress=progress,
            )
        finally:
            _close(progress)
        error_file = db_uploads.get_upload(conn, upload_key).error_file
        _tell_district(conn, upload_key, no_email=no_email)
    # an approval is never held again
    _report_and_exit(
        result,
        error_file,
        as_json=as_json,
        upload_key=upload_key,
        decided=f"approved by {_operator(by)}",
    )


def _check_errors_out(errors_out: Path | None, upload: Path) -> None:
    """Refuse an error-file path that could not be written, or that is the upload itself."""
    if errors_out is None:
        _check_directory("the current directory", Path.cwd())
    else:
        _check_output_file("--errors-out", errors_out, upload)


def _check_directory(where: str, directory: Path) -> None:
    if not directory.is_dir():
        raise click.ClickException(f"{where}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise click.ClickException(f"{where}: the directory {directory} is not writable")


def _check_output_file(option: str, path: Path, upload: Path | None = None) -> None:
    """Refuse an output path (`option`'s) that could not be written, or that is the upload."""
    _check_directory(option, path.parent if str(path.parent) else Path("."))
    if path.exists():
        if path.is_dir():
            raise click.ClickException(f"{option}: {path} is a directory")
        if upload is not None and os.path.samefile(path, upload):
            raise click.ClickException(
                f"{option}: {path} is the input file; it would be overwritten"
            )
        if not os.access(path, os.W_OK):
            raise click.ClickException(f"{option}: {path} is not writable")
    elif upload is not None and path.resolve() == upload.resolve():
        raise click.ClickException(f"{option}: {path} is the input file")


def _write_change_report(conn: Any, upload_key: str, path: Path, *, revert: bool) -> str | None:
    """Write the change report of the upload (or of its revert) to `path`, after its outcome
    was committed: a failure to write it is a warning, never the command's failure."""
    from eams_pipeline.services.change_report import build_change_report

    report = build_change_report(conn, upload_key, revert=revert)
    try:
        path.write_bytes(report.content)
    except OSError as exc:
        click.echo(
            f"eams: warning: the change report of upload {upload_key} could not be written to "
            f"{path}: {exc.strerror or exc}. It is built again from the history any time "
            "(eams uploads revert --changes-dir, or the Dagster change_report asset).",
            err=True,
        )
        return None
    return str(path)


@uploads.command("discard")
@click.argument("upload_key")
@click.option("--by", "by", help="Who discards (default: $USER).")
@click.option("--no-email", is_flag=True, help="Do not email the district" + _DAGSTER_EMAILS)
@_json_option
def uploads_discard(upload_key: str, by: str | None, no_email: bool, as_json: bool) -> None:
    """Discard a held upload: nothing of it is applied; the district is emailed. Prints its
    summary as `eams process` does."""
    from eams_pipeline.services.review import discard

    with connect() as conn:
        result = discard(conn, upload_key, decided_by=_operator(by))
        _tell_district(conn, upload_key, no_email=no_email)
    if _human(as_json):
        from eams_pipeline import cli_output

        lines = cli_output.upload_summary(
            result.summary(None), upload_key=upload_key, decided=f"discarded by {_operator(by)}"
        )
        click.echo("\n".join(lines))
    else:
        click.echo(json.dumps(result.summary(None)))


@uploads.command("revert")
@click.argument("upload_key")
@click.option(
    "--cascade",
    is_flag=True,
    help="Revert the later uploads that changed the same students first, newest first.",
)
@click.option("--by", "by", help="Who reverts (default: $USER).")
@click.option(
    "--no-email",
    is_flag=True,
    help="Do not email the district what was put back" + _DAGSTER_EMAILS,
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be put back (the same statements, rolled back); change nothing.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option(
    "--changes-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the change report of each revert (what it put back) to this directory "
    "as students_changes_<upload key>_revert.csv.",
)
@_json_option
def uploads_revert(
    upload_key: str,
    cascade: bool,
    by: str | None,
    no_email: bool,
    dry_run: bool,
    yes: bool,
    changes_dir: Path | None,
    as_json: bool,
) -> None:
    """Put every student the upload changed back as it was before it (one transaction);
    the district is emailed what was put back.

    On a terminal it first shows what would be put back and asks for confirmation
    (unless --yes); when standard input or output is not a terminal it does not ask."""
    from eams_pipeline.core.names import change_report_name
    from eams_pipeline.services.revert import revert_upload

    if changes_dir is not None:
        if dry_run:
            raise click.ClickException(
                "--changes-dir: a dry run changes nothing, so it has no change report"
            )
        _check_directory("--changes-dir", changes_dir)

    def revert(*, dry: bool, expected: list[str] | None = None) -> list[dict[str, Any]]:
        done = revert_upload(
            conn,
            upload_key,
            reverted_by=_operator(by),
            cascade=cascade,
            retention_days=config.revert_retention_days(),
            dry_run=dry,
            expected=expected,
        )
        return [r.as_dict() for r in done]

    def show(done: list[dict[str, Any]], *, dry: bool, key: str) -> None:
        if _human(as_json):
            from eams_pipeline import cli_output

            click.echo("\n".join(cli_output.revert_summary(done, dry_run=dry)))
        else:
            click.echo(json.dumps({"dry_run": dry, key: done}))

    with connect() as conn:
        expected = None
        if dry_run or (not yes and sys.stdin.isatty() and sys.stdout.isatty()):
            preview = revert(dry=True)
            if dry_run:
                show(preview, dry=True, key="would_revert")
                return
            from eams_pipeline import cli_output

            lines = cli_output.revert_summary(preview, dry_run=False, confirming=True)
            click.echo("\n".join(lines), err=True)
            count = len(preview)
            if not click.confirm(
                f"Revert {count} upload{'s' if count != 1 else ''} of {preview[0]['district']}?",
                default=False,
                err=True,
            ):
                raise click.ClickException("not confirmed: nothing was reverted")
            expected = [r["upload_key"] for r in preview]
        done = revert(dry=False, expected=expected)
        for r in done:
            _tell_district(conn, r["upload_key"], no_email=no_email)
        if changes_dir is not None:
            for r in done:
                path = changes_dir / change_report_name(r["upload_key"], revert=True)
                r["change_report"] = _write_change_report(
                    conn, r["upload_key"], path, revert=True
                )
    show(done, dry=False, key="reverted")


@cli.group()
def dagster() -> None:
    """Dagster's instance ($DAGSTER_HOME: its dagster.yaml and storage)."""


@dagster.command("migrate-runs")
@click.option("--batch", default=500, show_default=True, help="Runs read per page.")
@click.option("--dry-run", is_flag=True, help="Count the runs to tag; tag nothing.")
def dagster_migrate_runs(batch: int, dry_run: bool) -> None:
    """Tag the upload runs made when every upload was a partition of `uploads` with
    eams/upload_key (and eams/district), as runs are tagged now: the runs page's filter by
    upload key then finds old and new runs. Idempotent; safe while Dagster runs."""
    import dagster as dg

    from eams_pipeline.orchestration.migrate import tag_legacy_upload_runs

    def progress(report: Any) -> None:
        click.echo(json.dumps({"progress": report.as_dict()}), err=True)

    with dg.DagsterInstance.get() as instance:
        report = tag_legacy_upload_runs(instance, batch=batch, dry_run=dry_run, progress=progress)
    click.echo(json.dumps({"dry_run": dry_run, **report.as_dict()}))


@cli.command("history")
@click.option("--district", "district_code", required=True, callback=_district_code)
@click.option(
    "--student", "student_id", required=True, callback=_student_id, help="The Student ID."
)
@click.option("--json", "as_json", is_flag=True)
def history_cmd(district_code: str, student_id: str, as_json: bool) -> None:
    """Every upload that changed a student, with what changed (before -> after).
    Passwords never appear (only that one was changed)."""
    from eams_pipeline.db.history import student_history, student_known

    with connect() as conn:
        _require_district(conn, district_code)
        if not student_known(conn, district_code, student_id):
            raise click.ClickException(
                f"unknown student {_echoed(student_id)}: district {district_code} never had "
                "a student with this Student ID"
            )
        entries = student_history(conn, district_code, student_id)
    if as_json:
        click.echo(json.dumps(entries, default=_json_default, indent=1))
        return
    if not entries:
        click.echo(
            f"no upload changed student {student_id} of {district_code} "
            "(it was loaded with the master data and no upload has changed it since)"
        )
        return
    from eams_pipeline import cli_output

    click.echo("\n".join(cli_output.student_history_lines(entries)))


@cli.group()
def districts() -> None:
    """The districts the pipeline serves (master data: `eams setup load`)."""


@districts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def districts_list(as_json: bool) -> None:
    """Every district: code, name, mode, change guard, last upload and its status."""
    from eams_pipeline.db.districts import list_districts
    from eams_pipeline.db.history import last_uploads

    with connect() as conn:
        found = list_districts(conn)
        last = last_uploads(conn)
    rows = [
        {
            "code": d.code,
            "name": d.name,
            "mode": d.mode,
            "guard": d.guard,
            "last_upload": last.get(d.code, {}).get("upload_key"),
            "last_received_at": last.get(d.code, {}).get("received_at"),
            "last_status": last.get(d.code, {}).get("status"),
        }
        for d in found
    ]
    if as_json:
        click.echo(json.dumps(rows, default=_json_default, indent=1))
        return
    if not rows:
        click.echo("no districts yet: load them with `eams setup load FILE.yaml`")
        return
    from eams_pipeline import cli_output

    click.echo("\n".join(cli_output.districts_table(rows)))


@cli.group()
def export() -> None:
    """CSV views of a district's state on standard output."""


@export.command("students")
@click.option("--district", "district_code", required=True, callback=_district_code)
def export_students(district_code: str) -> None:
    """Students: template columns minus Password and Status, then Status and Order."""
    from eams_pipeline.db import export as db_export

    with connect() as conn:
        _require_district(conn, district_code)
        _write_csv(db_export.STUDENT_EXPORT_HEADER, db_export.export_students(conn, district_code))


@export.command("licenses")
@click.option("--district", "district_code", required=True, callback=_district_code)
def export_licenses(district_code: str) -> None:
    """Orders: Order,Kind,School Code,Licenses,Used,Available."""
    from eams_pipeline.db import export as db_export

    with connect() as conn:
        _require_district(conn, district_code)
        _write_csv(db_export.LICENSE_EXPORT_HEADER, db_export.export_licenses(conn, district_code))


@cli.group()
def fleet() -> None:
    """The whole fleet of districts at a glance."""


@fleet.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Only the first N districts.")
def fleet_status_cmd(as_json: bool, top: int | None) -> None:
    """The districts that need attention, worst first (the fleet_status asset's ranking):
    last upload failed or rejected, held, stale, missing past expected_by, error rate
    rising, licenses low; counts per state. Failed runs are read from the Dagster instance
    when DAGSTER_HOME is set."""
    from eams_pipeline.core.fleet_ranking import fleet_status
    from eams_pipeline.db.fleet_facts import district_facts

    now = dt.datetime.now(dt.UTC)
    with connect() as conn:
        facts = district_facts(conn)
    failed, runs_read = {}, False
    if config.dagster_home():  # Dagster is imported only then
        import dagster as dg

        from eams_pipeline.orchestration.fleet_status import failed_upload_runs

        with dg.DagsterInstance.get() as instance:
            failed, runs_read = failed_upload_runs(instance, now), True
    status = fleet_status(facts, now, failed_runs=failed)
    if as_json:
        click.echo(
            json.dumps({**status.as_dict(top), "dagster_runs_read": runs_read}, indent=1)
        )
        return
    from eams_pipeline import cli_output

    click.echo("\n".join(cli_output.fleet_lines(status, top=top, runs_read=runs_read)))


@cli.command("demo")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Secrets, SFTP and mail folders, archive and DAGSTER_HOME of the demo.",
)
@click.option(
    "--database-url",
    envvar="EAMS_DEMO_DATABASE_URL",
    default="postgresql://postgres@127.0.0.1:5432/eams_demo",
    show_default=True,
    help="The demo's MY Access database (Dagster's storage goes to <name>_dagster).",
)
@click.option("--port", "ui_port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--no-samples", is_flag=True, help="Do not drop the sample uploads.")
@click.option("--reset", is_flag=True, help="Drop the demo databases and state first.")
def demo_cmd(
    state_dir: Path, database_url: str, ui_port: int, no_samples: bool, reset: bool
) -> None:
    """Run the whole pipeline locally: PostgreSQL databases, loopback SFTP and SMTP
    servers, three sample districts with sample uploads, and `dagster dev`. Ctrl-C stops it."""
    from eams_pipeline.devtools.demo import DemoOptions, run_demo

    options = DemoOptions(
        state_dir=state_dir,
        database_url=database_url,
        ui_port=ui_port,
        samples=not no_samples,
        reset=reset,
    )
    sys.exit(run_demo(options, echo=click.echo))


def _engine() -> Engine:
    from eams_pipeline.services import wiring

    return wiring.engine()


def _require_district(conn: psycopg.Connection, district_code: str) -> None:
    """An unknown district code fails with the close matches (`eams districts list`)."""
    from eams_pipeline.db import export as db_export
    from eams_pipeline.db.districts import district_codes

    if db_export.district_exists(conn, district_code):
        return
    codes = district_codes(conn)
    by_folded = {c.casefold(): c for c in codes}
    folded = district_code.casefold()
    close = [
        by_folded[c]
        for c in ([folded] if folded in by_folded else [])
        or difflib.get_close_matches(folded, by_folded, n=3, cutoff=0.6)
    ]
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else " (`eams districts list` shows them)"
        if codes
        else ": no district is loaded yet (`eams setup load FILE.yaml`)"
    )
    raise click.ClickException(f"unknown district {_echoed(district_code)}{hint}")


def _write_csv(header: tuple[str, ...], rows: list[tuple]) -> None:
    from defusedcsv import csv as safe_csv

    writer = safe_csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(("" if v is None else v for v in row) for row in rows)


def error(message: str, exit_code: int = EXIT_FAILURE) -> int:
    """The one way `eams` reports a failure: `eams: error: <message>` on stderr (cut at
    MESSAGE_LIMIT characters; a line the message goes on to, e.g. libpq's hint, indented
    under it); returns the exit code."""
    lines = [line.strip() for line in _capped(message).splitlines()]
    first, *rest = [line for line in lines if line] or ["failed"]
    click.echo("\n".join([f"eams: error: {first}", *(f"  {line}" for line in rest)]), err=True)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure is reported by `error`; usage and operational errors
    exit 1, so that 2 means 'rejected'."""
    try:
        code = cli.main(args=argv, prog_name="eams", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE if exc.code else EXIT_OK
    except click.exceptions.Abort:  # Ctrl-C or end of input at a prompt, Ctrl-C in a command
        return error("interrupted: stopped before the command finished")
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return error(exc.format_message() + where)
    except click.ClickException as exc:
        return error(exc.format_message())
    except (config.ConfigError, OSError, LookupError, ValueError, RuntimeError) as exc:
        return error(str(exc))
    except Exception as exc:  # psycopg errors and anything unexpected: operational failure
        return error(f"{type(exc).__name__}: {exc}")
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
