"""Vectorised 64-bit fingerprints of rows (SipHash-2-4 through pandas' hash_array).

`data_fingerprint` detects unchanged rows without reading the stored columns back.
`password_fingerprint` detects an unchanged password without re-hashing it: it is keyed
with the server secret (EAMS_SECRET_KEY), so a copy of the database alone cannot be used
to test password guesses against it. After the secret is rotated, `recognised_by_previous`
tells the stored fingerprints made with the previous secret (EAMS_SECRET_KEY_PREVIOUS)
from changed passwords.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from eams_pipeline.core.template import DATA_COLUMNS

_SEPARATOR = "\x1f"  # ASCII unit separator
_SEPARATOR_BYTE = 0x1F
_DATA_KEY = "eams-data-v1-key"  # 16 bytes; public on purpose: the data is stored in clear


_CHUNK_ROWS = 65_536  # rows joined and hashed at a time (memory: a chunk's, not the file's)


def _fingerprint(columns: list[pd.Series], key: str) -> np.ndarray:
    """SipHash of each row's values joined by the separator, unambiguously: should a value
    hold the separator itself (it never does in practice), every value of every row is
    escaped first. The joined values are hashed as UTF-8 bytes objects: pandas hashes a str
    by encoding it to UTF-8 first, so the hashes are the same, and bytes are made and
    hashed several times faster (no decoding, no encoding). Chunk by chunk: the joined text
    and its bytes objects (hundreds of MB for 1M rows) never exist for the whole file at
    once, so the same memory serves every chunk instead of new pages for all of them."""
    arrays = [pa.array(c, type=pa.string(), from_pandas=True) for c in columns]
    escape = any(_holds_separator(a) for a in arrays)
    n = len(columns[0])
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, _CHUNK_ROWS):
        part = [a.slice(start, _CHUNK_ROWS) for a in arrays]
        if escape:
            part = [
                pc.replace_substring(pc.replace_substring(a, "\\", "\\\\"), _SEPARATOR, "\\u")
                for a in part
            ]
        joined = _join_arrays(part).cast(pa.binary())
        values = np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)
        out[start : start + len(values)] = _siphash(values, key)
    return out


def _holds_separator(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether a value holds the separator byte: a scan of the values' data buffers (a
    sliced chunk's buffer may hold bytes of other values too: that only escapes for nothing)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        data = chunk.buffers()[2]
        if data is not None and np.any(np.frombuffer(data, dtype=np.uint8) == _SEPARATOR_BYTE):
            return True
    return False


def _join_arrays(arrays: list[pa.Array]) -> pa.Array:
    return pc.binary_join_element_wise(
        *arrays, _SEPARATOR, null_handling="replace", null_replacement=""
    )


def _siphash(values: np.ndarray, key: str) -> np.ndarray:
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    hashed = pd.util.hash_array(values, hash_key=key, categorize=False)
    return hashed.view(np.int64)


def data_fingerprint(frame: pd.DataFrame) -> np.ndarray:
    """One int64 per row over the data columns (normalised values; absent = empty)."""
    return _fingerprint([frame[c] for c in DATA_COLUMNS], _DATA_KEY)


def fingerprint_key(secret: bytes) -> str:
    """A 16-character SipHash key (96 bits) derived from the server secret."""
    digest = hashlib.sha256(b"eams-password-fingerprint\x00" + secret).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def password_fingerprint(student_ids: pd.Series, passwords: pd.Series, key: str) -> np.ndarray:
    """One int64 per row over (Student ID, password), keyed by the server secret."""
    return _fingerprint([student_ids, passwords], key)


def recognised_by_previous(
    student_ids: pd.Series,
    passwords: pd.Series,
    fingerprints: np.ndarray,
    stored: np.ndarray,
    has_stored: np.ndarray,
    previous_keys: Sequence[str],
) -> np.ndarray:
    """Which rows carry the password their student has stored, fingerprinted with a
    previous key (the server secret before a rotation): `fingerprints` are the rows'
    password fingerprints with the current key, `stored`/`has_stored` their stored
    student's fingerprint (and whether there is one). Only the rows with a password whose
    current fingerprint differs from a stored one are fingerprinted again, with each
    previous key in turn; with no previous key nothing is computed."""
    out = np.zeros(len(fingerprints), dtype=bool)
    if not previous_keys or len(fingerprints) == 0:
        return out
    at = np.flatnonzero(
        has_stored & (stored != fingerprints) & passwords.notna().to_numpy(dtype=bool)
    )
    for key in previous_keys:
        if len(at) == 0:
            break
        old = password_fingerprint(student_ids.iloc[at], passwords.iloc[at], key)
        hit = old == stored[at]
        out[at[hit]] = True
        at = at[~hit]
    return out
