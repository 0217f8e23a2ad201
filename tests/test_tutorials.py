"""The tutorials, typed as written: their ``python`` blocks run in order against a real server.

Each tutorial's Markdown is parsed here, so an edited tutorial is tested as it
reads. A block that cannot run unattended (a GUI, a loop until Ctrl-C) carries
``<!-- skip-test: why -->`` on the line before its fence, and is reported as a
skipped test with that reason. Shell (``bash``) blocks are not run, except in
the plugin tutorial, which builds a package: there a block labelled with a file
name (```` `bragg-edge/pyproject.toml`: ```` on the line before its fence) is
written to that file, and the shell blocks install and test the package in a
throwaway environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
SKIP_MARKER = re.compile(r"^<!--\s*skip-test:\s*(?P<reason>\S.*?)\s*-->$")
FILE_LABEL = re.compile(r"^`(?P<path>[^`\s]+)`:$")
DONE = "### tutorial done"


@dataclass(frozen=True)
class Block:
    """One fenced block of a tutorial, and why it is skipped (None: it runs).

    ``file`` is the path the tutorial gives the block's text, from a
    ```` `path`: ```` label on the line before the fence, or None.
    """

    tutorial: str
    line: int
    code: str
    skip: str | None
    language: str = "python"
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.tutorial}:{self.line}"


def fenced_blocks(name: str) -> list[Block]:
    """The fenced blocks of ``docs/tutorials/<name>`` that name a language, in order."""
    lines = (TUTORIALS / name).read_text().splitlines()
    blocks, previous, index = [], "", 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("```") and line != "```":
            end = lines.index("```", index + 1)  # a fence left open is a broken tutorial
            marker, label = SKIP_MARKER.match(previous), FILE_LABEL.match(previous)
            blocks.append(
                Block(
                    tutorial=name,
                    line=index + 1,
                    code="\n".join(lines[index + 1 : end]),
                    skip=marker["reason"] if marker else None,
                    language=line.removeprefix("```"),
                    file=label["path"] if label else None,
                )
            )
            index, previous = end + 1, ""
            continue
        if line:
            if previous.startswith("<!-- skip-test") and not line.startswith("```"):
                raise AssertionError(f"{name}:{index}: a skip-test marker not before a ```python")
            previous = line
        index += 1
    return blocks


def python_blocks(name: str) -> list[Block]:
    """The ``python`` blocks of ``docs/tutorials/<name>``, in order, with their skip reasons."""
    return [block for block in fenced_blocks(name) if block.language == "python"]


def script(blocks: list[Block]) -> str:
    """The blocks that run, concatenated, each announced so a failure names its block."""
    parts = [f"print('### {block.where}', flush=True)\n{block.code}" for block in blocks]
    return "\n".join([*parts, f"print({DONE!r})"])


def run(command: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
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


def readers_environment(folder: Path) -> dict[str, str]:
    """A fresh virtual environment in which SmartLab is installed, as a reader's would be.

    It layers this interpreter's site-packages under its own (``site.addsitedir``
    in a ``.pth`` file, which ``--system-site-packages`` cannot do from inside a
    virtual environment) and binds this environment's commands (``pip``,
    ``smartlab``, ``pytest``) to its own interpreter, so what the tutorial
    installs lands in ``folder``, never in the environment running the tests.
    pip runs offline: the build uses the installed setuptools.
    """
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_path("purelib")
    (Path(site_packages) / "_smartlab.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    ours_bin = Path(sys.executable).parent
    for command in filter(Path.is_file, ours_bin.iterdir()):
        with command.open("rb") as file:
            first = file.readline()
        if first.startswith(b"#!") and Path(first[2:].decode().strip()).parent == ours_bin:
            body = command.read_text().split("\n", 1)[1]
            (folder / "bin" / command.name).write_text(f"#!{python}\n{body}")
            shutil.copymode(command, folder / "bin" / command.name)
    return {
        **os.environ,
        "VIRTUAL_ENV": str(folder),
        "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip reads its "no-" options inverted: 0 is "off"
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "SMARTLAB_DATA_DIR": str(folder.parent / "data"),
        "MPLBACKEND": "Agg",
    }


def test_write_a_plugin_as_a_package(tmp_path):
    """The files as printed, ``pip install -e .``, ``smartlab plugins list``, the package's test."""
    blocks = fenced_blocks("write-a-plugin.md")
    reader = tmp_path / "reader"
    for block in blocks:
        if block.file is not None:
            path = reader / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code + "\n")
    assert [block.file for block in blocks if block.language == "python"] == [
        "bragg-edge/src/bragg_edge/__init__.py",
        "bragg-edge/tests/test_bragg_edge.py",
    ]
    shell = [
        f"echo '### {block.where}'\n{block.code}" for block in blocks if block.language == "bash"
    ]
    env = readers_environment(tmp_path / "venv")
    command = ["bash", "-euo", "pipefail", "-c", "\n".join([*shell, f"echo {DONE!r}"])]
    output = run(command, env, timeout=180, cwd=reader)
    listed = next(line.split() for line in output.splitlines() if line.startswith("bragg_edge "))
    assert listed[:4] == ["bragg_edge", "0.1.0", "bragg-edge", "0.1.0"], output
    assert re.search(r"\b1 passed\b", output), output
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("bragg-edge")  # installed in the throwaway environment only


@pytest.mark.parametrize("block", SKIPPED, ids=[block.where for block in SKIPPED])
def test_blocks_marked_to_skip(block: Block) -> None:
    pytest.skip(f"{block.where}: {block.skip}")


def test_the_parser_finds_every_block_and_its_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "TUTORIALS", tmp_path)
    (tmp_path / "t.md").write_text(
        "# T\n\n```bash\nexport A=1\n```\n\n```python\na = 1\n```\n\n"
        "<!-- skip-test: needs a GUI -->\n```python\n%matplotlib qt\n```\n\n"
        "`pkg/pyproject.toml`:\n\n```toml\n[project]\n```\n"
    )
    blocks = python_blocks("t.md")
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (7, "a = 1", None),
        (12, "%matplotlib qt", "needs a GUI"),
    ]
    assert [(b.line, b.language, b.file) for b in fenced_blocks("t.md")] == [
        (3, "bash", None),
        (7, "python", None),
        (12, "python", None),
        (18, "toml", "pkg/pyproject.toml"),
    ]
