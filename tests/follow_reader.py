"""A separate process that follows SmartLab's results through Tiled's streaming.

Usage: python follow_reader.py URI KEY UID_FILE REPORT_FILE ROWS TIMEOUT
Waits for the run uid in UID_FILE, then ``follow``s its peak_stats analysis
until ROWS rows arrived (or TIMEOUT s), recording each batch's seq_nums and
arrival time; writes a JSON report at the end. Touches ``first_rows`` beside
UID_FILE when the first rows arrive (a scan can wait for it).
"""

import json
import sys
import threading
import time
from pathlib import Path

from tiled.client import from_uri

from smartlab_plugins.results import follow

uri, key, uid_file, report_file, rows_wanted, timeout = sys.argv[1:7]
client = from_uri(uri, api_key=key)
Path(uid_file).with_name("ready").touch()
deadline = time.time() + float(timeout)
while not Path(uid_file).exists() and time.time() < deadline:
    time.sleep(0.01)
uid = Path(uid_file).read_text().strip()
batches: list[dict] = []
enough = threading.Event()


def on_rows(rows):
    batches.append({"seq": rows["seq_num"].tolist(), "time": time.time()})
    Path(uid_file).with_name("first_rows").touch()
    if sum(len(b["seq"]) for b in batches) >= int(rows_wanted):
        enough.set()


with follow(client, uid, "peak_stats", on_rows) as follower:
    enough.wait(max(deadline - time.time(), 0))
    error = repr(follower.error) if follower.error else None
Path(report_file).write_text(json.dumps({"batches": batches, "error": error}))
