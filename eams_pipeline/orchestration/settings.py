"""Orchestration settings from the environment (documented in the README)."""

from __future__ import annotations

from eams_pipeline.config import env_int, env_str

DEFAULT_SENSOR_INTERVAL_SECONDS = 30
DEFAULT_SETTLE_SECONDS = 60


def sensor_interval_seconds() -> int:
    """EAMS_SENSOR_INTERVAL_SECONDS: the minimum time between two ticks of a district sensor."""
    return max(1, env_int("EAMS_SENSOR_INTERVAL_SECONDS", DEFAULT_SENSOR_INTERVAL_SECONDS))


def settle_seconds() -> int:
    """EAMS_SETTLE_SECONDS: how long students.csv must stay unchanged before it is taken."""
    return max(0, env_int("EAMS_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS))


def operator_emails() -> list[str]:
    """EAMS_OPERATOR_EMAILS: comma-separated addresses alerted when a run crashes."""
    raw = env_str("EAMS_OPERATOR_EMAILS", "") or ""
    return [a.strip() for a in raw.split(",") if a.strip()]
