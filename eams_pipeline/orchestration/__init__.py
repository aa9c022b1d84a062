"""The pipeline in Dagster: per-district SFTP sensors, the upload job and its assets.

Orchestration only: the domain logic is `eams_pipeline.services.process` (the same code as
`eams process`), the I/O is `eams_pipeline.io`.
"""
