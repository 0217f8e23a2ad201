"""The IPython profile, met as a user meets it: ``smartlab ipython`` run twice in a row.

The first session scans through SmartLab and bluesky's BestEffortCallback, uses the
magics and reads the analysis back from Tiled; the second starts where the first
left off, because ``RE.md`` (and so ``scan_id``) is kept in the data folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from tiled_keys import API_KEY
from traitlets.config import Config

from smartlab_plugins.magics import SmartLabMagics, register

FIRST_SESSION = """
(uid,) = RE(bp.scan([beam], steer, -1, 1, 5))
sl.flush()
(analysis,) = find_analyses(c, run_uid=uid, plugin="peak_stats")
print("RESULT", len(read_events(analysis)), analysis.metadata["status"], type(c[uid]).__name__)
print("LAST SCAN_ID", c[uid].metadata["start"]["scan_id"])
%wa motors
%mov steer 0.5
print("STEER AT", steer.position)
%smartlab disable peak_stats
%smartlab plugins
%smartlab latest peak_stats
%smartlab status
"""

SECOND_SESSION = """
(uid,) = RE(bp.count([det]))
sl.flush()
print("FIRST SCAN_ID", c[uid].metadata["start"]["scan_id"])
"""


def smartlab_ipython(code: str, env: dict[str, str], ipython_dir: Path) -> str:
    """Run ``smartlab ipython -- -c CODE`` as a user would; return its output."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartlab_plugins.cli",
            "ipython",
            "--ipython-dir",
            str(ipython_dir),
            "--",
            "-c",
            code,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stdout


def test_two_sessions_scan_analyse_and_carry_the_scan_id_on(tiled_server, tmp_path):
    env = {
        **os.environ,
        "SMARTLAB_TILED_URI": tiled_server.uri,
        "SMARTLAB_API_KEY": API_KEY,
        "SMARTLAB_DATA_DIR": str(tmp_path / "data"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "MPLBACKEND": "Agg",
    }
    ipython_dir = tmp_path / "ipython"

    first = smartlab_ipython(FIRST_SESSION, env, ipython_dir)
    assert "RESULT 5 complete BlueskyRun" in first
    assert "live plots off (no display)" in first
    last_scan_id = int(re.search(r"LAST SCAN_ID (\d+)", first).group(1))
    # BestEffortCallback's table, beside SmartLab: its header and one row per point.
    assert f"Transient Scan ID: {last_scan_id}" in first
    assert re.search(r"\|\s+seq_num\s+\|\s+time\s+\|\s+steer\s+\|", first)
    assert len(re.findall(r"^\|\s+[1-5] \|", first, re.MULTILINE)) == 5
    # %wa lists the labelled motors with their positions; %mov moved one.
    wa = first[first.index("motors\n") :]
    assert re.search(r"^\s+steer\s+1\.0+\s", wa, re.MULTILINE), wa
    assert "STEER AT 0.5" in first
    # %smartlab
    assert "peak_stats no longer runs from the next run on" in first
    assert any(line.split()[:2] == ["peak_stats", "off"] for line in first.splitlines())
    assert "peak_stats on run" in first and ": complete, 5 events" in first
    assert "worker running" in first and "dropped 0" in first
    assert (ipython_dir / "profile_smartlab" / "startup" / "00-smartlab.py").exists()
    assert (tmp_path / "data" / "runengine-metadata").is_dir()

    second = smartlab_ipython(SECOND_SESSION, env, ipython_dir)
    assert f"last scan_id {last_scan_id})" in second
    assert f"FIRST SCAN_ID {last_scan_id + 1}" in second
    assert f"Transient Scan ID: {last_scan_id + 1}" in second


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real IPython shell with ``%smartlab``, no SmartLab behind it: parsing comes first."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    register(shell, smartlab=None, client=None)
    yield shell
    InteractiveShell.clear_instance()


def test_smartlab_magic_shows_its_usage_and_refuses_wrong_arguments(shell, capsys):
    shell.run_cell("%smartlab?")
    shown = capsys.readouterr().out
    assert "%smartlab [COMMAND] [PLUGIN]" in shown
    assert "enable PLUGIN     run a plugin from the next run on" in shown
    shell.run_line_magic("smartlab", "")
    assert capsys.readouterr().out.strip() == SmartLabMagics.smartlab.__doc__.strip()
    refused = {
        "status --frobnicate": "unrecognized arguments: --frobnicate",
        "enable peak_stats extra": "unrecognized arguments: extra",
        "frobnicate": "invalid choice: 'frobnicate'",
        "enable": "%smartlab enable needs PLUGIN",
        "plugins peak_stats": "%smartlab plugins takes no PLUGIN, got 'peak_stats'",
    }
    for line, message in refused.items():
        with pytest.raises(UsageError, match=re.escape(message)):
            shell.run_line_magic("smartlab", line)
