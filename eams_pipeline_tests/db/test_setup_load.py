"""`eams setup load`: the same file twice changes nothing; a changed file updates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline.db.setup import load_master_data
from eams_pipeline_tests.builders import district_doc, existing_student, load, row, run, used
from eams_pipeline_tests.spec import EXAMPLES, require_spec_file


def _load_text(conn, text: str) -> dict[str, int]:
    return load_master_data(conn, parse_master_data(text))


@pytest.mark.parametrize("source", ["project", "contract"])
def test_the_example_loads_and_loading_it_twice_changes_nothing(conn, source: str) -> None:
    path = EXAMPLES / "districts.yaml" if source == "project" else None
    path = path or require_spec_file("setup-example.yaml")
    text = path.read_text()
    first = _load_text(conn, text)
    assert first == {"districts": 1, "schools": 4, "orders": 2, "students": 1}
    assert _load_text(conn, text) == {"districts": 0, "schools": 0, "orders": 0, "students": 0}
    assert used(conn, "ORD-2025-0042") == 1  # Maria Alvarez, active on the regular order
    assert used(conn, "ENT-2026-D001") == 0


def test_a_changed_file_updates_what_changed(conn) -> None:
    doc = district_doc(licenses=10, existing=[existing_student("E1")])
    load(conn, doc)
    doc["enterprise_order"]["licenses"] = 20
    doc["schools"].append({"code": "103", "name": "New School"})
    doc["schools"][1]["active"] = False  # 101 closes
    doc["contacts"].append("second@d1.example.org")
    changed = load_master_data(conn, parse_master_data(yaml.safe_dump({"districts": [doc]})))
    assert changed == {"districts": 1, "schools": 2, "orders": 1, "students": 0}
    assert conn.execute("SELECT size FROM orders WHERE number='ENT-D1'").fetchone()[0] == 20
    result = run(conn, [row("N1", school_code="101"), row("N2", school_code="103")])
    assert result.error_codes == {"SCHOOL_NOT_FOUND": 1}


def test_existing_students_are_never_overwritten_by_a_reload(conn) -> None:
    doc = district_doc(existing=[existing_student("E1")])
    load(conn, doc)
    run(conn, [row("E1", "D", password="", last_name="FromSIS")])
    load(conn, doc)
    name, status = conn.execute(
        "SELECT last_name, status FROM students WHERE student_id='E1'"
    ).fetchone()
    assert (name, status) == ("FromSIS", "deactivated")


def test_an_order_cannot_shrink_below_its_used_licenses(conn) -> None:
    doc = district_doc(licenses=3, existing=[existing_student("E1"), existing_student("E2")])
    load(conn, doc)
    doc["enterprise_order"]["licenses"] = 1
    doc["name"] = "Renamed"
    with pytest.raises(
        MasterDataError,
        match="order ENT-D1: 1 licenses requested but 2 are in use by active students; "
        "deactivate students first or keep at least 2",
    ):
        load(conn, doc)
    assert conn.execute("SELECT name FROM districts").fetchone()[0] == "District D1"
    assert conn.execute("SELECT size FROM orders WHERE number='ENT-D1'").fetchone()[0] == 3


def test_an_order_of_another_district_is_refused_naming_both(conn) -> None:
    load(conn, district_doc(code="D1"))
    other = district_doc(code="D2")
    other["enterprise_order"]["number"] = "ENT-D1"
    with pytest.raises(MasterDataError, match="district D2: order ENT-D1 belongs to district D1"):
        load(conn, other)
    assert conn.execute("SELECT count(*) FROM districts WHERE code='D2'").fetchone()[0] == 0
    # also within one file
    with pytest.raises(MasterDataError, match="order REG-D1 belongs to district D1"):
        again = district_doc(code="D3")
        again["regular_orders"][0]["number"] = "REG-D1"
        load(conn, district_doc(code="D1"), again)


def test_setup_load_reports_a_refusal_in_plain_words(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eams_pipeline import cli

    doc = district_doc(licenses=2, existing=[existing_student("E1"), existing_student("E2")])
    setup = tmp_path / "setup.yaml"
    setup.write_text(yaml.safe_dump({"districts": [doc]}))
    assert cli.main(["setup", "load", str(setup)]) == 0
    doc["enterprise_order"]["licenses"] = 1
    setup.write_text(yaml.safe_dump({"districts": [doc]}))
    capsys.readouterr()
    assert cli.main(["setup", "load", str(setup)]) == 1
    err = capsys.readouterr().err
    assert "1 licenses requested but 2 are in use" in err
    assert "Traceback" not in err and "CheckViolation" not in err


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("holding_bin_school"), "holding_bin_school"),
        (lambda d: d.update(holding_bin_school="nope"), "not in `schools`"),
        (lambda d: d.update(timezone="Mars/Olympus"), "unknown timezone"),
        (lambda d: d["enterprise_order"].update(licenses=-1), "licenses"),
        (
            lambda d: d.update(existing_students=[existing_student("E1", school="zzz")]),
            "unknown school",
        ),
    ],
)
def test_bad_master_data_is_refused_with_a_clear_message(mutate, message: str) -> None:
    doc = district_doc()
    mutate(doc)
    with pytest.raises(MasterDataError, match=message):
        parse_master_data(yaml.safe_dump({"districts": [doc]}))
