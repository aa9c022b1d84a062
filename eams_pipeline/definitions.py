"""The Dagster code location (pyproject `[tool.dagster]`, workspace.yaml).

One SFTP sensor per district of the database named by EAMS_DATABASE_URL, read when the
code location loads: after adding a district, reload the code location in the UI.
"""

from eams_pipeline import run_worker
from eams_pipeline.orchestration.code_location import build_definitions

defs = build_definitions()
run_worker.resume()  # a run worker's collector, paused since its start (run_worker.py)
