"""The README's model-layer commands run as printed, and its mistakes get clear answers.

The ```bash blocks of README.md that hold ``smartlab train|evaluate|simulate|finetune``
commands are read from the README itself, so a changed README is tested as
written. Each command runs, in README order, in one fresh working directory,
as a subprocess of the installed ``smartlab`` entry point, exactly as printed
with one exception (:data:`SHORTENED`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from smartlab_plugins.cases import simulate_case
from smartlab_plugins.cli import build_parser
from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models.cards import ModelCard, sha256_of
from smartlab_plugins.models.store import card_of, load_model

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_COMMANDS = ("train", "evaluate", "simulate", "finetune", "calibrate-ood")
ENTRY_POINT = shutil.which("smartlab", path=str(Path(sys.executable).parent))

#: Lines of those blocks that are not run, and why.
SKIPPED = {"ipython": "interactive: it opens an IPython session and waits for input"}

#: ``smartlab train MODEL`` as printed simulates 4,000-10,000 samples and trains for up to
#: 4.75 minutes. Its own options shorten it: 40 samples and a 3 s budget (at least one
#: epoch always runs), which still simulates, splits, trains, calibrates, scores and
#: writes the weights and the model card, as printed.
SHORTENED = {"train": ("--n", "40", "--minutes", "0.05")}


@dataclass(frozen=True)
class Command:
    line: str  # as printed in the README, comment included
    env: dict[str, str]  # VAR=value prefixes
    argv: list[str]  # after `smartlab`

    @property
    def subcommand(self) -> str:
        return self.argv[0]


def readme_commands() -> list[Command]:
    """Every command line of the README's ```bash blocks that hold model-layer commands."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    pattern = re.compile(rf"\bsmartlab ({'|'.join(MODEL_COMMANDS)})\b")
    commands = []
    for block in blocks:
        if not pattern.search(block):
            continue
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            env = {}
            while re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            assert words[0] == "smartlab", f"README line {line!r} is not a smartlab command"
            commands.append(Command(line.strip(), env, words[1:]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_model_commands_to_test() -> None:
    assert {c.subcommand for c in COMMANDS} >= set(MODEL_COMMANDS)


def smartlab(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run the installed ``smartlab`` entry point, as a user's shell would."""
    assert ENTRY_POINT, f"no smartlab entry point beside {sys.executable}"
    environment = {k: v for k, v in os.environ.items() if k != "SMARTLAB_MODEL_DIR"}
    environment.update({"MPLBACKEND": "Agg", **(env or {})})
    return subprocess.run(
        [ENTRY_POINT, *argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ran(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """Every README command run once, in order, in one working directory: later ones use
    what earlier ones wrote, as they do for a reader following the README."""
    workdir = tmp_path_factory.mktemp("readme")
    results: dict[str, subprocess.CompletedProcess] = {}
    for command in COMMANDS:
        if command.subcommand not in MODEL_COMMANDS:
            continue  # skipped, or failed by the test for want of a rule
        argv = [*command.argv, *SHORTENED.get(command.subcommand, ())]
        started = time.monotonic()
        results[command.line] = smartlab(argv, workdir, command.env)
        print(f"{time.monotonic() - started:5.1f} s  {shlex.join(argv)}")
    return workdir, results


@pytest.mark.parametrize("command", COMMANDS, ids=[c.line.split("#")[0].strip() for c in COMMANDS])
def test_a_readme_command_runs_as_printed(
    command: Command, ran: tuple[Path, dict[str, subprocess.CompletedProcess]]
) -> None:
    if command.subcommand in SKIPPED:
        pytest.skip(SKIPPED[command.subcommand])
    assert command.subcommand in MODEL_COMMANDS, (
        f"no rule for README line {command.line!r}: run it here or skip it with a reason"
    )
    workdir, results = ran
    result = results[command.line]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    args = build_parser().parse_args(command.argv)
    CHECKS[command.subcommand](args, result, workdir)


def check_train(
    args: argparse.Namespace, result: subprocess.CompletedProcess, workdir: Path
) -> None:
    card = ModelCard.load(workdir / args.out / f"{args.model}.json")
    card.verify(workdir / args.out)  # the weights are there and match the card
    assert card.name == args.model and card.metrics
    assert f"wrote {args.out / card.weights_file}" in result.stdout
    assert (workdir / args.out / f"{args.model}_curves.png").is_file()


def check_evaluate(
    args: argparse.Namespace, result: subprocess.CompletedProcess, workdir: Path
) -> None:
    shipped = card_of(args.model)
    if args.shift is not None:
        first, second, *_ = result.stdout.splitlines()
        assert first.startswith(f"{args.model} (sha256 {shipped.sha256[:16]}...), {args.n} new")
        assert second.startswith(f"shift {args.shift}: ")
        auroc = re.search(r"^auroc\s+(\S+)$", result.stdout, flags=re.M)
        assert auroc and 0.5 <= float(auroc.group(1)) <= 1.0, result.stdout
        assert re.search(
            r"^honesty\.shifted_set\.(confident_wrong|in_68_interval_j1)$",
            result.stdout,
            flags=re.M,
        )
        assert re.search(r"^unflagged ", result.stdout, flags=re.M), result.stdout
        return
    if args.json:
        report = json.loads(result.stdout)
        assert report["model"] == args.model and report["sha256"] == shipped.sha256
        assert report["metrics"]["n"] == args.n
        return
    first, *rest = result.stdout.splitlines()
    assert first.startswith(f"{args.model} (sha256 {shipped.sha256[:16]}...), {args.n} new")
    assert re.search(rf"^n\s+{args.n}$", result.stdout, flags=re.M), result.stdout
    assert "{'" not in result.stdout, "a dict repr, not a table"
    assert all(len(line) < 120 for line in rest), result.stdout
    numbers = re.findall(r"\d+\.\d+", result.stdout)
    assert numbers and all(len(n.replace(".", "").lstrip("0")) <= 4 for n in numbers)


def check_simulate(
    args: argparse.Namespace, result: subprocess.CompletedProcess, workdir: Path
) -> None:
    made = SimulatedSet.load(workdir / args.out)
    assert (made.case, len(made), made.seed) == (args.case, args.n, args.seed)
    for setting in args.set:
        key, value = setting.split("=", 1)
        assert made.config[key] == pytest.approx(float(value))
    assert f"wrote {args.n} {args.case} samples" in result.stdout


def check_finetune(
    args: argparse.Namespace, result: subprocess.CompletedProcess, workdir: Path
) -> None:
    card = ModelCard.load(workdir / args.out / f"{args.model}.json")
    card.verify(workdir / args.out)
    assert card.training["finetuned_from"]["sha256"] == card_of(args.model).sha256
    assert card.data["source"] == args.data.name
    assert f"SMARTLAB_MODEL_DIR={args.out}" in result.stdout


def check_calibrate_ood(
    args: argparse.Namespace, result: subprocess.CompletedProcess, workdir: Path
) -> None:
    directory = workdir / args.model_dir
    card = ModelCard.load(directory / f"{args.model}.json")
    entry = card.extras["ood"]
    assert entry["n_fit"] + entry["n_threshold"] == args.n
    assert entry["sha256"] == sha256_of(directory / entry["file"])
    assert f"wrote {entry['file']} (sha256 {entry['sha256'][:16]}...)" in result.stdout
    assert load_model(args.model, directory, device="cpu").ood is not None


CHECKS = {
    "calibrate-ood": check_calibrate_ood,
    "train": check_train,
    "evaluate": check_evaluate,
    "simulate": check_simulate,
    "finetune": check_finetune,
}


# Mistakes a newcomer makes: one line that names the problem and what to do, exit status 2.


def assert_clear_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_finetune_on_another_instruments_data_says_which_data_it_needs(tmp_path: Path) -> None:
    simulate_case("ins", 3, seed=1, progress=False).save(tmp_path / "ins.h5")
    result = smartlab(["finetune", "phase_cnn", "ins.h5"], tmp_path)
    assert_clear_error(
        result,
        "smartlab: error: ins.h5 holds 'ins' data (inputs: sqw); ",
        "phase_cnn is trained on 'mpb' data: ",
        "make one with `smartlab simulate mpb --n 50 --out mpb.h5`",
    )


def test_finetune_of_a_missing_file_says_there_is_no_such_file(tmp_path: Path) -> None:
    result = smartlab(["finetune", "spinwave_cnn", "shifted.h5"], tmp_path)
    assert_clear_error(
        result,
        "smartlab: error: shifted.h5: no such file; ",
        "make one with `smartlab simulate ins --n 50 --out ins.h5`",
    )


def test_finetune_of_a_file_that_is_not_hdf5_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("j1,j2,d\n1.0,0.1,0.05\n")
    result = smartlab(["finetune", "spinwave_cnn", "notes.csv"], tmp_path)
    assert_clear_error(result, "smartlab: error: notes.csv is not an HDF5 file; ", "simulate ins")


def test_evaluate_of_an_unknown_model_lists_the_models(tmp_path: Path) -> None:
    result = smartlab(["evaluate", "spinwave_unet", "-n", "4"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'spinwave_unet'" in result.stderr
    for name in ("micrograph_unet", "phase_cnn", "spinwave_cnn", "transition_lstm"):
        assert name in result.stderr
