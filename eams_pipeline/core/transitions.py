"""The status matrix of SPEC §4, as a table a reader can hold next to transitions.csv.

Columns mean exactly what they mean in `transitions.csv`:
before (student_before), order (order_before), flag (status_flag), error (error_code),
after (student_after), order_after, ent (enterprise_used_delta), prev
(previous_order_used_delta). `any` in transitions.csv is spelled out as both order kinds
here so the table can be merged on directly.
"""

from __future__ import annotations

import pandas as pd

ACTIVE, DEACTIVATED, ABSENT = "active", "deactivated", "absent"
ENTERPRISE, REGULAR, NONE = "enterprise", "regular", "none"
UNCHANGED = "unchanged"

_COLUMNS = ("case", "before", "order", "flag", "error", "after", "order_after", "ent", "prev")
# fmt: off
_MATRIX = [
    # case before       order       flag  error                after        order_after  ent prev
    (1,  ACTIVE,      ENTERPRISE, "A", None,               ACTIVE,      ENTERPRISE,  0,  0),
    (2,  ACTIVE,      REGULAR,    "A", None,               ACTIVE,      ENTERPRISE, +1, -1),
    (3,  ACTIVE,      ENTERPRISE, "D", None,               DEACTIVATED, ENTERPRISE, -1,  0),
    (4,  ACTIVE,      REGULAR,    "D", None,               DEACTIVATED, REGULAR,     0, -1),
    (5,  ACTIVE,      ENTERPRISE, "X", "STUDENT_EXISTS",   ACTIVE,      UNCHANGED,   0,  0),
    (5,  ACTIVE,      REGULAR,    "X", "STUDENT_EXISTS",   ACTIVE,      UNCHANGED,   0,  0),
    (6,  ACTIVE,      ENTERPRISE, "I", None,               ACTIVE,      ENTERPRISE,  0,  0),
    (7,  ACTIVE,      REGULAR,    "I", None,               ACTIVE,      ENTERPRISE, +1, -1),
    (8,  DEACTIVATED, ENTERPRISE, "A", None,               ACTIVE,      ENTERPRISE, +1,  0),
    (8,  DEACTIVATED, REGULAR,    "A", None,               ACTIVE,      ENTERPRISE, +1,  0),
    (9,  DEACTIVATED, ENTERPRISE, "D", None,               DEACTIVATED, ENTERPRISE,  0,  0),
    (10, DEACTIVATED, REGULAR,    "D", None,               DEACTIVATED, ENTERPRISE,  0,  0),
    (11, DEACTIVATED, ENTERPRISE, "X", "STUDENT_EXISTS",   DEACTIVATED, UNCHANGED,   0,  0),
    (11, DEACTIVATED, REGULAR,    "X", "STUDENT_EXISTS",   DEACTIVATED, UNCHANGED,   0,  0),
    (12, DEACTIVATED, ENTERPRISE, "I", None,               DEACTIVATED, ENTERPRISE,  0,  0),
    (13, DEACTIVATED, REGULAR,    "I", None,               DEACTIVATED, ENTERPRISE,  0,  0),
    (14, ABSENT,      NONE,       "A", None,               ACTIVE,      ENTERPRISE, +1,  0),
    (15, ABSENT,      NONE,       "D", "STUDENT_NOT_FOUND", ABSENT,     NONE,        0,  0),
    (16, ABSENT,      NONE,       "X", None,               DEACTIVATED, ENTERPRISE,  0,  0),
    (17, ABSENT,      NONE,       "I", "STUDENT_NOT_FOUND", ABSENT,     NONE,        0,  0),
]
# fmt: on

# the cases that create a student (no student before, one after): they need a password
CREATING_CASES = frozenset(
    case for case, before, *_, after, _oa, _e, _p in _MATRIX if before == ABSENT and after != ABSENT
)

TRANSITIONS = pd.DataFrame.from_records(_MATRIX, columns=list(_COLUMNS)).astype(
    {"case": "int64", "ent": "int64", "prev": "int64"}
)
