"""Districts sharded over code locations: EAMS_DISTRICT_SHARD=i/n and EAMS_DISTRICTS."""

from __future__ import annotations

import psycopg
import pytest

from eams_pipeline.config import ConfigError
from eams_pipeline.orchestration.code_location import district_codes_from_database
from eams_pipeline.orchestration.sharding import (
    Shard,
    parse_district_list,
    select_districts,
    shard_of,
)
from eams_pipeline_tests import builders

CODES = [f"D{i:03d}" for i in range(1, 201)]


def test_shards_partition_the_districts() -> None:
    for count in (1, 2, 3, 7):
        shards = [select_districts(CODES, shard=Shard(i, count)) for i in range(count)]
        assert sorted(c for s in shards for c in s) == sorted(CODES)  # each exactly once
        assert all(shards), "every shard gets some of 200 districts"


def test_shard_of_is_stable_across_processes_and_releases() -> None:
    # SHA-256, not Python's salted hash(): these values must never change, or districts
    # would move between code locations (and lose their sensor cursor) on a redeploy
    assert shard_of("D001", 1) == 0
    expected = {"D001": 0, "D002": 2, "D003": 3, "D004": 3}
    assert {c: shard_of(c, 4) for c in expected} == expected


def test_explicit_list_and_shard_combine() -> None:
    listed = parse_district_list(" D002, D001 ,,D999")
    assert listed == {"D001", "D002", "D999"}
    assert select_districts(CODES, listed=listed) == ["D001", "D002"]
    shard = Shard(shard_of("D001", 2), 2)
    both = select_districts(CODES, shard=shard, listed=listed)
    assert "D001" in both and set(both) <= {"D001", "D002"}
    assert select_districts(CODES) == CODES


@pytest.mark.parametrize("text", ["", "1", "2/2", "-1/2", "0/0", "a/b", "1/2/3"])
def test_malformed_shard_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="EAMS_DISTRICT_SHARD"):
        Shard.parse(text)


def test_shard_parse_and_str() -> None:
    assert Shard.parse(" 1/3 ") == Shard(1, 3)
    assert str(Shard(0, 2)) == "0/2"


def test_code_location_builds_sensors_for_its_shard_only(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = ["D001", "D002", "D003", "D004"]
    builders.load(conn, *(builders.district_doc(code=c) for c in codes))
    conn.commit()
    assert district_codes_from_database() == codes

    shards = []
    for i in range(2):
        monkeypatch.setenv("EAMS_DISTRICT_SHARD", f"{i}/2")
        shards.append(district_codes_from_database())
    assert sorted(shards[0] + shards[1]) == codes
    assert shards == [[c for c in codes if shard_of(c, 2) == i] for i in range(2)]

    monkeypatch.delenv("EAMS_DISTRICT_SHARD")
    monkeypatch.setenv("EAMS_DISTRICTS", "D003")
    assert district_codes_from_database() == ["D003"]

    monkeypatch.setenv("EAMS_DISTRICT_SHARD", "2/2")
    with pytest.raises(ConfigError):
        district_codes_from_database()
