"""The tutorials, typed as written: their ``python`` blocks run in order against a real server.

Each tutorial's Markdown is parsed here, so an edited tutorial is tested as it
reads. A block that cannot run unattended (a GUI, a loop until Ctrl-C) carries
``<!-- skip-test: why -->`` on the line before its fence, and is reported as a
skipped test with that reason. Shell (``bash``) blocks are never run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
SKIP_MARKER = re.compile(r"^<!--\s*skip-test:\s*(?P<reason>\S.*?)\s*-->$")
DONE = "### tutorial done"


@dataclass(frozen=True)
class Block:
    """One fenced ``python`` block of a tutorial, and why it is skipped (None: it runs)."""

    tutorial: str
    line: int
    code: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.tutorial}:{self.line}"


def python_blocks(name: str) -> list[Block]:
    """The ``python`` blocks of ``docs/tutorials/<name>``, in order, with their skip reasons."""
    lines = (TUTORIALS / name).read_text().splitlines()
    blocks, previous, index = [], "", 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("```") and line != "```":
            end = lines.index("```", index + 1)  # a fence left open is a broken tutorial
            if line == "```python":
                marker = SKIP_MARKER.match(previous)
                code = "\n".join(lines[index + 1 : end])
                blocks.append(Block(name, index + 1, code, marker["reason"] if marker else None))
            index, previous = end + 1, ""
            continue
        if line:
            if previous.startswith("<!-- skip-test") and not line.startswith("```"):
                raise AssertionError(f"{name}:{index}: a skip-test marker not before a ```python")
            previous = line
        index += 1
    return blocks


def script(blocks: list[Block]) -> str:
    """The blocks that run, concatenated, each announced so a failure names its block."""
    parts = [f"print('### {block.where}', flush=True)\n{block.code}" for block in blocks]
    return "\n".join([*parts, f"print({DONE!r})"])


def run(command: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and DONE in result.stdout, output
    assert "Traceback" not in output, output
    return result.stdout


def runnable(name: str) -> list[Block]:
    blocks = [block for block in python_blocks(name) if block.skip is None]
    assert blocks, f"{name}: no python block to run"
    return blocks


SKIPPED = [
    block
    for name in ("first-live-analysis.md", "query-results.md")
    for block in python_blocks(name)
    if block.skip is not None
]


@pytest.fixture
def session_env(tiled_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The tutorial reader's environment: the server, and a data folder of their own."""
    return {
        **tiled_env,
        "SMARTLAB_DATA_DIR": str(tmp_path / "data"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "MPLBACKEND": "Agg",
    }


def test_first_live_analysis_in_the_profile(session_env, tmp_path):
    """Step 3 on: in ``smartlab ipython``, as the tutorial says, one block after the other."""
    code = script(runnable("first-live-analysis.md"))
    command = [sys.executable, "-m", "smartlab_plugins.cli", "ipython"]
    command += ["--ipython-dir", str(tmp_path / "ipython"), "--", "-c", code]
    output = run(command, session_env, timeout=240)
    assert "Transient Scan ID: 1" in output  # the profile's BestEffortCallback saw the scan


def test_query_results_in_plain_python(session_env):
    """The measurement, then the query with only ``tiled.client``, in a plain Python."""
    output = run([sys.executable, "-c", script(runnable("query-results.md"))], session_env, 180)
    assert re.search(r"^complete [0-9a-f]{64}$", output, re.MULTILINE), output
    header = next(line for line in output.splitlines() if "j1_std" in line)
    assert header.split() == ["seq_num", "j1", "j1_std", "j2", "j2_std", "d", "d_std"]


@pytest.mark.parametrize("block", SKIPPED, ids=[block.where for block in SKIPPED])
def test_blocks_marked_to_skip(block: Block) -> None:
    pytest.skip(f"{block.where}: {block.skip}")


def test_the_parser_finds_every_block_and_its_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "TUTORIALS", tmp_path)
    (tmp_path / "t.md").write_text(
        "# T\n\n```bash\nexport A=1\n```\n\n```python\na = 1\n```\n\n"
        "<!-- skip-test: needs a GUI -->\n```python\n%matplotlib qt\n```\n"
    )
    blocks = python_blocks("t.md")
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (7, "a = 1", None),
        (12, "%matplotlib qt", "needs a GUI"),
    ]
