"""The benchmark of the nightly upload: `python -m bench --help`."""
