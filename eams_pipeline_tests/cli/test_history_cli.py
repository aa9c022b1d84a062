"""`eams process` on a held file, `eams uploads list|show|approve|discard|revert` and
`eams history`, run as an operator runs them (a real process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from eams_pipeline_tests.builders import csv_bytes, district_doc, existing_student, row
from eams_pipeline_tests.cli_runner import eams

IDS = [f"S{i:02d}" for i in range(10)]


@pytest.fixture
def district(db_url: str, tmp_path: Path) -> str:
    # the default percentages with a floor of 1 student (10 students)
    doc = district_doc(
        licenses=20, existing=[existing_student(s) for s in IDS], guard={"min_count": 1}
    )
    setup = tmp_path / "setup.yaml"
    setup.write_text(yaml.safe_dump({"districts": [doc]}))
    assert eams("setup", "load", str(setup), cwd=tmp_path, url=db_url).returncode == 0
    # the first applied upload (every student, unchanged): the guard's baseline
    done, summary, _ = _process(db_url, tmp_path, [row(s, password="") for s in IDS], "base.csv")
    assert done.returncode == 0 and summary["unchanged"] == len(IDS), done.stderr
    return db_url


def _process(url: str, tmp_path: Path, rows: list[dict[str, str]], name: str):
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows))
    done = eams("process", "--district", "D1", str(path), cwd=tmp_path, url=url)
    return done, json.loads(done.stdout) if done.stdout else None, path


def _keys(url: str, tmp_path: Path) -> list[dict]:
    listed = eams(
        "uploads", "list", "--district", "D1", "--since", "2000-01-01", "--json",
        cwd=tmp_path, url=url,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_held_file_exit_3_then_approve_list_show_history_revert(district, tmp_path) -> None:
    url = district
    # renames S00 and deactivates S01-S02 (2 of 10 active = 20% > 10%): held
    rows = [row(s, password="") for s in IDS]
    rows[0] = row("S00", password="", last_name="Renamed")
    rows[1] = row("S01", "D", password="")
    rows[2] = row("S02", "D", password="")
    done, summary, path = _process(url, tmp_path, rows, "held.csv")
    assert done.returncode == 3, done.stderr
    assert summary["status"] == "held"
    assert summary["guard"]["rule"] == "max_deactivated_pct"
    upload = _keys(url, tmp_path)[0]
    key = upload["upload_key"]
    assert upload["status"] == "held" and upload["guard_trip"]["rule"] == "max_deactivated_pct"

    table = eams("uploads", "list", "--district", "D1", cwd=tmp_path, url=url)
    assert "held: max_deactivated_pct" in table.stdout and key in table.stdout
    shown = eams("uploads", "show", key, cwd=tmp_path, url=url)
    assert "deactivates 2 of 10 active students, 20%, limit 10%" in shown.stdout

    approved = eams(
        "uploads", "approve", key, "--file", str(path), "--by", "alice", "--no-email",
        cwd=tmp_path, url=url,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] == "processed"
    upload = _keys(url, tmp_path)[0]
    assert (upload["status"], upload["decision"], upload["decided_by"]) == (
        "processed", "approved", "alice",
    )  # fmt: skip

    history = eams("history", "--district", "D1", "--student", "S00", cwd=tmp_path, url=url)
    assert history.returncode == 0, history.stderr
    assert key in history.stdout
    assert "Last Name: LastS00 -> Renamed" in history.stdout
    assert "argon2" not in history.stdout
    deact = eams("history", "--district", "D1", "--student", "S01", "--json",
                 cwd=tmp_path, url=url)  # fmt: skip
    (entry,) = json.loads(deact.stdout)
    assert {"field": "status", "label": "Status", "before": "active",
            "after": "deactivated"} in entry["changes"]  # fmt: skip

    reverted = eams(
        "uploads", "revert", key, "--by", "bob", "--no-email", cwd=tmp_path, url=url
    )
    assert reverted.returncode == 0, reverted.stderr
    assert json.loads(reverted.stdout)["reverted"][0]["restored"] == 3
    upload = _keys(url, tmp_path)[0]
    assert upload["status"] == "reverted" and upload["reverted_by"] == "bob"
    history = eams("history", "--district", "D1", "--student", "S00", cwd=tmp_path, url=url)
    assert "[reverted" in history.stdout and "by bob]" in history.stdout
    export = eams("export", "students", "--district", "D1", cwd=tmp_path, url=url).stdout
    assert "Renamed" not in export and "deactivated" not in export


def test_discard_and_refusals(district, tmp_path) -> None:
    url = district
    rows = [row(s, "D", password="") for s in IDS]
    done, _summary, _ = _process(url, tmp_path, rows, "all-d.csv")
    assert done.returncode == 3
    key = _keys(url, tmp_path)[0]["upload_key"]
    discarded = eams("uploads", "discard", key, "--by", "carol", "--no-email",
                     cwd=tmp_path, url=url)  # fmt: skip
    assert discarded.returncode == 0, discarded.stderr
    assert json.loads(discarded.stdout)["status"] == "discarded"
    again = eams("uploads", "discard", key, "--no-email", cwd=tmp_path, url=url)
    assert again.returncode == 1 and "not held" in again.stderr
    refused = eams("uploads", "revert", key, cwd=tmp_path, url=url)
    assert refused.returncode == 1 and "discarded" in refused.stderr
    export = eams("export", "students", "--district", "D1", cwd=tmp_path, url=url).stdout
    assert "deactivated" not in export


def test_revert_refused_on_conflict_names_the_later_upload(district, tmp_path) -> None:
    url = district
    rest = [row(s, password="") for s in IDS[1:]]  # full files: no row drop
    for name in ("One", "Two"):
        done, _, _ = _process(
            url, tmp_path, [row("S00", password="", first_name=name), *rest], f"{name}.csv"
        )
        assert done.returncode == 0, done.stderr
    newest, oldest = (u["upload_key"] for u in _keys(url, tmp_path)[:2])
    refused = eams("uploads", "revert", oldest, cwd=tmp_path, url=url)
    assert refused.returncode == 1 and newest in refused.stderr
    cascaded = eams("uploads", "revert", oldest, "--cascade", "--no-email", cwd=tmp_path, url=url)
    assert cascaded.returncode == 0, cascaded.stderr
    assert [r["upload_key"] for r in json.loads(cascaded.stdout)["reverted"]] == [newest, oldest]


def test_emails_of_decisions_on_an_upload_of_eams_process(
    district, tmp_path, smtp_server, monkeypatch
) -> None:
    """An upload an operator processed with `eams process` is not on the district's SFTP
    site (nor in Dagster): the CLI emails the decisions, never pointing to a file there."""
    monkeypatch.setenv("EAMS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("EAMS_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("EAMS_SMTP_SECURITY", "none")
    url = district
    rows = [row(s, "D", password="") for s in IDS[:3]]
    rows += [row(s, password="") for s in IDS[3:9]]
    rows.append(row(IDS[9], grade="15", password=""))  # a row error: an error file, locally
    done, summary, path = _process(url, tmp_path, rows, "held.csv")
    assert done.returncode == 3 and summary["error_file"], done.stderr
    key = _keys(url, tmp_path)[0]["upload_key"]
    shown = eams("uploads", "show", key, cwd=tmp_path, url=url)
    assert (
        f"eams uploads approve {key} --file PATH_OF_THE_FILE --by YOUR_NAME" in shown.stdout
    )  # not archived: the file is needed
    assert f"eams uploads discard {key} --by YOUR_NAME" in shown.stdout

    approved = eams(
        "uploads", "approve", key, "--file", str(path), "--by", "alice", cwd=tmp_path, url=url
    )
    assert approved.returncode == 0, approved.stderr
    [mail] = smtp_server.wait_for(1)
    assert "PARTIALLY processed after review" in mail["Subject"]
    text = " ".join(mail.get_content().split())
    assert "APPROVED after review by alice" in text
    assert "deactivates 3 of 10 active students, 30%, limit 10%" in text
    assert "on your SFTP site:" not in text and summary["error_file"] not in text
    assert "The error file is not on your SFTP site; eAMS support can send it to you." in text

    reverted = eams("uploads", "revert", key, "--by", "carol", cwd=tmp_path, url=url)
    assert reverted.returncode == 0, reverted.stderr
    mails = smtp_server.wait_for(2)
    assert "REVERTED" in mails[1]["Subject"] and key in mails[1]["Subject"]
    body = mails[1].get_content()
    assert "REVERTED by carol" in " ".join(body.split())
    assert re.search(r"Students restored as before +3\n", body)
    for m in mails:
        assert not any(s in m.get_content() for s in IDS)
