"""Files real SIS exports produce: encodings, participating grades, closed
schools, IGNORE, and master data with keys the loader does not know."""

from __future__ import annotations

import codecs

import pytest

from eams_pipeline.core.encoding import decode_upload
from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline.core.reading import FileRejected
from eams_pipeline.db.districts import get_district
from eams_pipeline_tests.builders import (
    BIN,
    assert_license_invariant,
    csv_bytes,
    district_doc,
    existing_student,
    load,
    row,
    run,
    students,
    used,
)


def _muñoz_rows() -> list[dict[str, str]]:
    return [
        row("S1", last_name="Muñoz", first_name="José"),
        row("S2", last_name="Çelik", first_name="Zoë", middle_name="Ångström"),
    ]


def _cp1252(rows: list[dict[str, str]]) -> bytes:
    return csv_bytes(rows).decode("utf-8").encode("cp1252")


# -- encodings ---------------------------------------------------------------------------


def test_a_windows_1252_file_is_applied_for_a_district_so_configured(conn) -> None:
    load(conn, district_doc() | {"encoding": "windows-1252"})
    result = run(conn, _cp1252(_muñoz_rows()))
    assert result.status == "processed", result.errors
    stored = students(conn)
    assert (stored["S1"]["last_name"], stored["S1"]["first_name"]) == ("Muñoz", "José")
    assert stored["S2"]["middle_name"] == "Ångström"


def test_a_windows_1252_file_is_rejected_with_a_helpful_message_for_a_utf8_district(
    conn,
) -> None:
    load(conn, district_doc())
    data = _cp1252(_muñoz_rows())
    result = run(conn, data)
    assert result.status == "rejected"
    assert result.error_codes == {"FILE_ENCODING": 1}
    message = result.file_error.message
    assert result.file_error.line == 2
    assert "line 2" in message and "0xF1" in message and "'ñ'" in message
    assert "encoding: windows-1252" in message and "CSV UTF-8" in message
    assert students(conn) == {}


def test_a_utf8_file_is_read_as_utf8_even_for_a_windows_1252_district(conn) -> None:
    load(conn, district_doc() | {"encoding": "windows-1252"})
    assert run(conn, csv_bytes(_muñoz_rows())).status == "processed"
    assert students(conn)["S1"]["last_name"] == "Muñoz"  # not "MuÃ±oz"


def test_latin_1_and_the_utf8_bom_are_accepted(conn) -> None:
    load(conn, district_doc() | {"encoding": "latin-1"}, district_doc(code="D2"))
    latin = csv_bytes(_muñoz_rows()).decode("utf-8").encode("latin-1")
    assert run(conn, latin).status == "processed"
    bom = codecs.BOM_UTF8 + csv_bytes([row("S9", last_name="Muñoz")])
    assert run(conn, bom, district="D2").status == "processed"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_with_a_bom_is_rejected_with_how_to_save_it(conn, codec: str) -> None:
    # SPEC §2: anything that is not UTF-8 text rejects the file
    load(conn, district_doc())
    bom = codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE
    data = bom + csv_bytes(_muñoz_rows()).decode("utf-8").encode(codec)
    result = run(conn, data)
    assert result.status == "rejected"
    assert result.error_codes == {"FILE_ENCODING": 1}
    assert result.file_error is not None and result.file_error.line == 1
    assert "UTF-16" in result.file_error.message and "CSV UTF-8" in result.file_error.message
    assert students(conn) == {}


def test_undecodable_bytes_name_the_line_and_the_bytes() -> None:
    header = csv_bytes([]).rstrip(b"\r\n")
    with pytest.raises(FileRejected) as bad_1252:
        decode_upload(header + b"\r\n101,S1,A\x81b,x\r\n", "windows-1252")
    assert bad_1252.value.line == 2 and "0x81" in bad_1252.value.message
    assert decode_upload(b"plain ascii", "latin-1") == b"plain ascii"


def test_the_encoding_is_master_data(conn) -> None:
    load(conn, district_doc() | {"encoding": "CP1252"})
    assert get_district(conn, "D1").encoding == "windows-1252"
    with pytest.raises(MasterDataError, match="district D1: encoding must be one of"):
        parse_master_data(_yaml(district_doc() | {"encoding": "ebcdic"}))


# -- participating grades ----------------------------------------------------------------


