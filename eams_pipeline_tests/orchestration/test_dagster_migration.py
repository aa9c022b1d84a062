"""An instance that ran the pipeline when every upload was a partition of ``uploads``: its
runs and materializations stay reachable in the district-partition model. The old run is
made by the old model's job (the same names, its partitioning and tags), in the shipped
dagster.yaml's PostgreSQL storage; the new pipeline then runs against the same instance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from eams_pipeline.cli import main
from eams_pipeline.core.names import UploadRef
from eams_pipeline.orchestration.partitions import (
    DISTRICT_TAG,
    DISTRICTS,
    LEGACY_UPLOADS_PARTITIONS,
    UPLOAD_KEY_TAG,
)
from eams_pipeline_tests import builders
from eams_pipeline_tests.orchestration_env import (
    ROOT,
    Pipeline,
    clean_file,
    materialization,
    upload_key,
)

# -- the model before, as its code location defined it (only what its runs recorded) ------

OLD_UPLOADS = dg.DynamicPartitionsDefinition(name=LEGACY_UPLOADS_PARTITIONS)


@dg.asset(name="district_email", partitions_def=OLD_UPLOADS, group_name="eams_uploads")
def old_district_email() -> dg.MaterializeResult:
    # what district_email recorded then: the email sent, for this outcome
    return dg.MaterializeResult(metadata={"sent": True, "status": "processed"})


old_upload_job = dg.define_asset_job(
    "upload_job",
    selection=[old_district_email],
    config=dg.PartitionedConfig(
        partitions_def=OLD_UPLOADS,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=lambda key: {DISTRICT_TAG: UploadRef.parse(key).district},
    ),
)


def _migrate(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["dagster", "migrate-runs", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_old_runs_are_tagged_and_an_old_upload_reprocessed_is_not_emailed_again(
    pipeline: Pipeline,
    dagster_pg: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # the upload as the old model processed it: archived, applied, its run and email
        data = clean_file()
        key = UploadRef.new("D001", pipeline.clock.now).key
        archive = pipeline.resources()["archive"].get()  # type: ignore[union-attr]
        stored = archive.store("D001", key, data)
        builders.run(
            pipeline.conn,
            data,
            "D001",
            key=key,
            received_at=pipeline.clock.now,
            archive_path=str(stored.path),
        )
        pipeline.conn.commit()
        instance.add_dynamic_partitions(LEGACY_UPLOADS_PARTITIONS, [key])
        old = dg.Definitions(assets=[old_district_email], jobs=[old_upload_job])
        old_run = old.resolve_job_def("upload_job").execute_in_process(
            instance=instance, partition_key=key
        )
        assert old_run.dagster_run.tags == {
            "dagster/partition": key,
            "dagster/partition_set": "upload_job_partition_set",
            DISTRICT_TAG: "D001",
        }

        # reprocessed by its key in the new model, before any migration: applied once, and
        # the email the old run sent is found (the key was its partition): not sent again
        assert pipeline.reprocess(instance, upload_keys=[key]).success
        [request] = pipeline.dispatch().run_requests
        assert upload_key(request) == key and request.partition_key == "D001"
        new_run = pipeline.launch(instance, request)
        assert materialization(new_run, "upload_outcome")["already_applied"] is True
        email = materialization(new_run, "district_email")
        assert (email["sent"], email["why"]) == (False, "already sent")
        assert pipeline.smtp.messages == []

        # the runs page's filter by upload key finds the new run only, until the migration
        def by_key() -> set[str]:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={UPLOAD_KEY_TAG: key}))
            return {r.run_id for r in runs}

        assert by_key() == {new_run.run_id}
        counts = {"scanned": 2, "tagged": 1, "already_tagged": 1, "without_upload": 0}
        assert _migrate(capsys, "--dry-run") == {"dry_run": True, **counts}
        assert by_key() == {new_run.run_id}
        assert _migrate(capsys) == {"dry_run": False, **counts}
        assert by_key() == {new_run.run_id, old_run.run_id}
        tags = instance.get_run_by_id(old_run.run_id).tags
        assert tags[UPLOAD_KEY_TAG] == key and tags[DISTRICT_TAG] == "D001"
        again = _migrate(capsys)  # idempotent
        assert (again["tagged"], again["already_tagged"]) == (0, 2)

        # the asset's partitions are the districts; the old materialization stays among its
        # events, under its upload key
        status = get_and_update_asset_status_cache_value(
            instance, dg.AssetKey("district_email"), DISTRICTS
        )
        materialized = status.deserialize_materialized_partition_subsets(DISTRICTS)
        assert set(materialized.get_partition_keys()) == {"D001"}
        events = instance.fetch_materializations(dg.AssetKey("district_email"), limit=10)
        assert {r.partition_key for r in events.records} == {key, "D001"}
