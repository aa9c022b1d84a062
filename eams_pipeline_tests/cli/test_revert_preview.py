"""`eams uploads revert --dry-run` shows what the revert would put back, by the revert's own
statements rolled back: the figures a real revert then applies. On a terminal the revert
shows them and asks before it changes anything (unless --yes)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from eams_pipeline_tests.builders import csv_bytes, district_doc, existing_student, row
from eams_pipeline_tests.cli.run_eams import eams_on_terminal, load_districts
from eams_pipeline_tests.cli_runner import eams


@pytest.fixture
def district(db_url: str, tmp_path: Path) -> str:
    existing = [existing_student(f"E{i}") for i in range(1, 5)]
    existing.append(existing_student("R1", order="REG-D1"))
    load_districts(db_url, tmp_path, district_doc(licenses=20, existing=existing))
    return db_url


def _process(url: str, tmp_path: Path, name: str, rows: list[dict[str, str]]) -> str:
    """Process the rows; the new upload's key."""
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows))
    done = eams("process", "--district", "D1", str(path), cwd=tmp_path, url=url)
    assert done.returncode == 0, done.stderr
    return _uploads(url, tmp_path)[0]["upload_key"]


def _uploads(url: str, tmp_path: Path) -> list[dict]:
    return json.loads(eams("uploads", "list", "--district", "D1", "--json",
                           cwd=tmp_path, url=url).stdout)  # fmt: skip


def _state(url: str, tmp_path: Path) -> tuple[str, dict[str, int], list[str]]:
    """The students' export, each order's available licenses, the uploads' statuses."""
    students = eams("export", "students", "--district", "D1", cwd=tmp_path, url=url).stdout
    licenses = eams("export", "licenses", "--district", "D1", cwd=tmp_path, url=url).stdout
    available = {r["Order"]: int(r["Available"]) for r in csv.DictReader(io.StringIO(licenses))}
    return students, available, [u["status"] for u in _uploads(url, tmp_path)]


def _first_upload() -> list[dict[str, str]]:
    return [
        row("E1", password="", last_name="Renamed"),
        row("E2", "D", password=""),  # its Enterprise license goes back to the bin
        row("N1", "A"),  # created: takes a license
        row("N2", "A"),
        row("R1", "A", password=""),  # regular order -> Enterprise
    ]


def test_the_dry_run_shows_the_figures_the_revert_then_applies(district, tmp_path) -> None:
    url = district
    key = _process(url, tmp_path, "one.csv", _first_upload())
    before = _state(url, tmp_path)

    dry = eams("uploads", "revert", key, "--dry-run", cwd=tmp_path, url=url)
    assert dry.returncode == 0, dry.stderr
    preview = json.loads(dry.stdout)
    assert preview["dry_run"] is True
    [entry] = preview["would_revert"]
    assert entry == {
        "upload_key": key,
        "district": "D1",
        "restored": 3,  # E1, E2, R1
        "created_deactivated": 2,  # N1, N2
        # Enterprise: E2's license taken back, N1's, N2's and R1's freed; R1's regular
        # order gives one again
        "licenses_available": {"ENT-D1": 2, "REG-D1": -1},
    }
    assert _state(url, tmp_path) == before  # nothing changed

    done = eams("uploads", "revert", key, "--by", "bob", "--no-email", cwd=tmp_path, url=url)
    assert done.returncode == 0, done.stderr
    reverted = json.loads(done.stdout)
    assert reverted == {"dry_run": False, "reverted": preview["would_revert"]}
    _, available, statuses = _state(url, tmp_path)
    assert {order: available[order] - before[1][order] for order in available} == {
        "ENT-D1": 2, "REG-D1": -1,
    }  # fmt: skip
    assert statuses[0] == "reverted"


def test_a_cascade_dry_run_lists_every_upload_newest_first(district, tmp_path) -> None:
    url = district
    first = _process(url, tmp_path, "one.csv", [row("E1", password="", first_name="One")])
    second = _process(
        url, tmp_path, "two.csv", [row("E1", password="", first_name="Two"), row("N1")]
    )
    alone = eams("uploads", "revert", first, "--dry-run", cwd=tmp_path, url=url)
    assert alone.returncode == 1 and alone.stdout == ""
    assert alone.stderr.startswith(f"eams: error: upload {first} cannot be reverted alone")
    assert second in alone.stderr

    dry = eams("uploads", "revert", first, "--dry-run", "--cascade", cwd=tmp_path, url=url)
    would = json.loads(dry.stdout)["would_revert"]
    assert [(r["upload_key"], r["restored"], r["created_deactivated"]) for r in would] == [
        (second, 1, 1), (first, 1, 0),
    ]  # fmt: skip
    shown = eams_on_terminal(
        "uploads", "revert", first, "--dry-run", "--cascade", cwd=tmp_path, url=url
    )
    assert shown.returncode == 0, shown.output
    assert shown.output.splitlines() == [
        f"Dry run (nothing was changed): reverting {first} would put back 2 uploads, newest "
        "first",
        f"  {second}: 1 students restored as before, 1 students it created deactivated",
        "    licenses available: ENT-D1 +1",
        f"  {first}: 1 students restored as before, 0 students it created deactivated",
    ]
    done = eams("uploads", "revert", first, "--cascade", "--no-email", cwd=tmp_path, url=url)
    assert json.loads(done.stdout)["reverted"] == would


def test_on_a_terminal_the_revert_asks_first(district, tmp_path) -> None:
    url = district
    key = _process(url, tmp_path, "one.csv", _first_upload())
    before = _state(url, tmp_path)

    declined = eams_on_terminal(
        "uploads", "revert", key, "--no-email", cwd=tmp_path, url=url, answers={"[y/N]:": "n"}
    )
    assert declined.returncode == 1, declined.output
    lines = declined.output.splitlines()
    assert lines[0] == f"Reverting {key} would put back"
    assert lines[1] == f"  {key}: 3 students restored as before, 2 students it created deactivated"
    assert lines[3].startswith("Revert 1 upload of D1? [y/N]: n")
    assert lines[-1] == "eams: error: not confirmed: nothing was reverted"
    assert _state(url, tmp_path) == before

    confirmed = eams_on_terminal(
        "uploads", "revert", key, "--by", "bob", "--no-email",
        cwd=tmp_path, url=url, answers={"[y/N]:": "y"},
    )  # fmt: skip
    assert confirmed.returncode == 0, confirmed.output
    lines = confirmed.output.splitlines()
    assert lines[-3:] == [
        "Reverted 1 upload, newest first",
        f"  {key}: 3 students restored as before, 2 students it created deactivated",
        "    licenses available: ENT-D1 +2, REG-D1 -1",
    ]
    assert _state(url, tmp_path)[2][0] == "reverted"

    second = _process(url, tmp_path, "two.csv", [row("E3", password="", first_name="Z")])
    unasked = eams_on_terminal(
        "uploads", "revert", second, "--yes", "--json", "--no-email", cwd=tmp_path, url=url
    )
    assert unasked.returncode == 0, unasked.output
    assert json.loads(unasked.output)["reverted"][0]["restored"] == 1  # no question asked
