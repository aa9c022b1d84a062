"""`eams uploads revert`: put every student an upload changed back as it was before it,
in one transaction under the district's lock (db.revert_statements does the set-based work).

Refused when a later applied upload changed any of the same students (named in the
message), unless `cascade`: then those later uploads (and theirs, transitively) are
reverted first, newest first. Refused outside the retention window
(EAMS_REVERT_RETENTION_DAYS, default 30 days after it was applied).

A dry run does all of it and rolls the transaction back: what it reports is what the revert
would do at that moment, by the same statements.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from eams_pipeline.core.outcome import APPLIED_STATUSES
from eams_pipeline.db import revert_statements as db_revert
from eams_pipeline.db.districts import district_code, lock_district


class RevertRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class Reverted:
    upload_key: str
    district: str
    applied_at: dt.datetime
    counts: dict[str, int]  # restored, created_deactivated
    available: dict[str, int]  # order number -> change in its available licenses

    def as_dict(self) -> dict[str, object]:
        return {
            "upload_key": self.upload_key,
            "district": self.district,
            **self.counts,
            "licenses_available": self.available,
        }


def revert_upload(
    conn: psycopg.Connection,
    upload_key: str,
    *,
    reverted_by: str,
    cascade: bool = False,
    retention_days: int = 30,
    dry_run: bool = False,
    expected: list[str] | None = None,
) -> list[Reverted]:
    """Revert the upload (and with `cascade` the later ones in its way); newest first.

    `dry_run`: the same work, rolled back. `expected`: the upload keys a dry run showed
    (and a person confirmed); refused when the uploads to revert are no longer those."""
    with conn.transaction():
        target = db_revert.applied_upload(conn, upload_key, retention_days)
        code = district_code(conn, target.district_id)
        lock_district(conn, code)
        target = db_revert.applied_upload(conn, upload_key, retention_days)
        if target.status not in {str(s) for s in APPLIED_STATUSES}:
            raise RevertRefused(
                f"upload {upload_key} is {target.status}: only an applied upload (processed or "
                "partially_processed) can be reverted"
            )
        chain = {target.upload_id: target}
        frontier = [target]
        while frontier:
            later = db_revert.later_conflicts(conn, frontier.pop().upload_id)
            if later and not cascade and len(chain) == 1:
                names = ", ".join(u.upload_key for u in later)
                raise RevertRefused(
                    f"upload {upload_key} cannot be reverted alone: later upload(s) {names} "
                    "changed some of the same students; revert them first, or pass --cascade "
                    "to revert them too (newest first)"
                )
            for u in later:
                if u.upload_id not in chain:
                    chain[u.upload_id] = u
                    frontier.append(u)
        ordered = sorted(chain.values(), key=lambda u: (u.applied_at, u.upload_id), reverse=True)
        if expected is not None and [u.upload_key for u in ordered] != expected:
            raise RevertRefused(
                f"the uploads to revert are now {', '.join(u.upload_key for u in ordered)}, "
                f"not the {', '.join(expected)} shown before: nothing was reverted; run the "
                "command again to see what it would do now"
            )
        for u in ordered:
            if not u.within_retention:
                raise RevertRefused(
                    f"upload {u.upload_key} was applied {u.applied_at:%Y-%m-%d %H:%M}Z, "
                    f"outside the revert window of {retention_days} days"
                )
            if db_revert.missing_images(conn, u.upload_id):
                raise RevertRefused(
                    f"upload {u.upload_key} was applied before the history kept before-images "
                    "(migration 007): it cannot be reverted"
                )
        done = []
        for u in ordered:
            try:
                with conn.transaction():
                    counts, available = db_revert.restore(
                        conn, u.district_id, u.upload_id, reverted_by
                    )
            except psycopg.errors.CheckViolation as exc:
                raise RevertRefused(
                    f"reverting upload {u.upload_key} needs more licenses than are free on an "
                    "order (students it deactivated would be active again)"
                ) from exc
            except psycopg.errors.UniqueViolation as exc:
                raise RevertRefused(
                    f"reverting upload {u.upload_key} would give back a username that another "
                    "student holds now"
                ) from exc
            done.append(Reverted(u.upload_key, code, u.applied_at, counts, available))
        if dry_run:
            raise psycopg.Rollback()
    return done
