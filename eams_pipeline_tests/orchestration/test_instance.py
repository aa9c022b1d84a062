"""The shipped dagster.yaml (PostgreSQL storage, queue limits, retries) and the code location
as `dagster dev` loads it from workspace.yaml."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from eams_pipeline.orchestration.partitions import DISTRICT_TAG, UPLOAD_KEY_TAG
from eams_pipeline_tests.orchestration_env import Pipeline, upload_key

ROOT = Path(__file__).resolve().parents[2]


def test_sensor_and_run_with_the_shipped_dagster_yaml_on_postgres(
    dagster_pg: str, pipeline: Pipeline, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert limits == [
            {"key": DISTRICT_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]

        request, result = pipeline.sensor_run(instance, "D001", b"")
        assert result.success
        key = upload_key(request)
        # a partition per district, none per upload
        assert instance.get_dynamic_partitions("districts") == ["D001"]
        assert instance.get_dynamic_partitions("uploads") == []

    # what the UI reads: the run, its tags and the error report's materialization, in Postgres
    with psycopg.connect(dagster_pg) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert status.fetchone()[0] == "SUCCESS"
        tags = dict(
            conn.execute("SELECT key, value FROM run_tags WHERE run_id = %s", (result.run_id,))
        )
        assert tags[DISTRICT_TAG] == "D001" and tags[UPLOAD_KEY_TAG] == key
        assert tags["dagster/partition"] == "D001"
        materialized = conn.execute(
            """SELECT count(*) FROM event_logs
               WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'
                 AND asset_key LIKE '%%error_report%%' AND partition = %s""",
            (result.run_id, "D001"),
        ).fetchone()[0]
        assert materialized == 1
    assert pipeline.smtp.wait_for(1)[0]["Subject"].startswith("eAMS student update FAILED")


def test_dagster_yaml_keeps_the_psycopg2_scheme() -> None:
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert config["sensors"]["use_threads"] is True
    assert config["concurrency"]["runs"]["max_concurrent_runs"] > 1


def test_code_location_has_a_sensor_per_district_of_the_database(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    module_name = workspace["load_from"][0]["python_module"]["module_name"]
    sys.modules.pop(module_name, None)
    module = importlib.import_module(module_name)
    defs = module.defs
    dg.Definitions.validate_loadable(defs)
    sensors = {s.name for s in defs.sensors}
    assert sensors == {
        "sftp_D001",
        "sftp_D002",
        "eams_operator_alerts",
        "eams_decisions",
        "eams_district_partitions",
        "eams_upload_requests",
    }
    job = defs.resolve_job_def("upload_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "upload_file",
        "upload_outcome",
        "error_report",
        "change_report",
        "district_email",
    }
    assert job.get_tags_for_partition_key("D002", selected_asset_keys=None)[DISTRICT_TAG] == "D002"
    assert {j.name for j in defs.jobs} >= {"upload_job", "reprocess_uploads", "revert_upload_job"}
    sys.modules.pop(module_name, None)
