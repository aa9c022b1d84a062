"""The `eams` command line (SPEC §8). Same code paths as the Dagster job."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import click
from defusedcsv import csv as safe_csv

from eams_pipeline import config
from eams_pipeline.core.error_file import render_error_file
from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline.core.outcome import UploadStatus
from eams_pipeline.core.passwords import PasswordHasher
from eams_pipeline.db import export as db_export
from eams_pipeline.db import migrations
from eams_pipeline.db.connection import connect, create_database_if_missing
from eams_pipeline.db.setup import load_master_data
from eams_pipeline.io.files import NotARegularFile, read_upload_file
from eams_pipeline.services.process import Engine, Upload, file_too_large, process_upload

EXIT_OK, EXIT_FAILURE, EXIT_REJECTED = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    """Load or update master data from FILE.yaml (shape of setup-example.yaml).

    Loading the same file twice changes nothing; a changed file updates what changed.
    Students under existing_students are created when absent, never overwritten.
    """
    try:
        districts = parse_master_data(file.read_text(encoding="utf-8"))
    except MasterDataError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    with connect() as conn:
        changed = load_master_data(conn, districts)
    click.echo(json.dumps({"districts": [d.code for d in districts], "changed": changed}))


@cli.command("process")
@click.option("--district", "district_code", required=True, help="The district's code.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Report the same figures; change nothing.")
@click.option(
    "--errors-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the error file (default: ./students_errors_<upload id>.csv).",
)
def process_cmd(district_code: str, file: Path, dry_run: bool, errors_out: Path | None) -> None:
    """Process FILE as an upload of a district; print a JSON summary.

    Exit code 0 when the file was accepted (even with row errors), 2 when it was
    rejected (file-level error), 1 on an operational failure.
    """

    def error_path(upload_id: int | None) -> str:
        if errors_out is not None:
            return str(errors_out)
        return f"students_errors_{upload_id if upload_id is not None else 'dry-run'}.csv"

    # Everything that could stop the command after the upload is committed is checked first.
    _check_errors_out(errors_out, file)
    limit = config.max_upload_bytes()
    try:
        local = read_upload_file(file, limit)
    except NotARegularFile as exc:
        raise click.ClickException(str(exc)) from exc
    upload = Upload(district=district_code, data=local.data, file_name=file.name)
    if local.too_large:
        upload = replace(upload, rejection=file_too_large(local.size, limit))
    with connect() as conn:
        result = process_upload(
            conn, upload, _engine(), dry_run=dry_run, error_file_name=error_path
        )
    error_file = None
    if result.has_errors:
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
    click.echo(json.dumps(result.summary(error_file)))
    sys.exit(EXIT_REJECTED if result.status == UploadStatus.REJECTED else EXIT_OK)


def _check_errors_out(errors_out: Path | None, upload: Path) -> None:
    """Refuse an error-file path that could not be written, or that is the upload itself."""
    target = errors_out if errors_out is not None else Path.cwd() / "students_errors.csv"
    where = "--errors-out" if errors_out is not None else "the current directory"
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise click.ClickException(f"{where}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise click.ClickException(f"{where}: the directory {parent} is not writable")
    if errors_out is None:
        return
    if errors_out.exists():
        if errors_out.is_dir():
            raise click.ClickException(f"--errors-out: {errors_out} is a directory")
        if os.path.samefile(errors_out, upload):
            raise click.ClickException(
                f"--errors-out: {errors_out} is the input file; it would be overwritten"
            )
        if not os.access(errors_out, os.W_OK):
            raise click.ClickException(f"--errors-out: {errors_out} is not writable")
    elif errors_out.resolve() == upload.resolve():
        raise click.ClickException(f"--errors-out: {errors_out} is the input file")


@cli.group()
def export() -> None:
    """CSV views of a district's state on standard output."""


@export.command("students")
@click.option("--district", "district_code", required=True)
def export_students(district_code: str) -> None:
    """Students: template columns minus Password and Status, then Status and Order."""
    with connect() as conn:
        _require_district(conn, district_code)
        _write_csv(db_export.STUDENT_EXPORT_HEADER, db_export.export_students(conn, district_code))


@export.command("licenses")
@click.option("--district", "district_code", required=True)
def export_licenses(district_code: str) -> None:
    """Orders: Order,Kind,School Code,Licenses,Used,Available."""
    with connect() as conn:
        _require_district(conn, district_code)
        _write_csv(db_export.LICENSE_EXPORT_HEADER, db_export.export_licenses(conn, district_code))


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
    servers, two sample districts with sample uploads, and `dagster dev`. Ctrl-C stops it."""
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
    return Engine(secret=config.secret_key(), hasher=PasswordHasher(config.argon2_settings()))


def _require_district(conn: object, district_code: str) -> None:
    if not db_export.district_exists(conn, district_code):  # type: ignore[arg-type]
        raise click.ClickException(f"unknown district {district_code!r}")


def _write_csv(header: tuple[str, ...], rows: list[tuple]) -> None:
    writer = safe_csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(("" if v is None else v for v in row) for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Entry point: usage and operational errors exit 1, so that 2 means 'rejected'."""
    try:
        cli.main(args=argv, prog_name="eams", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        return EXIT_FAILURE
    except (config.ConfigError, OSError, LookupError, ValueError, RuntimeError) as exc:
        click.echo(f"eams: error: {exc}", err=True)
        return EXIT_FAILURE
    except Exception as exc:  # psycopg errors and anything unexpected: operational failure
        click.echo(f"eams: error: {type(exc).__name__}: {exc}", err=True)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
