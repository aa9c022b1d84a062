"""The names of the files the pipeline publishes on a district's SFTP site."""

from __future__ import annotations

# the directory of the reports beside errors/ (SPEC §6), created when missing
REPORTS_DIR = "reports"


def change_report_name(upload_key: str, *, revert: bool = False) -> str:
    """The change report of an upload (`students_changes_<upload key>.csv`), or of its revert
    (`students_changes_<upload key>_revert.csv`), in `reports/`."""
    return f"students_changes_{upload_key}{'_revert' if revert else ''}.csv"
