"""`low_licenses` and `account_managers` in the master data: as strict as every other key,
each refusal naming its line, the district and the key; what is given is what the
parser reads back (db/test_license_settings.py: what the database keeps)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from eams_pipeline.core.master_data import MasterDataError, parse_master_data
from eams_pipeline_tests.builders import district_doc


def _text(**keys: Any) -> str:
    return yaml.safe_dump({"districts": [district_doc(code="D1") | keys]}, sort_keys=False)


def _line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def _refusal(text: str) -> str:
    with pytest.raises(MasterDataError) as info:
        parse_master_data(text)
    return str(info.value)


def test_the_keys_are_read_as_given() -> None:
    [d] = parse_master_data(
        _text(low_licenses=25, account_managers=["am@vantage.example", "am2@vantage.example"])
    )
    assert d.low_licenses == 25
    assert d.account_managers == ("am@vantage.example", "am2@vantage.example")
    [default] = parse_master_data(_text())
    assert default.low_licenses is None and default.account_managers == ()
    [zero] = parse_master_data(_text(low_licenses=0, account_managers=None))
    assert zero.low_licenses == 0 and zero.account_managers == ()


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("-1", "low_licenses must be at least 0, got the number -1"),
        ('"5"', "low_licenses must be a whole number, got '5'"),
        ("true", "low_licenses must be a whole number, got true"),
        ("2.5", "low_licenses must be a whole number, got the number 2.5"),
        ("[5]", "low_licenses must be a whole number, got a list"),
        ("101", "low_licenses 101 is more than the Enterprise order's 100 licenses"),
    ],
)
def test_a_bad_low_licenses_names_its_line(value: str, said: str) -> None:
    text = _text(low_licenses="PLACEHOLDER").replace("PLACEHOLDER", value)
    message = _refusal(text)
    assert message.startswith(f"line {_line_of(text, 'low_licenses:')}: district D1: {said}")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('"am@vantage.example"', "account_managers must be a list"),
        ("[not-an-address]", "account_managers[0] is not a valid email address: 'not-an-address'"),
        ("[am@vantage.example, 5]", "account_managers[1] must be text"),
    ],
)
def test_bad_account_managers_name_their_line(value: str, said: str) -> None:
    text = _text(account_managers="PLACEHOLDER").replace("PLACEHOLDER", value)
    message = _refusal(text)
    assert message.startswith(f"line {_line_of(text, 'account_managers:')}: district D1: {said}")


def test_a_misspelt_key_is_named_with_the_nearest() -> None:
    message = _refusal(_text(low_license=5))
    assert "district D1: unknown key `low_license` (did you mean `low_licenses`?)" in message
