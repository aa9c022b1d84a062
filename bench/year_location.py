"""The code location of the year simulation (``bench.year``): the product's definitions for
``EAMS_YEAR_DISTRICTS`` districts F00000, F00001, ... (no MY Access database is read: the
queries timed are Dagster's)."""

import os

from eams_pipeline.orchestration.code_location import build_definitions


def district_code(i: int) -> str:
    return f"F{i:05d}"


defs = build_definitions(
    [district_code(i) for i in range(int(os.environ.get("EAMS_YEAR_DISTRICTS", "2000")))]
)
