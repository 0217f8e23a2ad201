"""The `smartlab` command as a user runs it: a real subprocess (only the subcommands' help
is read in-process, each start costing seconds)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiled.client import from_uri
from tiled.queries import Key
from tiled_keys import API_KEY

from smartlab_plugins.cli import USER_ERRORS, build_parser, main, use_api_key

#: What a command needs and ``smartlab --help`` does not: each takes from a tenth of a second
#: (pandas) to seconds (torch, bluesky-tiled-plugins) to import.
HEAVY = {
    "bluesky",
    "bluesky_tiled_plugins",
    "distributed",
    "ophyd",
    "ophyd_async",
    "pandas",
    "redis",
    "tiled",
    "torch",
}

#: The commands that talk to a Tiled server, each taking its API key as --api-key.
TILED_COMMANDS = [
    ["serve"],
    ["demo"],
    ["demo", "adaptive"],
    ["status"],
    ["replay", "some-uid"],
    ["worker"],
]


def smartlab(
    *args: str, env: dict | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smartlab_plugins.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_help_lists_every_command(capsys):
    result = smartlab("--help")  # the installed entry point, once
    assert result.returncode == 0
    for command in ("serve", "demo", "plugins", "replay", "ipython", "worker"):
        assert command in result.stdout
    for command in (
        "serve",
        "demo",
        "replay",
        "ipython",
        "worker",
    ):  # in-process: no 5 s start each
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert f"usage: smartlab {command}" in capsys.readouterr().out


def test_building_the_parser_imports_none_of_the_commands_heavy_dependencies():
    # what is imported, not a wall time, which a busy machine would make flaky: the parser
    # answers `smartlab --help` and every usage error, and took 2 s when it imported the worker
    script = (
        "import sys; from smartlab_plugins.cli import build_parser; build_parser(); "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert HEAVY.isdisjoint(result.stdout.split()), result.stdout


def test_the_transport_package_names_its_classes_without_importing_them_first():
    script = (
        "import sys; import smartlab_plugins.transport as t; "
        "assert 'smartlab_plugins.transport.consumer' not in sys.modules; "
        "from smartlab_plugins.transport import BrokerWorker, BrokerPublisher, BrokerSettings; "
        "print(BrokerWorker.__module__, BrokerPublisher.__module__, BrokerSettings.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "smartlab_plugins.transport.consumer",
        "smartlab_plugins.transport.publisher",
        "smartlab_plugins.transport.settings",
    ]


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"smartlab {importlib.metadata.version('smartlab')}\n"


@pytest.mark.parametrize(("argv", "usage"), [([], "smartlab"), (["plugins"], "smartlab plugins")])
def test_no_command_prints_the_help_and_exits_with_status_2(argv, usage, capsys):
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {usage} ") and "COMMAND" in out


def test_the_model_folder_is_out_where_written_and_model_dir_where_read():
    parser = build_parser()
    for argv in (["train", "phase_cnn"], ["finetune", "phase_cnn", "x.h5"]):
        assert parser.parse_args([*argv, "--out", "tuned"]).out == Path("tuned")
    for option in ("--model-dir", "--dir"):  # --dir: the old spelling, hidden, still works
        args = parser.parse_args(["evaluate", "phase_cnn", option, "tuned"])
        assert args.model_dir == Path("tuned")
    evaluate_help = (
        next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        .choices["evaluate"]
        .format_help()
    )
    assert "--model-dir" in evaluate_help and "--dir" not in evaluate_help


@pytest.mark.parametrize("argv", TILED_COMMANDS, ids=" ".join)
def test_api_key_means_what_smartlab_api_key_means(argv, monkeypatch):
    monkeypatch.setenv("SMARTLAB_API_KEY", "fromtheenvironment")  # restored afterwards
    use_api_key(build_parser().parse_args(argv))  # without the option, the environment's key
    assert os.environ["SMARTLAB_API_KEY"] == "fromtheenvironment"
    use_api_key(build_parser().parse_args([*argv, "--api-key", "fromtheoption"]))
    assert os.environ["SMARTLAB_API_KEY"] == "fromtheoption"  # for every part, and children


def test_plugins_list_shows_name_version_source_and_accepted_data():
    result = smartlab("plugins", "list")
    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "SOURCE", "ACCEPTS"]
    (peak,) = [row for row in rows if row.startswith("peak_stats")]
    assert "1.0.0" in peak and "smartlab 0.1.0" in peak and "0/1/2-D fields in primary" in peak


def test_demo_against_a_running_server_publishes_results_another_process_finds(tiled_server):
    env = {**os.environ, "SMARTLAB_API_KEY": API_KEY}
    env.pop("SMARTLAB_TILED_URI", None)
    result = smartlab("demo", "--tiled", tiled_server.uri, "--points", "9", env=env)
    assert result.returncode == 0, result.stderr
    assert tiled_server.uri in result.stdout
    run_uid = next(
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("Run uid:")
    )
    assert "beam_profile_centroid" in result.stdout
    assert "phase_cnn live" in result.stdout and "rhombohedral" in result.stdout
    assert "spinwave_cnn live" in result.stdout and "j1_std" in result.stdout
    assert result.stdout.count("in_distribution") >= 4  # beside each model's results
    assert "transition_lstm live" in result.stdout
    assert "summary: transition flagged at event" in result.stdout
    assert "micrograph_unet live" in result.stdout and "fraction_pearlite" in result.stdout
    # the LSTM flags the transition mid-scan: Tiled pushes it to the demo's follower then
    assert "pushed by Tiled while the scan was at event" in result.stdout, result.stdout
    assert 'Key("run_uid") == uid' in result.stdout

    client = from_uri(tiled_server.uri, api_key=API_KEY)  # only tiled.client, as a user would
    found = (
        client["smartlab"].search(Key("run_uid") == run_uid).search(Key("plugin") == "peak_stats")
    )
    analysis = found.values().first()
    assert len(analysis["primary"]["events"].read()) == 9


def test_replay_command_publishes_new_results(tiled_server, RE, make_smartlab):
    import bluesky.plans as bp
    from ophyd.sim import det, motor

    smartlab_cb = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab_cb)
    (uid,) = RE(bp.scan([det], motor, -1, 1, 5))
    smartlab_cb.flush()
    env = {**os.environ, "SMARTLAB_TILED_URI": tiled_server.uri, "SMARTLAB_API_KEY": API_KEY}
    result = smartlab("replay", uid, env=env)
    assert result.returncode == 0, result.stderr
    assert "peak_stats: 5 events, 0 errors" in result.stdout


def test_errors_are_one_clear_line_not_a_traceback():
    env = {**os.environ, "SMARTLAB_API_KEY": API_KEY}
    result = smartlab("replay", "some-uid", "--tiled", "http://127.0.0.1:9", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("smartlab: error: could not reach a Tiled server")
    assert "Traceback" not in result.stderr


def test_replay_of_an_unknown_run_says_so_in_one_unquoted_line(tiled_server):
    env = {**os.environ, "SMARTLAB_API_KEY": API_KEY}
    result = smartlab("replay", "no-such-run", "--tiled", tiled_server.uri, env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"smartlab: error: no run with uid 'no-such-run' in the Tiled server at "
        f"{tiled_server.uri}; check the uid (`smartlab status` lists the recently analysed "
        "runs)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "ins", "{n}", "3", "--out", "x.h5"],
        ["train", "phase_cnn", "{n}", "3"],
        ["evaluate", "phase_cnn", "{n}", "3"],
    ],
)
@pytest.mark.parametrize("option", ["-n", "--n"])
def test_n_has_the_short_alias_minus_n(argv, option):
    args = build_parser().parse_args([option if a == "{n}" else a for a in argv])
    assert args.n == 3


def test_every_user_error_class_exists_where_the_command_looks_for_it():
    for module, name in USER_ERRORS.items():
        assert issubclass(getattr(importlib.import_module(module), name), Exception)


def test_a_bad_generator_setting_is_a_usage_error_naming_the_expected_value(tmp_path, capsys):
    out = str(tmp_path / "x.h5")
    assert main(["simulate", "ins", "-n", "1", "--out", out, "--set", "ei=fast"]) == 2
    assert capsys.readouterr().err == (
        "smartlab: error: SpinWaveConfig.ei: expected a value like 20.0, got 'fast'\n"
    )


def test_a_bug_keeps_its_traceback_instead_of_posing_as_a_usage_error(monkeypatch):
    from smartlab_plugins.models import evaluate

    def broken(*args, **kwargs):
        raise KeyError("generator_seed")  # e.g. a card field the code expects but lacks

    monkeypatch.setattr(evaluate, "evaluate", broken)
    with pytest.raises(KeyError, match="generator_seed"):
        main(["evaluate", "spinwave_cnn", "-n", "2"])


def test_status_lists_recent_analyses_with_their_counts(tiled_server, RE, make_smartlab, tmp_path):
    import bluesky.plans as bp
    from ophyd.sim import det

    smartlab_cb = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab_cb)
    (uid,) = RE(bp.count([det], 4))
    smartlab_cb.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("SMARTLAB_API_KEY", "TILED_API_KEY")}
    env["SMARTLAB_DATA_DIR"] = str(tmp_path)  # no stored key either: only --api-key gives it
    result = smartlab(
        "status", "--tiled", tiled_server.uri, "--limit", "3", "--api-key", API_KEY, env=env
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()[1:]
    assert header.split() == ["started", "plugin", "run", "status", "events", "errors", "dropped"]
    assert any(uid[:8] in row and "complete" in row and " 4 " in f" {row} " for row in rows)
