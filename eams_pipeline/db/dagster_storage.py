"""Dagster's own storage, where its API falls short: the one statement of run retention
that Dagster has no call for (the SQL lives in db/, like all the project's SQL)."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage


def delete_check_executions(instance: dg.DagsterInstance, run_ids: list[str]) -> int:
    """Delete the asset check executions of deleted runs (``delete_run`` leaves them): one
    statement for the batch. Dagster has no public call for it; its own table is used."""
    storage = instance.event_log_storage
    if (
        not run_ids
        or not isinstance(storage, SqlEventLogStorage)
        or not storage.has_table(AssetCheckExecutionsTable.name)
    ):
        return 0
    with storage.index_connection() as conn:
        result = conn.execute(
            AssetCheckExecutionsTable.delete().where(
                AssetCheckExecutionsTable.c.run_id.in_(run_ids)
            )
        )
    return int(result.rowcount or 0)
