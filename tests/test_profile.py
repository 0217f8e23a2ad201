"""The IPython profile: a scan run through it non-interactively lands in Tiled."""

from __future__ import annotations

import os
import subprocess
import sys

from tiled_keys import API_KEY

SESSION = """
(uid,) = RE(bp.scan([beam], steer, -1, 1, 5))
sl.flush()
(analysis,) = find_analyses(c, run_uid=uid, plugin="peak_stats")
print("RESULT", len(read_events(analysis)), analysis.metadata["status"], type(c[uid]).__name__)
get_ipython().run_line_magic("smartlab", "disable peak_stats")
get_ipython().run_line_magic("smartlab", "plugins")
get_ipython().run_line_magic("smartlab", "latest peak_stats")
get_ipython().run_line_magic("smartlab", "status")
"""


def test_a_scan_through_the_profile_is_analysed_and_published(tiled_server, tmp_path):
    env = {
        **os.environ,
        "SMARTLAB_TILED_URI": tiled_server.uri,
        "SMARTLAB_API_KEY": API_KEY,
        "IPYTHONDIR": str(tmp_path),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartlab_plugins.cli",
            "ipython",
            "--ipython-dir",
            str(tmp_path),
            "--",
            "-c",
            SESSION,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "RESULT 5 complete BlueskyRun" in result.stdout
    assert "peak_stats no longer runs from the next run on" in result.stdout
    assert any(line.split()[:2] == ["peak_stats", "off"] for line in result.stdout.splitlines())
    assert "peak_stats on run" in result.stdout and ": complete, 5 events" in result.stdout
    assert "worker running" in result.stdout and "dropped 0" in result.stdout
    assert (tmp_path / "profile_smartlab" / "startup" / "00-smartlab.py").exists()
