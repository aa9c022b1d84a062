"""A run pod's memory: the peak RSS of a Dagster run worker applying a 1M-row upload.

    .venv/bin/python -m bench.pod [--shape onboarding-1m] [--database-url URL]

The engine benchmark (bench/run.py) measures `process_upload` alone; a run pod also holds
Dagster, its storage and the steps around the engine. This starts one process that does
what a run worker does (its startup hook included): loads the code location as a run worker
(no district sensors), creates a Dagster instance, and materializes `upload_file` (the
upload is already in the encrypted archive: a re-run's path, which decrypts it; the first
attempt reads it by SFTP and encrypts it, a smaller peak) and `upload_outcome` (decrypt,
then the engine) for one upload of the benchmark's district, on a database re-created from
the benchmark's template. Argon2id runs with the cheapest parameters ("without hashing"),
as in the engine benchmark. It prints the peak RSS (VmHWM) of that process and its RSS
once the code was loaded; the last line is JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys, time
sys.argv.append("execute_run")  # a run worker: the code location builds no sensors

def rss(field):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) / 1024 for l in fh if l.startswith(field))

import dagster as dg
import eams_pipeline.definitions
from eams_pipeline.orchestration.assets import upload_file, upload_outcome
from eams_pipeline.orchestration.partitions import DISTRICTS, upload_run_config, upload_tags
from eams_pipeline.core.names import UploadRef
from eams_pipeline.orchestration.resources import default_resources

loaded = rss("VmRSS:")
key, district = sys.argv[1], sys.argv[2]
with dg.instance_for_test() as instance:
    instance.add_dynamic_partitions(DISTRICTS.name, [district])
    t = time.monotonic()
    result = dg.materialize(
        [upload_file, upload_outcome],
        partition_key=district,
        resources=default_resources(),
        instance=instance,
        tags=upload_tags(UploadRef.parse(key)),
        run_config=upload_run_config(key),
    )
    meta = {}
    for e in result.get_asset_materialization_events():
        meta[e.step_key] = {k: v.value for k, v in e.materialization.metadata.items()
                            if k in ("rows", "added", "errors", "bytes", "status")}
print(json.dumps({"success": result.success, "seconds": round(time.monotonic() - t, 1),
                  "rss_after_code_load_mib": round(loaded, 1),
                  "peak_rss_mib": round(rss("VmHWM:"), 1), "metadata": meta}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pod", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="onboarding-1m")
    p.add_argument("--database", default="empty", choices=["empty", "aged", "fresh"])
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/eams_bench")
    args = p.parse_args(argv)

    from bench import generate
    from bench.run import _dbname, _recreate, prepare
    from eams_pipeline.core.names import make_upload_key
    from eams_pipeline.io.archive import Archive, generate_key

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    files = prepare(args.database_url, args.shape, generate.Variant(), args.database, log)
    _recreate(args.database_url, _dbname(args.database_url), files.template)
    state = Path(tempfile.mkdtemp(prefix="eams_pod_"))
    key_text = generate_key()
    received = dt.datetime.now(dt.UTC)
    upload_key = make_upload_key(generate.DISTRICT, received)
    Archive(state / "archive", key_text).store(
        generate.DISTRICT, upload_key, Path(files.file).read_bytes()
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EAMS_", "DAGSTER_"))},
        "PYTHONPATH": str(ROOT),
        "EAMS_DATABASE_URL": args.database_url,
        "EAMS_SECRET_KEY": generate.SECRET.decode(),
        "EAMS_ARCHIVE_KEY": key_text,
        "EAMS_ARCHIVE_DIR": str(state / "archive"),
        "EAMS_ARGON2_TIME_COST": "1",
        "EAMS_ARGON2_MEMORY_KIB": "8",
        "DAGSTER_HOME": str(state),
    }
    # `api execute_run` in the command line: the startup hook treats it as a run worker
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, upload_key, generate.DISTRICT, "api", "execute_run"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the run worker failed:\n{proc.stderr[-5000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out |= {"shape": args.shape, "file_bytes": Path(files.file).stat().st_size}
    log(
        f"{args.shape}: run worker peak RSS {out['peak_rss_mib']:.0f} MiB (after loading the "
        f"code {out['rss_after_code_load_mib']:.0f} MiB), {out['seconds']} s, "
        f"success {out['success']}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
