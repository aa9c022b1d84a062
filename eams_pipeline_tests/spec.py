"""The contract's files (SPEC.md, students-template.csv, transitions.csv,
setup-example.yaml), for the tests that check the code against them.

They live outside the repository: in ``$EAMS_SPEC_DIR`` when set, else in
``<checkout>/../shared/spec``. A checkout cloned anywhere else still passes its own tests:
the checks against the contract are skipped with the reason, and everything else runs on
the project's own copies (the matrix in `core/transitions.py`, `examples/`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC_DIR = Path(os.environ.get("EAMS_SPEC_DIR") or REPO.parent / "shared" / "spec")
EXAMPLES = REPO / "examples"


def spec_file(name: str) -> Path | None:
    """The contract file ``name``, or None when the contract is not beside this checkout."""
    path = SPEC_DIR / name
    return path if path.is_file() else None


def require_spec_file(name: str) -> Path:
    """The contract file ``name``; skips the calling test with the reason when absent."""
    path = spec_file(name)
    if path is None:
        pytest.skip(
            f"the contract file {name} is not in {SPEC_DIR} (set EAMS_SPEC_DIR to the "
            "contract's folder to run the checks against it)"
        )
    return path
