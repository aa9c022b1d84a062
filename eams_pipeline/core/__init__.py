"""The pure domain: bytes and tables in, decisions out.

No I/O, no database, no Dagster, no environment reads: settings are passed in.
"""
