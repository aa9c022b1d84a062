"""The transition plan: a pure function from an upload's rows and the district's current
state to what each row does (SPEC §4). No I/O; no per-row Python loop.

It decides, in this order: duplicates in the file, schools that are not valid targets,
the transition of `transitions.csv` for each row (with STUDENT_EXISTS / STUDENT_NOT_FOUND),
usernames taken by other students, passwords required for new students, which rows
change anything at all, and last the licenses: every return to the bin of the file is
counted before any acquisition, then acquisitions are granted in file order until the
bin is empty (NO_LICENSE_AVAILABLE for the rest).

Before all that, the quiet rows are set apart: rows of stored students that repeat what is
stored and keep the student's status, breaking no rule (`_quiet`, from integers). They are
counted `unchanged`; on a nightly file they are most rows, and only the others are decided
one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from eams_pipeline.core.errors import (
    NAMED_STUDENT_ID,
    ErrorCode,
    concat_errors,
    error_frame,
    visible_each,
)
from eams_pipeline.core.fingerprints import (
    data_fingerprint,
    password_fingerprint,
    recognised_by_previous,
)
from eams_pipeline.core.outcome import CHANGES, OUTCOMES
from eams_pipeline.core.template import COLUMNS, DISPLAY_NAME
from eams_pipeline.core.transitions import (
    ABSENT,
    ACTIVE,
    CREATING_CASES,
    DEACTIVATED,
    ENTERPRISE,
    NONE,
    REGULAR,
    TRANSITIONS,
)


@dataclass(frozen=True)
class DistrictSnapshot:
    """What the plan needs to know of the district, read under the district's lock.

    schools:  code, school_id, active, holding_bin (bool)           - this district's schools
    students: student_id, student_pk, status, order_id, school_id,
              data_hash, password_fingerprint (nullable),
              username_lower                                        - this district's students
    taken_usernames: username_lower, district_id, student_id        - who holds a file username
              (or a function returning it: the database lookup, still running while
              the plan decides what does not depend on it)
    grades: the district's participating grades (normalised: K, 1..12); None: every grade
    """

    district_id: int
    enterprise_order_id: int
    bin_available: int
    schools: pd.DataFrame
    students: pd.DataFrame
    taken_usernames: pd.DataFrame | Callable[[], pd.DataFrame]
    grades: frozenset[str] | None = None


@dataclass(frozen=True)
class Plan:
    """rows: the well-formed data rows decided one by one, indexed by `row`, with their
             decision: every row but the quiet ones (make_plan._quiet: unchanged and
             breaking no rule, counted in counts["unchanged"] only).
    changes: the rows that write a student (added, activated, deactivated, updated), with
             CHANGE_COLUMNS only (what the apply and the hashing read).
    license_deltas: order_id, delta - what each order's `used` counter moves by.
    missing: full-roster mode: student_pk, order_id - the active students absent from the
             file, deactivated as if a D row had been sent for each (not rows of the file:
             counted apart as `deactivated_missing`; their licenses are in license_deltas).
    rekeyed: student_pk, password_fp_before, password_fp - the stored students whose row
             carries their stored password as fingerprinted with a previous server secret
             (make_plan's `previous_keys`), on a row without errors: their stored
             fingerprint moves to the current key (not a change: no history, not counted).
    """

    rows: pd.DataFrame
    changes: pd.DataFrame
    errors: pd.DataFrame
    license_deltas: pd.DataFrame
    counts: dict[str, int]
    error_codes: dict[str, int]
    missing: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {"student_pk": pd.Series(dtype="Int64"), "order_id": pd.Series(dtype="Int64")}
        )
    )
    rekeyed: pd.DataFrame = field(default_factory=lambda: _rekeyed(np.zeros(0, "int64")))

    @property
    def deactivated_missing(self) -> int:
        return len(self.missing)


def _rekeyed(
    student_pk: np.ndarray,
    before: np.ndarray | None = None,
    after: np.ndarray | None = None,
) -> pd.DataFrame:
    empty = np.zeros(0, dtype="int64")
    return pd.DataFrame(
        {
            "student_pk": student_pk.astype("int64"),
            "password_fp_before": (empty if before is None else before).astype("int64"),
            "password_fp": (empty if after is None else after).astype("int64"),
        }
    )


def make_plan(
    rows: pd.DataFrame,
    row_errors: pd.DataFrame,
    total_rows: int,
    snapshot: DistrictSnapshot,
    match: RowMatch,
    fingerprint_key: str,
    *,
    full_roster: bool = False,
    password_fps: np.ndarray | None = None,
    data_hashes: np.ndarray | None = None,
    previous_keys: Sequence[str] = (),
    recognised: np.ndarray | None = None,
) -> Plan:
    """Decide every row. `rows` are the normalised well-formed rows (indexed by `row`),
    `row_errors` the errors found so far (malformed rows and column rules), `match` the
    rows matched to the snapshot's students (match_rows). With `full_roster` the
    district's active students absent from the file are deactivated too.
    `password_fps` (password_fingerprint of these rows), `data_hashes` (their
    data_fingerprint) and `recognised` (recognised_by_previous of them against the
    snapshot's students) are computed unless the caller has them.

    `previous_keys`: fingerprint keys of earlier server secrets. A row whose password is
    its stored student's under one of them is the stored password: it is decided as such
    (unchanged, quiet when nothing else differs) and listed in `Plan.rekeyed`, so that the
    apply moves the stored fingerprint to `fingerprint_key`."""
    df = rows.copy(deep=False)  # copy-on-write: the caller's frame is never changed
    if password_fps is None:
        password_fps = password_fingerprint(df["student_id"], df["password"], fingerprint_key)
    if data_hashes is None:
        data_hashes = data_fingerprint(df)
    password_fps, rekey = _recognise_previous_keys(
        df, snapshot.students, match.positions, password_fps, previous_keys, recognised
    )
    # The quiet rows (on a nightly file, most of them) are unchanged and break no rule by
    # construction (_quiet): they are counted, and only the other rows are decided below.
    quiet = _quiet(df, row_errors, snapshot, match, password_fps, data_hashes)
    if quiet.any():
        rest = ~quiet
        df, match = df[rest], match.select(rest)
        password_fps, data_hashes = password_fps[rest], data_hashes[rest]
    df["username_lower"] = pd.Series(match.username_lower, index=df.index, dtype="str")
    # each step, in this order, attaches its decision columns to df and returns its errors
    errors = [
        row_errors,
        *_repeated_in_file(df, match),
        *_check_schools(df, snapshot, row_errors),
        *_decide_transitions(df, snapshot, match.positions, row_errors),
        _check_usernames(df, snapshot, row_errors),
        _check_passwords(df),
    ]
    no_license, applied = _grant_licenses(df, concat_errors(errors), snapshot.bin_available)
    errors.append(no_license)
    _changes(df, applied, snapshot.enterprise_order_id, password_fps, data_hashes)
    all_errors = concat_errors(errors)
    df.loc[_in_rows(df, all_errors["row"].to_numpy()), "outcome"] = "errors"
    plan = _finish(df, all_errors, total_rows, quiet=int(quiet.sum()))
    plan = _with_rekeyed(plan, rekey)
    if full_roster:
        plan = with_missing(plan, snapshot, rows, row_errors)
    return plan


def _repeated_in_file(df: pd.DataFrame, match: RowMatch) -> list[pd.DataFrame]:
    """DUPLICATE_STUDENT_ID and DUPLICATE_USERNAME: a value on more than one row of the file.
    A Username is never quoted: a swapped export puts the password there (README, Security)."""
    return [
        _flag(
            df,
            pd.Series(match.repeated_ids, index=df.index),
            ErrorCode.DUPLICATE_STUDENT_ID,
            "student_id",
            "Student ID {v} appears on more than one row of the file.",
            "student_id",
        ),
        _flag(
            df,
            pd.Series(match.repeated_usernames, index=df.index),
            ErrorCode.DUPLICATE_USERNAME,
            "username",
            "The same Username (letter case aside) appears on more than one row of the file.",
            None,
        ),
    ]


def _check_schools(
    df: pd.DataFrame, snapshot: DistrictSnapshot, row_errors: pd.DataFrame
) -> list[pd.DataFrame]:
    """Each row's school (`school_id`, attached to df): SCHOOL_NOT_FOUND, and
    GRADE_NOT_PARTICIPATING when the district names its grades."""
    # valid: present and no column rule broken (README: transitions and USERNAME_TAKEN need it)
    deactivating = _passes_column_rules(df, row_errors, "status") & (df["status"] == "D")
    _attach_school(df, snapshot.schools, deactivating)
    errors = _school_not_found(df, snapshot.schools)
    if snapshot.grades is not None:
        # a D row is exempt: a student who left the participating grades can be deactivated
        outside = (
            _passes_column_rules(df, row_errors, "grade")
            & ~df["grade"].isin(sorted(snapshot.grades))
            & ~deactivating
        )
        listed = ", ".join(g for g in ("K", *map(str, range(1, 13))) if g in snapshot.grades)
        errors.append(
            _flag(
                df,
                outside,
                ErrorCode.GRADE_NOT_PARTICIPATING,
                "grade",
                "Grade {v} does not participate in eAMS for this district (participating: "
                + listed
                + "); only a D row may name it.",
                "grade",
            )
        )
    return errors


def _school_not_found(df: pd.DataFrame, schools: pd.DataFrame) -> list[pd.DataFrame]:
    """SCHOOL_NOT_FOUND (one code, SPEC §5) on the rows without a school; the message says
    why: a closed school, the Holding Bin School, or not a school of the district."""
    not_found = df["school_code"].notna() & df["school_id"].isna()
    hit = np.flatnonzero(not_found.to_numpy(dtype=bool, na_value=False))
    named = df["school_code"].iloc[hit]  # looked up on those rows only

    def naming(codes: pd.Series) -> pd.Series:
        out = np.zeros(len(df), dtype=bool)
        out[hit] = named.isin(codes.tolist()).to_numpy(dtype=bool)
        return pd.Series(out, index=df.index)

    closed = naming(schools.loc[~schools["active"] & ~schools["holding_bin"], "code"])
    the_bin = naming(schools.loc[schools["holding_bin"], "code"])
    return [
        _flag(df, mask, ErrorCode.SCHOOL_NOT_FOUND, "school_code", text, "school_code")
        for mask, text in (
            (
                not_found & ~closed & ~the_bin,
                "School Code {v} is not a participating school of this district.",
            ),
            (
                closed,
                "School Code {v} is a closed school of this district: only a D row may name "
                "it (to deactivate its students).",
            ),
            (
                the_bin,
                "School Code {v} is the Enterprise Holding Bin School, which holds the free "
                "licenses: no student is placed there.",
            ),
        )
    ]


def _decide_transitions(
    df: pd.DataFrame, snapshot: DistrictSnapshot, positions: np.ndarray, row_errors: pd.DataFrame
) -> list[pd.DataFrame]:
    """Each row's stored student and its transition (columns attached to df), and the rows
    whose transition is an error: STUDENT_EXISTS, STUDENT_NOT_FOUND."""
    decidable = _passes_column_rules(df, row_errors, "student_id") & _passes_column_rules(
        df, row_errors, "status"
    )
    _attach_student(df, snapshot, positions)
    _attach_transition(df, decidable)
    has_transition_error = df["transition_error"].notna()
    return [
        _flag(
            df,
            has_transition_error & (df["transition_error"] == code.value),
            code,
            "status",
            text,
            "student_id",
        )
        for code, text in (
            (ErrorCode.STUDENT_EXISTS, "Student ID {v} already exists (status X)."),
            (ErrorCode.STUDENT_NOT_FOUND, "Student ID {v} does not exist (D and I need one)."),
        )
    ]


def _check_usernames(
    df: pd.DataFrame, snapshot: DistrictSnapshot, row_errors: pd.DataFrame
) -> pd.DataFrame:
    """USERNAME_TAKEN: a valid username another student holds (in any district)."""
    return _flag(
        df,
        _username_taken(df, snapshot) & _passes_column_rules(df, row_errors, "username"),
        ErrorCode.USERNAME_TAKEN,
        "username",
        "This Username belongs to another student (usernames are unique in all of"
        " MY Access, letter case aside).",
        None,
    )


def _check_passwords(df: pd.DataFrame) -> pd.DataFrame:
    """PASSWORD_REQUIRED: a row that creates a student without a password."""
    return _flag(
        df,
        df["case"].isin(CREATING_CASES) & df["password"].isna(),
        ErrorCode.PASSWORD_REQUIRED,
        "password",
        "Password is required to create a student.",
        None,
    )


def _grant_licenses(
    df: pd.DataFrame, so_far: pd.DataFrame, bin_available: int
) -> tuple[pd.DataFrame, pd.Series]:
    """The licenses of the rows without an error so far: NO_LICENSE_AVAILABLE for the
    acquisitions the bin cannot serve, and the rows that apply."""
    ok = ~_in_rows(df, so_far["row"].to_numpy()) & df["case"].gt(0)
    _licenses(df, ok, bin_available)
    no_license = _flag(
        df,
        ok & ~df["license_granted"],
        ErrorCode.NO_LICENSE_AVAILABLE,
        "status",
        "No license is available in the Enterprise Holding Bin School for this student.",
        None,
    )
    return no_license, ok & df["license_granted"]


@dataclass(frozen=True)
class _Rekey:
    """The rows recognised by a previous key (by `row`) and their students' fingerprints to
    move to the current key (Plan.rekeyed's frame)."""

    rows: np.ndarray
    rekeyed: pd.DataFrame


def _with_rekeyed(plan: Plan, rekey: _Rekey | None) -> Plan:
    """The plan with the fingerprints to move: a row that ends as an error changes
    nothing, its fingerprint included."""
    if rekey is None:
        return plan
    failed = plan.rows.index[(plan.rows["outcome"] == "errors").to_numpy()]
    kept = rekey.rekeyed[~np.isin(rekey.rows, failed)].reset_index(drop=True)
    return replace(plan, rekeyed=kept)


def stored_password_fingerprints(
    students: pd.DataFrame, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The stored password fingerprint of each row's student (`positions`, -1: none) and
    whether there is one (0 and False for a row without a stored student)."""
    stored = students["password_fingerprint"]
    values = np.append(stored.to_numpy(dtype="int64", na_value=0), 0)  # at -1: the 0
    present = np.append(stored.notna().to_numpy(dtype=bool), False)
    return values[positions], present[positions]


def _recognise_previous_keys(
    df: pd.DataFrame,
    students: pd.DataFrame,
    positions: np.ndarray,
    password_fps: np.ndarray,
    previous_keys: Sequence[str],
    recognised: np.ndarray | None,
) -> tuple[np.ndarray, _Rekey | None]:
    """The rows' password fingerprints as the plan compares them (a row recognised by a
    previous key gets its stored one: the same password), and the recognised rows with
    their students' fingerprints to move to the current key (None: none)."""
    if not previous_keys and recognised is None:
        return password_fps, None
    stored, has_stored = stored_password_fingerprints(students, positions)
    if recognised is None:
        recognised = recognised_by_previous(
            df["student_id"], df["password"], password_fps, stored, has_stored, previous_keys
        )
    at = np.flatnonzero(recognised)
    if len(at) == 0:
        return password_fps, None
    pk = students["student_pk"].to_numpy(dtype="int64")[positions[at]]
    rekey = _Rekey(df.index.to_numpy()[at], _rekeyed(pk, stored[at], password_fps[at]))
    return np.where(recognised, stored, password_fps), rekey


def _quiet(
    df: pd.DataFrame,
    row_errors: pd.DataFrame,
    snapshot: DistrictSnapshot,
    match: RowMatch,
    password_fps: np.ndarray,
    data_hashes: np.ndarray,
) -> np.ndarray:
    """The rows that change nothing and can break no rule, decided from integers: a row of a
    stored student (`match.positions`) on the Enterprise order, whose Student ID and (own)
    username are on no other row, breaking no column rule, whose
    status flag keeps the student as it is (transitions 1 and 6 for an active student,
    9 and 12 for a deactivated one: no license moves), at an open school of the district
    (a participating grade, when the district names them), with the stored data
    fingerprint and no password or the stored one. Each of these is the plan's own test
    for that rule or outcome, so such a row would be decided `unchanged` without an error
    (the reference equivalence tests hold the two together); every other row is decided
    by the whole plan."""
    students = snapshot.students
    n = len(df)
    if len(students) == 0 or n == 0:
        return np.zeros(n, dtype=bool)
    known = match.positions >= 0
    at = np.where(known, match.positions, 0)

    def stored(column: str) -> tuple[np.ndarray, np.ndarray]:  # values at `at`, present
        values = students[column]
        return values.to_numpy(dtype="int64", na_value=0)[at], values.notna().to_numpy()[at]

    order, _ = stored("order_id")
    data_hash, has_data_hash = stored("data_hash")
    password_fp, has_password_fp = stored("password_fingerprint")
    active = (students["status"] == ACTIVE).to_numpy(dtype=bool)[at]
    flag = _positions(_arrow(df["status"]), pa.array(_FLAGS))  # A D X I: 0 1 2 3
    keeps = (flag == 3) | np.where(active, flag == 0, flag == 1)  # I, or A / D as stored
    password = df["password"].notna().to_numpy()
    quiet = (
        known
        & match.own_usernames
        & ~match.repeated_ids
        & ~match.repeated_usernames
        & ~_in_rows(df, row_errors["row"].to_numpy())
        & (order == snapshot.enterprise_order_id)
        & keeps
        & has_data_hash
        & (data_hash == data_hashes)
        & (~password | (has_password_fp & (password_fp == password_fps)))
    )
    schools = snapshot.schools
    open_schools = schools[schools["active"] & ~schools["holding_bin"]]
    quiet &= _positions(_arrow(df["school_code"]), _arrow(open_schools["code"])) >= 0
    if snapshot.grades is not None:
        quiet &= df["grade"].isin(sorted(snapshot.grades)).to_numpy(dtype=bool, na_value=False)
    return quiet


def _in_rows(df: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Whether each row of df (its index: `row`) is one of `rows`: a binary search of the
    few `rows` in the index (ascending: the file's order), not a hash of the whole index."""
    if not df.index.is_monotonic_increasing:
        return df.index.isin(rows)
    index = df.index.to_numpy()
    if len(index) == 0:
        return np.zeros(0, dtype=bool)
    at = np.searchsorted(index, rows)
    hit = at[(at < len(index)) & (index[np.minimum(at, len(index) - 1)] == rows)]
    out = np.zeros(len(index), dtype=bool)
    out[hit] = True
    return out


def with_missing(
    plan: Plan, snapshot: DistrictSnapshot, rows: pd.DataFrame, row_errors: pd.DataFrame
) -> Plan:
    """Full roster: every active student of the district whose Student ID is on no row of
    the file (a row with errors, even a malformed one, still names its student) is
    deactivated as by a D row (transitions 3 and 4): status deactivated, same order, one
    license back to its order (the bin for Enterprise)."""
    # a malformed row's student is the one it names (NAMED_STUDENT_ID), which its error
    # may not show; the other errors' rows are in `rows`
    named_by_errors = row_errors.get(NAMED_STUDENT_ID, row_errors["student_id"])
    named = pd.concat([rows["student_id"].dropna(), named_by_errors.replace("", pd.NA).dropna()])
    students = snapshot.students
    absent = students[
        (students["status"] == ACTIVE) & ~students["student_id"].isin(named.to_numpy())
    ]
    missing = pd.DataFrame(
        {
            "student_pk": absent["student_pk"].astype("Int64").to_numpy(),
            "order_id": absent["order_id"].astype("Int64").to_numpy(),
        }
    )
    if missing.empty:
        return replace(plan, missing=missing)
    returned = missing.groupby("order_id", as_index=False).size().rename(columns={"size": "delta"})
    returned["delta"] = -returned["delta"]
    deltas = pd.concat([plan.license_deltas, returned.astype("int64")], ignore_index=True)
    deltas = deltas.groupby("order_id", as_index=False)["delta"].sum()
    deltas = deltas[deltas["delta"] != 0].astype("int64").reset_index(drop=True)
    return replace(plan, missing=missing, license_deltas=deltas)


_BEFORE = (ABSENT, ACTIVE, DEACTIVATED)  # status_before codes 0, 1, 2
_ORDER_KINDS = (NONE, ENTERPRISE, REGULAR)  # order_kind codes 0, 1, 2
_FLAGS = ("A", "D", "X", "I")
# a value quoted in a message (a School Code has at most 64 characters, a Student ID 32)
_QUOTE_LIMIT = 64


def _transition_positions() -> np.ndarray:
    """TRANSITIONS' row for [status_before code, order_kind code, flag code], -1: none."""
    at = np.full((len(_BEFORE), len(_ORDER_KINDS), len(_FLAGS)), -1, dtype=np.int64)
    for i, (before, order, flag) in enumerate(
        TRANSITIONS[["before", "order", "flag"]].itertuples(index=False)
    ):
        at[_BEFORE.index(before), _ORDER_KINDS.index(order), _FLAGS.index(flag)] = i
    return at


_TRANSITION_AT = _transition_positions()


def _arrow(column: pd.Series) -> pa.Array:
    """A text column as one Arrow string array (no copy for Arrow-backed strings)."""
    values = pa.array(column, type=pa.string(), from_pandas=True)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _positions(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Each value's position in `value_set` (a hash lookup), -1 when absent or null."""
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy().astype("int64")


def student_positions(student_ids: pd.Series, students: pd.DataFrame) -> np.ndarray:
    """Each row's stored student: its position in `students` (Student IDs are unique
    there), -1 for none. Computed once per upload and shared (hashing, username locks,
    plan): one Arrow hash lookup of the file's rows in the district's students."""
    return _positions(_arrow(student_ids), _arrow(students["student_id"]))


def _as_text(coded: pd.Series) -> pd.Series:
    """A categorical column as plain text (by one Arrow take, much faster than `astype`)."""
    codes = coded.cat.codes.to_numpy()
    categories = pa.array(coded.cat.categories.to_numpy(dtype=object), pa.string())
    text = pc.take(categories, pa.array(codes, mask=codes < 0))
    return pd.Series(pd.array(text, dtype="str"), index=coded.index)


def repeated_student_ids(student_ids: pd.Series, positions: np.ndarray) -> np.ndarray:
    """repeated_values of the Student IDs, from their positions among the stored students
    (two rows of one stored student share a position: a count of integers); only the IDs
    of students not stored yet are hashed."""
    stored = positions >= 0
    counts = np.bincount(positions[stored], minlength=1)
    out = np.zeros(len(positions), dtype=bool)
    out[stored] = counts[positions[stored]] > 1
    out[~stored] = repeated_values(student_ids[~stored])
    return out


def lower_usernames(usernames: pd.Series) -> pa.Array:
    """The usernames lower-cased: they are unique and compared case-insensitively."""
    return pc.utf8_lower(_arrow(usernames))


def own_usernames(
    username_lower: pa.Array, students: pd.DataFrame, positions: np.ndarray
) -> np.ndarray:
    """Whether each row's username (lower-cased) is already its stored student's (at
    `positions`; -1: none). Usernames are unique across MY Access: no one else holds such a
    username, and on a nightly file that is nearly every row."""
    if len(students) == 0:
        return np.zeros(len(positions), dtype=bool)
    stored = pc.take(_arrow(students["username_lower"]), pa.array(positions, mask=positions < 0))
    return pc.fill_null(pc.equal(stored, username_lower), False).to_numpy(zero_copy_only=False)


def repeated_usernames(
    username_lower: pa.Array, own: np.ndarray, students: pd.DataFrame, positions: np.ndarray
) -> np.ndarray:
    """repeated_values of the lower-cased usernames, mostly by integers: an `own` row's
    username is keyed by its stored student's position (`positions`); the other rows'
    distinct usernames by the position of the stored student who holds one (stored
    usernames are unique), else by a number of their own. Two rows share a key exactly
    when they share a username. Only the other rows' usernames are hashed (on a nightly
    file, the new and renamed students'), and the stored ones are probed against them."""
    n_stored = len(students)
    keys = np.where(own, positions, -1).astype("int64")
    other = np.flatnonzero(~own)
    if len(other):
        encoded = pc.dictionary_encode(pc.take(username_lower, pa.array(other)))
        codes = pc.fill_null(encoded.indices, -1).to_numpy().astype("int64")  # -1: none
        distinct = encoded.dictionary
        key_of = n_stored + np.arange(len(distinct), dtype="int64")  # held by no student
        if n_stored:
            # the stored usernames probed against the few distinct ones (a small hash table)
            at = _positions(_arrow(students["username_lower"]), distinct)
            holder = np.flatnonzero(at >= 0)
            key_of[at[holder]] = holder
        named = codes >= 0  # an empty username keeps -1 (none); it may be every row's
        keys[other[named]] = key_of[codes[named]]
    present = keys >= 0
    counts = np.bincount(keys[present], minlength=1)
    out = np.zeros(len(keys), dtype=bool)
    out[present] = counts[keys[present]] > 1
    return out


@dataclass(frozen=True)
class RowMatch:
    """The rows of an upload matched to the district's stored students: computed once per
    upload (match_rows) and passed down to each step that needs it (the hashing's
    selection, the username locks, the plan). One entry per row, in the rows' order.

    positions:          the row's stored student: its position in `students`, -1: none
    username_lower:     the row's username lower-cased (lower_usernames)
    own_usernames:      whether that username is already its stored student's
    repeated_ids:       whether its Student ID is on another row of the file too
    repeated_usernames: whether its username (letter case aside) is on another row too
    """

    positions: np.ndarray
    username_lower: pa.Array
    own_usernames: np.ndarray
    repeated_ids: np.ndarray
    repeated_usernames: np.ndarray

    def select(self, keep: np.ndarray) -> RowMatch:
        """The match of the rows under `keep` (a mask over the rows)."""
        return RowMatch(
            positions=self.positions[keep],
            username_lower=self.username_lower.filter(pa.array(keep)),
            own_usernames=self.own_usernames[keep],
            repeated_ids=self.repeated_ids[keep],
            repeated_usernames=self.repeated_usernames[keep],
        )


def match_rows(rows: pd.DataFrame, students: pd.DataFrame) -> RowMatch:
    """Each of `rows` (student_id, username) matched to `students` (student_id,
    username_lower: load_district_students): Arrow hash lookups and integer counts."""
    username_lower = lower_usernames(rows["username"])
    positions = student_positions(rows["student_id"], students)
    own = own_usernames(username_lower, students, positions)
    return RowMatch(
        positions=positions,
        username_lower=username_lower,
        own_usernames=own,
        repeated_ids=repeated_student_ids(rows["student_id"], positions),
        repeated_usernames=repeated_usernames(username_lower, own, students, positions),
    )


def repeated_values(values: pd.Series) -> np.ndarray:
    """True where a (non-null) value appears on more than one row."""
    encoded = pc.dictionary_encode(_arrow(values))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    present = ~np.asarray(encoded.indices.is_null(), dtype=bool)
    codes = np.where(present, codes, 0).astype("int64")
    counts = np.bincount(codes[present], minlength=max(1, len(encoded.dictionary)))
    return present & (counts[codes] > 1)


def _passes_column_rules(df: pd.DataFrame, row_errors: pd.DataFrame, column: str) -> pd.Series:
    """The value is present and `row_errors` (the column rules) found nothing wrong with it."""
    broken = row_errors.loc[row_errors["column"] == DISPLAY_NAME[column], "row"]
    return df[column].notna() & ~_in_rows(df, broken.to_numpy())


def _flag(
    df: pd.DataFrame,
    mask: pd.Series,
    code: ErrorCode,
    column: str | None,
    text: str,
    value_column: str | None,
) -> pd.DataFrame:
    """An error for every row under `mask`; `{v}` in `text` is that row's value_column."""
    hit = np.flatnonzero(mask.fillna(False).to_numpy(dtype=bool))
    if value_column is None:
        messages = np.full(len(hit), text, dtype=object)
    else:
        head, _, tail = text.partition("{v}")
        values = df[value_column].iloc[hit].fillna("").astype("str")
        messages = (head + visible_each(values, _QUOTE_LIMIT) + tail).to_numpy()
    return error_frame(
        df.index.to_numpy()[hit],
        df["line"].to_numpy()[hit],
        visible_each(df["student_id"].iloc[hit].fillna(""), _QUOTE_LIMIT).to_numpy(),
        DISPLAY_NAME[column] if column else "",
        code.value,
        messages,
    )


def _attach_school(
    df: pd.DataFrame, schools: pd.DataFrame, deactivating: pd.Series
) -> pd.DataFrame:
    """The row's school: an active school of the district, never the bin; a closed school
    only for a D row (its students must still be deactivated and their licenses returned)."""
    schools = schools[~schools["holding_bin"]]
    codes = _arrow(df["school_code"])

    def lookup(rows: pd.DataFrame) -> np.ndarray:  # the school_id, -1: none
        at = _positions(codes, _arrow(rows["code"]))
        ids = np.append(rows["school_id"].to_numpy(dtype="int64"), -1)
        return ids[at]  # at == -1 takes the appended -1

    open_school = lookup(schools[schools["active"]])
    closed_school = lookup(schools[~schools["active"]])
    closed_ok = deactivating.to_numpy()
    school = np.where((open_school >= 0) | ~closed_ok, open_school, closed_school)
    df["school_id"] = pd.arrays.IntegerArray(np.maximum(school, 0), school < 0)
    return df


def _attach_student(df: pd.DataFrame, snapshot: DistrictSnapshot, pos: np.ndarray) -> pd.DataFrame:
    """Each row's stored student (`pos`: its position in the snapshot, -1: absent)."""
    students = snapshot.students
    known = pos >= 0
    at = np.where(known, pos, 0)

    def found(column: str) -> pd.arrays.IntegerArray:
        stored = students[column]
        if len(stored) == 0:
            return pd.arrays.IntegerArray(np.zeros(len(pos), "int64"), np.ones(len(pos), bool))
        values = stored.to_numpy(dtype="int64", na_value=0)[at]
        return pd.arrays.IntegerArray(values, ~known | stored.isna().to_numpy()[at])

    df["student_pk"] = found("student_pk")
    df["order_before"] = found("order_id")
    df["school_before"] = found("school_id")
    df["data_hash_before"] = found("data_hash")
    df["password_fp_before"] = found("password_fingerprint")
    active = (students["status"] == ACTIVE).to_numpy(dtype=bool)
    before = np.where(known, np.where(active[at] if len(active) else False, 1, 2), 0)
    df["status_before"] = pd.Categorical.from_codes(before, categories=_BEFORE)
    on_enterprise = df["order_before"].to_numpy(dtype="int64", na_value=-1) == (
        snapshot.enterprise_order_id
    )
    kind = np.where(known, np.where(on_enterprise, 1, 2), 0)
    df["order_kind"] = pd.Categorical.from_codes(kind, categories=_ORDER_KINDS)
    return df


def _attach_transition(df: pd.DataFrame, decidable: pd.Series) -> pd.DataFrame:
    """The row of TRANSITIONS for (status before, order kind, flag); none without a valid
    key or status (case 0)."""
    flag = _positions(_arrow(df["status"]), pa.array(_FLAGS))
    flag = np.where(decidable.to_numpy(dtype=bool), flag, -1)
    before = df["status_before"].cat.codes.to_numpy()
    kind = df["order_kind"].cat.codes.to_numpy()
    at = np.where(flag >= 0, _TRANSITION_AT[before, kind, np.maximum(flag, 0)], -1)
    has = at >= 0
    t = np.maximum(at, 0)

    def coded(column: str) -> pd.Categorical:
        categories = TRANSITIONS[column].dropna().unique()
        codes = pd.Categorical(TRANSITIONS[column], categories=categories).codes
        return pd.Categorical.from_codes(np.where(has, codes[t], -1), categories=categories)

    df["case"] = np.where(has, TRANSITIONS["case"].to_numpy()[t], 0)
    df["transition_error"] = coded("error")
    df["status_after"] = coded("after")
    df["order_after_kind"] = coded("order_after")
    df["ent_delta"] = np.where(has, TRANSITIONS["ent"].to_numpy()[t], 0)
    df["prev_delta"] = np.where(has, TRANSITIONS["prev"].to_numpy()[t], 0)
    return df


def _username_taken(df: pd.DataFrame, snapshot: DistrictSnapshot) -> pd.Series:
    holders = snapshot.taken_usernames
    if callable(holders):
        holders = holders()
    if holders.empty:
        return pd.Series(False, index=df.index)
    holders = holders.drop_duplicates("username_lower")
    own = (holders["district_id"] == snapshot.district_id).to_numpy(dtype=bool)
    at = _positions(_arrow(df["username_lower"]), _arrow(holders["username_lower"]))
    held = at >= 0
    owner = pa.array(np.where(own, holders["student_id"].to_numpy(dtype=object), None), pa.string())
    found_owner = pc.take(owner, pa.array(np.where(held, at, 0)))
    held_by_self = pc.fill_null(pc.equal(found_owner, _arrow(df["student_id"])), False)
    return pd.Series(held & ~held_by_self.to_numpy(zero_copy_only=False), index=df.index)


def _licenses(df: pd.DataFrame, ok: pd.Series, bin_available: int) -> pd.DataFrame:
    """Returns first, then acquisitions in file order while the bin lasts."""
    returns = int((ok & (df["ent_delta"] < 0)).sum())
    available = bin_available + returns
    acquires = (ok & (df["ent_delta"] > 0)).to_numpy()
    rank = np.cumsum(acquires)  # df is in file order
    df["license_granted"] = ~acquires | (rank <= available)
    return df


def _changes(
    df: pd.DataFrame,
    applied: pd.Series,
    enterprise_order_id: int,
    password_fps: np.ndarray,
    data_hashes: np.ndarray,
) -> pd.DataFrame:
    df["data_hash"] = data_hashes
    df["password_fp"] = pd.Series(password_fps, index=df.index, dtype="Int64").where(
        df["password"].notna(), pd.NA
    )
    df["order_after"] = df["order_before"].where(
        df["order_after_kind"] != ENTERPRISE, enterprise_order_id
    )
    exists = df["student_pk"].notna()
    df["data_changed"] = ~exists | (df["data_hash"] != df["data_hash_before"]).fillna(True)
    df["password_changed"] = df["password"].notna() & (
        df["password_fp"] != df["password_fp_before"]
    ).fillna(True)
    order_changed = exists & (df["order_after"] != df["order_before"]).fillna(True)
    before, after = df["status_before"], df["status_after"]
    outcome = np.select(
        [
            (before == ABSENT).to_numpy(),
            ((before == DEACTIVATED) & (after == ACTIVE)).to_numpy(),
            ((before == ACTIVE) & (after == DEACTIVATED)).to_numpy(),
            (df["data_changed"] | df["password_changed"] | order_changed).to_numpy(dtype=bool),
        ],
        [OUTCOMES.index(c) for c in CHANGES],
        default=OUTCOMES.index("unchanged"),
    )
    outcome = np.where(applied.to_numpy(dtype=bool), outcome, OUTCOMES.index("errors"))
    df["outcome"] = pd.Categorical.from_codes(outcome, categories=OUTCOMES)
    df["applied"] = applied
    return df


# what a change carries to the apply (db.apply) and the hashing (services.process)
CHANGE_COLUMNS = (
    *(c for c in COLUMNS if c != "status"),
    "line",
    "student_pk",
    "school_id",
    "school_before",
    "status_before",
    "status_after",
    "order_before",
    "order_after",
    "data_hash",
    "data_changed",
    "password_fp",
    "password_changed",
    "outcome",
)


def _finish(df: pd.DataFrame, errors: pd.DataFrame, total_rows: int, quiet: int) -> Plan:
    # only the columns the apply needs: not a copy of every column of df
    changes = df.loc[df["outcome"].isin(CHANGES).to_numpy(), list(CHANGE_COLUMNS)]
    # the decision columns are categorical over all rows (cheap to build); the changes
    # leave the plan as plain text
    for c in changes.columns:
        if isinstance(changes[c].dtype, pd.CategoricalDtype):
            changes[c] = _as_text(changes[c])
    # only the four columns the license deltas need: not a copy of every column of df
    applied = df.loc[
        df["applied"] & (df["outcome"] != "errors"),
        ["order_after", "ent_delta", "order_before", "prev_delta"],
    ]
    enterprise = applied.loc[applied["ent_delta"] != 0, ["order_after", "ent_delta"]]
    previous = applied.loc[applied["prev_delta"] != 0, ["order_before", "prev_delta"]]
    deltas = pd.concat(
        [
            enterprise.set_axis(["order_id", "delta"], axis=1),
            previous.set_axis(["order_id", "delta"], axis=1),
        ],
        ignore_index=True,
    )
    deltas = deltas.groupby("order_id", as_index=False)["delta"].sum()
    deltas = deltas[deltas["delta"] != 0].astype("int64").reset_index(drop=True)

    tally = df["outcome"].value_counts()
    counts = {name: int(tally.get(name, 0)) for name in OUTCOMES}
    counts["unchanged"] += quiet  # the quiet rows, not in df
    # malformed rows (wrong field count) are not in df: they are errors too
    counts["errors"] = total_rows - sum(v for k, v in counts.items() if k != "errors")
    counts = {"rows": total_rows, **counts}
    error_codes = {str(k): int(v) for k, v in errors["code"].value_counts(sort=False).items()}
    return Plan(
        rows=df,
        changes=changes,
        errors=errors,
        license_deltas=deltas,
        counts=counts,
        error_codes=dict(sorted(error_codes.items())),
    )
