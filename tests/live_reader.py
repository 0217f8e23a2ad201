"""A separate process that polls SmartLab's results in Tiled while a scan runs.

Usage: python live_reader.py URI KEY UID_FILE REPORT_FILE DURATION
Waits for the run uid to appear in UID_FILE, then reads the peak_stats results
of that run every 20 ms with nothing but tiled.client, recording each read's
time and row count, and every exception; writes a JSON report at the end.
"""

import json
import sys
import time
from pathlib import Path

from tiled.client import from_uri
from tiled.queries import Key

uri, key, uid_file, report_file, duration = sys.argv[1:6]
client = from_uri(uri, api_key=key)
Path(uid_file).with_name("ready").touch()
deadline = time.time() + float(duration)
while not Path(uid_file).exists() and time.time() < deadline:
    time.sleep(0.01)
uid = Path(uid_file).read_text().strip()
reads, errors = [], []
while time.time() < deadline:
    try:
        if "smartlab" not in client:  # no analysis published on this server yet
            time.sleep(0.02)
            continue
        found = (
            client["smartlab"].search(Key("run_uid") == uid).search(Key("plugin") == "peak_stats")
        )
        rows, seq = 0, []
        for analysis in found.values():
            stream = analysis.get("primary")
            if stream is not None and "events" in stream:
                table = stream["events"].read()  # an appendable table, read while it grows
                rows, seq = len(table), table["seq_num"].tolist()
            status = analysis.metadata["status"]
            reads.append({"time": time.time(), "rows": rows, "seq": seq, "status": status})
            if status != "running":
                deadline = 0
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.02)
Path(report_file).write_text(json.dumps({"reads": reads, "errors": errors}))