def test_a_grade_outside_the_participating_grades_is_a_row_error_except_on_d(conn) -> None:
    # OLD was created in grade 9 before the district narrowed its grades (a new existing
    # student outside them is refused, as an A row would be)
    load(conn, district_doc(existing=[existing_student("OLD", grade="9")]))
    load(
        conn,
        district_doc(existing=[existing_student("OLD", grade="9")])
        | {"grades": ["K", 1, "02", 3, 4, 5]},
    )
    result = run(
        conn,
        [
            row("IN", grade="05"),
            row("OUT", grade="9"),
            row("OLD", "D", grade="9", password=""),
            row("K1", grade="k"),
        ],
    )
    assert result.status == "partially_processed"
    assert result.error_codes == {"GRADE_NOT_PARTICIPATING": 1}
    error = result.errors.iloc[0]
    assert (error.line, error.student_id, error.column) == (3, "OUT", "Grade")
    assert "Grade 9 does not participate" in error.message and "K, 1, 2, 3, 4, 5" in error.message
    stored = students(conn)
    assert "OUT" not in stored and stored["OLD"]["status"] == "deactivated"
    assert get_district(conn, "D1").grades == ("K", "1", "2", "3", "4", "5")


def test_every_grade_participates_without_the_setting(conn) -> None:
    load(conn, district_doc())
    assert run(conn, [row("S1", grade="12")]).status == "processed"


# -- closed schools ----------------------------------------------------------------------


def test_a_d_row_for_a_closed_schools_student_deactivates_it_and_returns_the_license(
    conn,
) -> None:
    # C1 was created while 900 was open; the district closed it since
    opened = district_doc(existing=[existing_student("C1", school="900")])
    opened["schools"][-1]["active"] = True
    load(conn, opened)
    load(conn, district_doc(existing=[existing_student("C1", school="900")]))
    assert used(conn, "ENT-D1") == 1
    result = run(
        conn,
        [
            row("C1", "D", school_code="900", password=""),
            row("NEW", "A", school_code="900"),
            row("C1X", "I", school_code="900"),
            row("BIN", "D", school_code=BIN),
        ],
    )
    assert result.counts["deactivated"] == 1
    codes = sorted((e.student_id, e.code) for e in result.errors.itertuples())
    assert codes == [
        ("BIN", "SCHOOL_NOT_FOUND"),
        ("BIN", "STUDENT_NOT_FOUND"),
        ("C1X", "SCHOOL_NOT_FOUND"),
        ("C1X", "STUDENT_NOT_FOUND"),
        ("NEW", "SCHOOL_NOT_FOUND"),
    ]
    assert students(conn)["C1"]["status"] == "deactivated"
    assert used(conn, "ENT-D1") == 0
    assert_license_invariant(conn)


# -- IGNORE ------------------------------------------------------------------------------


def test_ignore_is_read_as_i_in_any_case(conn) -> None:
    load(conn, district_doc(existing=[existing_student("E1"), existing_student("E2")]))
    result = run(
        conn,
        [
            row("E1", "IGNORE", last_name="Renamed", password=""),
            row("E2", "ignore", password=""),
            row("E3", "IGNORED"),
        ],
    )
    assert result.counts["updated"] == 1 and result.counts["unchanged"] == 1
    assert result.error_codes == {"INVALID_STATUS": 1}
    assert "IGNORE" in result.errors.iloc[0].message
    assert students(conn)["E1"]["last_name"] == "Renamed"


# -- unknown master-data keys ------------------------------------------------------------


def _yaml(*districts: dict) -> str:
    import yaml

    return yaml.safe_dump({"districts": list(districts)})


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"grade": ["K"]}, r"district D1: unknown key `grade` \(did you mean `grades`\?\)"),
        ({"future_setting": 1}, r"district D1: unknown key `future_setting`"),
        (
            {"schools": [{"code": "D1-HB", "name": "Bin", "actve": False}]},
            r"district D1 school D1-HB: unknown key `actve` \(did you mean `active`\?\)",
        ),
        (
            {"enterprise_order": {"number": "E", "licenses": 1, "size": 2}},
            r"district D1 enterprise_order: unknown key `size`",
        ),
        (
            {"existing_students": [existing_student("E1") | {"gradee": "5"}]},
            r"district D1 student E1: unknown key `gradee` \(did you mean `grade`\?\)",
        ),
    ],
)
def test_an_unknown_master_data_key_is_an_error_naming_the_district_and_key(
    patch: dict, expected: str
) -> None:
    with pytest.raises(MasterDataError, match=expected):
        parse_master_data(_yaml(district_doc() | patch))


def test_an_unknown_sftp_key_and_the_new_keys(conn) -> None:
    doc = district_doc() | {
        "sftp": {"host": "h", "username": "u", "host_key": "k", "pasword_env": "X"}
    }
    with pytest.raises(MasterDataError, match=r"district D1 sftp: unknown key `pasword_env`"):
        parse_master_data(_yaml(doc))
    spec = parse_master_data(
        "districts:\n"
        + _yaml(district_doc(guard=None)).split("\n", 1)[1]
        + "  expected_by: 06:00\n  failure_contacts: [sis@d1.example.org]\n"
        + "  guard: {}\n  mode: full_roster\n"
    )[0]
    assert spec.expected_by.isoformat() == "06:00:00"  # unquoted: YAML's sexagesimal 360
    assert spec.failure_contacts == ("sis@d1.example.org",)
