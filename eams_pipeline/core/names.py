"""The names of the files the pipeline writes on a district's SFTP site."""

from __future__ import annotations


def check_report_name(upload_key: str) -> str:
    """A check drop's report in the district's ``reports/`` directory: the error file's
    columns (SPEC §5), only the header when the file is clean."""
    return f"students_check_{upload_key}.csv"
