"""The IPython profile: a scan run through it non-interactively lands in Tiled."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import API_KEY

SESSION = """
(uid,) = RE(bp.scan([beam], steer, -1, 1, 5))
sl.flush()
(analysis,) = find_analyses(c, run_uid=uid, plugin="peak_stats")
print("RESULT", len(read_events(analysis)), analysis.metadata["status"], type(c[uid]).__name__)
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
    assert (tmp_path / "profile_smartlab" / "startup" / "00-smartlab.py").exists()
