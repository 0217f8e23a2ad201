"""The ``smartlab`` command: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from smartlab_plugins import settings

PROFILE_NAME = "smartlab"
DISTRIBUTION = "smartlab"  # the name pip knows SmartLab by, for --version
DATA_DIR_DEFAULT = "$SMARTLAB_DATA_DIR, else $XDG_DATA_HOME/smartlab or ~/.local/share/smartlab"
API_KEY_DEFAULT = (
    "SMARTLAB_API_KEY, else TILED_API_KEY, else the key `smartlab serve` stored in the data folder"
)


def _serve(args: argparse.Namespace) -> int:
    from smartlab_plugins.server import serve

    data_dir = args.data_dir or settings.default_data_dir()
    catalog, source = settings.catalog_uri(args.catalog, args.config)
    serve(
        data_dir,
        host=args.host,
        port=args.port,
        public=args.public,
        catalog_uri=catalog,
        catalog_source=source,
        streaming_cache=args.streaming_cache,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.which == "adaptive":
        return _demo_adaptive(args)
    if args.queueserver_only or args.in_loop_only:
        raise settings.ConfigurationError(
            "--queueserver-only and --in-loop-only apply to `smartlab demo adaptive`"
        )
    if args.distributed:
        if args.tiled or args.data_dir:
            raise settings.ConfigurationError(
                "--distributed starts its own Tiled server on PostgreSQL; drop --tiled/--data-dir"
            )
        from smartlab_demos.distributed import run_distributed_demo

        comparisons = run_distributed_demo(points=args.points)
        return 0 if all(c.equal for c in comparisons) else 1
    from smartlab_demos.live import run_demo

    run_demo(tiled_uri=args.tiled, data_dir=args.data_dir, points=args.points)
    return 0


def _demo_adaptive(args: argparse.Namespace) -> int:
    """The in-loop adaptive plans, then an agent driving the queueserver (or either alone)."""
    if args.distributed:
        raise settings.ConfigurationError("--distributed applies to `smartlab demo` alone")
    if not args.queueserver_only:
        try:
            from smartlab_demos.adaptive_in_loop import run_in_loop_demo
        except ImportError as exc:
            raise settings.ConfigurationError(
                f"the in-loop adaptive demo is not available in this installation ({exc}); "
                "run `smartlab demo adaptive --queueserver-only`"
            ) from None
        run_in_loop_demo(tiled_uri=args.tiled, data_dir=args.data_dir)
    if not args.in_loop_only:
        from smartlab_demos.adaptive_queueserver import run_queueserver_demo

        run_queueserver_demo(tiled_uri=args.tiled, data_dir=args.data_dir, rounds=args.rounds)
    return 0


def _status(args: argparse.Namespace) -> int:
    from smartlab_plugins.connection import connect
    from smartlab_plugins.status import format_rows, recent_analyses

    uri = args.tiled or settings.tiled_uri()
    client = connect(uri, settings.api_key())
    print(f"Tiled server {uri}: the {args.limit} most recent analyses")
    print(format_rows(recent_analyses(client, args.limit)))
    return 0


def _plugins_list(args: argparse.Namespace) -> int:
    from smartlab_plugins.manager import PluginManager
    from smartlab_plugins.status import format_table

    manager = PluginManager()
    rows = [("NAME", "VERSION", "SOURCE", "ACCEPTS", "MODEL", "DEVICE")]
    for name in manager.names():
        info = manager.info(name)
        model = f"{info.model.name} ({info.model.sha256[:12]})" if info.model else "-"
        rows.append(
            (name, info.version, manager.source(name), info.accepts.describe(), model, info.device)
        )
    print(format_table(rows))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from smartlab_plugins.replay import replay

    uri = args.tiled or settings.tiled_uri()
    summaries = replay(args.run_uid, uri, settings.api_key(), plugins=args.plugins, progress=True)
    for summary in summaries:
        for name, result in summary["plugins"].items():
            print(
                f"{name}: {result['events']} events, {result['errors']} errors; "
                f"results in smartlab/{result['key']}"
            )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from smartlab_plugins.cases import configured, simulate_case

    config = configured(args.case, dict(item.split("=", 1) for item in args.set))
    made = simulate_case(args.case, args.n, seed=args.seed, chunk=args.chunk, config=config)
    path = made.save(args.out)
    print(f"wrote {args.n} {args.case} samples (seed {args.seed}) to {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from smartlab_plugins.models.baselines import BASELINES, train_baselines
    from smartlab_plugins.models.registry import task, training_config
    from smartlab_plugins.models.training import train_model

    if args.model in BASELINES:
        card = train_baselines(args.model, args.n or 10000, args.seed, args.out)
        print(
            f"wrote {', '.join(m['file'] for m in card['models'].values())} and {args.model}.json"
        )
        print(json.dumps({k: m["metrics"] for k, m in card["models"].items()}, indent=2))
        return 0

    config = training_config(args.model, n_samples=args.n, seed=args.seed, max_minutes=args.minutes)
    card = train_model(task(args.model), config, args.out)
    print(f"wrote {args.out / card.weights_file} (sha256 {card.sha256[:16]}...) and its model card")
    print(json.dumps(card.metrics, indent=2))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from smartlab_plugins.models.finetune import finetune, load_examples

    card = finetune(
        args.model,
        load_examples(args.data, args.model),
        args.out,
        seed=args.seed,
        data_label=args.data.name,
    )
    base = card.training["finetuned_from"]["sha256"][:16]
    print(f"wrote {args.out / card.weights_file} (fine-tuned from {base}...)")
    print(f"plugins use it with SMARTLAB_MODEL_DIR={args.out}; check it with")
    print(f"`smartlab evaluate {args.model} --model-dir {args.out}`")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from smartlab_plugins.models.evaluate import evaluate, metric_tables
    from smartlab_plugins.status import format_table

    report = evaluate(
        args.model, n=args.n, seed=args.seed, directory=args.model_dir, shift=args.shift
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['model']} (sha256 {report['sha256'][:16]}...), "
        f"{args.n} new samples, seed {report['seed']}"
    )
    shown = report["metrics"]
    if args.shift is not None:
        print(f"shift {args.shift}: {report['description']}")
        if "refused" in report:
            print(f"refused before the model: {report['refused']}")
            return 0
        shown = {"ood": report["ood"], "honesty": report["honesty"], "metrics": shown or {}}
    for title, cells in metric_tables(shown):
        print(f"\n{title}" if title else "")
        print(format_table(cells))
    return 0


def _calibrate_ood(args: argparse.Namespace) -> int:
    from smartlab_plugins.models.ood import calibrate_model

    info = calibrate_model(args.model, args.model_dir, n=args.n, seed=args.seed)
    print(
        f"wrote {info['file']} (sha256 {info['sha256'][:16]}...): {info['n_features']} features "
        f"in groups {', '.join(info['groups'])}; threshold {info['threshold']:.4g} "
        f"(the {info['quantile']:.0%} quantile of {info['n_threshold']} held-out inputs)"
    )
    return 0


def install_profile(ipython_dir: Path | None = None) -> Path:
    """Copy SmartLab's IPython profile into the IPython directory; return the profile folder."""
    import shutil
    from importlib.resources import files

    from IPython.paths import get_ipython_dir

    source = files("smartlab_plugins.profiles") / f"profile_{PROFILE_NAME}"
    target = Path(ipython_dir or get_ipython_dir()) / f"profile_{PROFILE_NAME}"
    (target / "startup").mkdir(parents=True, exist_ok=True)
    for item in (source / "startup").iterdir():
        if item.name.endswith(".py"):
            shutil.copyfile(str(item), target / "startup" / item.name)
    return target


def _install_profile(args: argparse.Namespace) -> int:
    print(f"Installed the SmartLab IPython profile in {install_profile(args.ipython_dir)}")
    return 0


def _ipython(args: argparse.Namespace) -> int:
    profile = install_profile(args.ipython_dir)
    extra = [a for a in args.ipython_args if a != "--"]
    command = [
        sys.executable,
        "-m",
        "IPython",
        f"--profile-dir={profile}",
        "--no-banner",
        *extra,
    ]
    os.execv(sys.executable, command)
    return 0  # not reached


def _setting(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for
    (importing ``importlib.metadata`` alone takes some 30 ms, a fifth of ``smartlab --help``)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        print(f"{parser.prog} {version(DISTRIBUTION)}")
        parser.exit()


def _print_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The command of a parser run without its subcommand: its help, exit status 2."""

    def print_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return print_help


def add_api_key(parser: argparse.ArgumentParser, default: str = API_KEY_DEFAULT) -> None:
    """Add ``--api-key KEY``, which means what ``SMARTLAB_API_KEY`` means (see :func:`main`)."""
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="the Tiled server's API key, as SMARTLAB_API_KEY (which, unlike an option, other "
        f"users cannot read in the process list; default: {default})",
    )


def use_api_key(args: argparse.Namespace) -> None:
    """Give ``--api-key`` the meaning of ``SMARTLAB_API_KEY``, for this process and those it
    starts (the embedded server, workers, IPython): every part reads the key from there."""
    if getattr(args, "api_key", None):
        os.environ["SMARTLAB_API_KEY"] = args.api_key


def build_parser() -> argparse.ArgumentParser:
    """The ``smartlab`` command's parser; imports no command's dependencies (each command
    imports its own when it runs), so that ``smartlab --help`` and typos answer at once."""
    from smartlab_plugins.cases import CASES, DEFAULT_CHUNK
    from smartlab_plugins.models.registry import BASELINE_NAMES, TASKS
    from smartlab_plugins.transport.cli import add_commands as add_transport_commands

    trainable = sorted(TASKS)
    parser = argparse.ArgumentParser(
        prog="smartlab",
        description="Live machine-learning analysis of Bluesky scans, published to Tiled.",
        epilog="Without a command, smartlab prints this help and exits with status 2. "
        "`smartlab COMMAND --help` describes a command.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    parser.set_defaults(func=_print_help(parser))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the embedded, writable Tiled server",
        description="Run a writable Tiled server (SQLite catalog, files in the data folder, or "
        "the catalog and tables in PostgreSQL) that requires an API key: SMARTLAB_API_KEY if "
        "set, else a key generated on first start and stored in the data folder (mode 0600).",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"catalog, files and key (default: {DATA_DIR_DEFAULT})",
    )
    serve.add_argument("--host", default=settings.DEFAULT_HOST, help="default: %(default)s")
    serve.add_argument(
        "--port", type=int, default=settings.DEFAULT_PORT, help="default: %(default)s"
    )
    serve.add_argument(
        "--public",
        action="store_true",
        help="let anyone read without a key (writing still needs it)",
    )
    serve.add_argument(
        "--catalog",
        metavar="URI",
        help="keep the catalog and SQL tables in this PostgreSQL database, "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (the password may come from PGPASSWORD "
        "or ~/.pgpass instead); 'sqlite': SQLite files in the data folder (default: "
        "SMARTLAB_CATALOG_URI, else [server] catalog in the config file, else sqlite)",
    )
    serve.add_argument(
        "--streaming-cache",
        metavar="URI",
        default="memory",
        help="where Tiled keeps the updates it pushes to subscribers: 'memory' for one server "
        "process (default), redis://HOST:PORT when several serve one catalog",
    )
    serve.add_argument("--config", type=Path, help="TOML config file (default: SMARTLAB_CONFIG)")
    add_api_key(
        serve,
        "SMARTLAB_API_KEY, else the key stored in the data folder, else a new one stored there",
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo",
        help="run a simulated scan with live analysis and print the results",
        description="Scan a simulated beam monitor with peak_stats live, read the results back "
        "from Tiled and print them with the snippet to query them. `smartlab demo adaptive` "
        "runs the adaptive experiments instead: the in-loop adaptive plans, then an agent that "
        "reads results from Tiled and submits plans to a queueserver (redis-server and the RE "
        "Manager are started for it).",
    )
    demo.add_argument(
        "which",
        nargs="?",
        choices=["adaptive"],
        help="adaptive: the adaptive experiments (default: the live-analysis demo)",
    )
    demo.add_argument(
        "--distributed",
        action="store_true",
        help="through a Redis broker to two `smartlab worker` processes, Tiled on PostgreSQL "
        "(all started for the demo), compared with the in-process analysis",
    )
    only = demo.add_mutually_exclusive_group()
    only.add_argument(
        "--queueserver-only",
        action="store_true",
        help="adaptive: only the agent driving the queueserver",
    )
    only.add_argument(
        "--in-loop-only", action="store_true", help="adaptive: only the in-loop adaptive plans"
    )
    demo.add_argument(
        "--rounds",
        type=_positive,
        default=4,
        help="adaptive: the agent's rounds (one plan each; default: %(default)s)",
    )
    demo.add_argument(
        "--tiled",
        metavar="URI",
        help="publish to this server (default: SMARTLAB_TILED_URI, else start the embedded one)",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"data folder of the embedded server (default: {DATA_DIR_DEFAULT})",
    )
    add_api_key(demo)
    demo.add_argument("--points", type=int, default=41, help="scan points (default: %(default)s)")
    demo.set_defaults(func=_demo)

    status = commands.add_parser(
        "status",
        help="recent analyses on the Tiled server: plugin, run, status, events, errors, drops",
    )
    status.add_argument("--tiled", metavar="URI", help="default: SMARTLAB_TILED_URI")
    add_api_key(status)
    status.add_argument("--limit", type=_positive, default=10, help="default: %(default)s")
    status.set_defaults(func=_status)

    plugins = commands.add_parser("plugins", help="inspect analysis plugins")
    plugins.set_defaults(func=_print_help(plugins))
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND")
    plugins_list = plugin_commands.add_parser(
        "list", help="list installed plugins: name, version, source, accepted data, model, device"
    )
    plugins_list.set_defaults(func=_plugins_list)

    replay = commands.add_parser(
        "replay",
        help="re-run the plugins over a run stored in Tiled",
        description="Read a stored run back from Tiled, analyse it again and publish the new "
        "results beside the old ones (metadata mode: replay).",
    )
    replay.add_argument("run_uid", metavar="RUN_UID")
    replay.add_argument("--tiled", metavar="URI", help="default: SMARTLAB_TILED_URI")
    add_api_key(replay)
    replay.add_argument(
        "--plugins", nargs="+", metavar="NAME", help="only these plugins (default: all)"
    )
    replay.set_defaults(func=_replay)

    simulate = commands.add_parser(
        "simulate",
        help="write a labelled simulated data set (HDF5)",
        description="Generate N labelled samples from an instrument's physics model and write "
        "them, with the generator config and seed, to an HDF5 file.",
    )
    simulate.add_argument("case", choices=list(CASES))
    simulate.add_argument("-n", "--n", type=_positive, required=True, help="number of samples")
    simulate.add_argument("--out", type=Path, required=True, help="output file (.h5)")
    simulate.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    simulate.add_argument(
        "--chunk",
        type=_positive,
        default=DEFAULT_CHUNK,
        help="samples per generator call (default: %(default)s)",
    )
    simulate.add_argument(
        "--set",
        action="append",
        default=[],
        type=_setting,
        metavar="KEY=VALUE",
        help="change a generator setting (a shifted instrument), e.g. resolution_fraction=0.06",
    )
    simulate.set_defaults(func=_simulate)

    train = commands.add_parser(
        "train",
        help="train a model from simulated data and write its weights and model card",
        description="Simulate a data set, split it by seed, train with Adam (cosine schedule, "
        "early stopping, a time budget) and write MODEL.pt, MODEL.json (the model card) and "
        "MODEL_curves.png. Uses CUDA when available.",
    )
    train.add_argument("model", choices=[*trainable, *BASELINE_NAMES])
    train.add_argument("--out", type=Path, default=Path("trained"), help="default: %(default)s")
    train.add_argument(
        "-n",
        "--n",
        type=_positive,
        default=None,
        help="samples (default: what the shipped model was trained on; 10000 for baselines)",
    )
    train.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    train.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget, simulation included (default: what the shipped model was trained "
        "with; 4.75 unless its card says otherwise)",
    )
    train.set_defaults(func=_train)

    finetune = commands.add_parser(
        "finetune",
        help="adapt a shipped model to a few labelled examples of a shifted instrument",
        description="Adapt the shipped model to DATA (an HDF5 set from `smartlab simulate`, "
        "or measured examples in the same layout): keep its weights, retrain its dense head "
        "alone, or retrain every layer at a small learning rate, whichever scores best by "
        "3-fold cross-validation on the examples; the card reports all three, and the new "
        "and the original domain.",
    )
    finetune.add_argument("model", choices=["spinwave_cnn", "phase_cnn"])
    finetune.add_argument("data", type=Path, metavar="DATA")
    finetune.add_argument(
        "--out", type=Path, default=Path("finetuned"), help="default: %(default)s"
    )
    finetune.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    finetune.set_defaults(func=_finetune)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a shipped model on a freshly simulated test set",
        description="Simulate N new samples from a seed the model's training never used and "
        "print the metrics its model card reports.",
    )
    evaluate.add_argument("model", choices=trainable)
    evaluate.add_argument(
        "-n", "--n", type=_positive, default=1000, help="samples (default: %(default)s)"
    )
    evaluate.add_argument("--seed", type=int, default=None, help="default: training seed + 1000")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="the folder `smartlab train` or `smartlab finetune` wrote with --out, as "
        "SMARTLAB_MODEL_DIR (default: SMARTLAB_MODEL_DIR if it holds MODEL, else the shipped "
        "model)",
    )
    evaluate.add_argument("--dir", dest="model_dir", type=Path, help=argparse.SUPPRESS)
    evaluate.add_argument(
        "--shift",
        metavar="NAME",
        help="score on a shifted instrument or garbage input instead (see docs/models/ood.md "
        "for the names per model): metrics, OOD AUROC against the model's own domain, "
        "interval coverage and confident-wrong answers",
    )
    evaluate.set_defaults(func=_evaluate)

    calibrate = commands.add_parser(
        "calibrate-ood",
        help="calibrate a model's out-of-distribution score on fresh in-distribution samples",
        description="Simulate N samples from the model's training generator (a seed neither "
        "training nor evaluate uses), fit the Mahalanobis statistics of its features and the "
        "flag threshold, write MODEL.ood.npz beside the weights and record it in the card.",
    )
    calibrate.add_argument("model", choices=trainable)
    calibrate.add_argument(
        "-n", "--n", type=_positive, default=None, help="samples (default: the validation size)"
    )
    calibrate.add_argument("--seed", type=int, default=None, help="default: training seed + 3000")
    calibrate.add_argument(
        "--model-dir", type=Path, metavar="DIR", help="default: as `smartlab evaluate`"
    )
    calibrate.set_defaults(func=_calibrate_ood)

    ipython = commands.add_parser(
        "ipython",
        help="open a Bluesky IPython session with SmartLab subscribed",
        description="Install SmartLab's IPython profile and start IPython with it; extra "
        "arguments go to IPython (e.g. smartlab ipython -- -c 'RE(bp.count([det]))').",
    )
    ipython.add_argument("--ipython-dir", type=Path, default=None, help="default: IPython's own")
    ipython.add_argument("ipython_args", nargs=argparse.REMAINDER)
    ipython.set_defaults(func=_ipython)

    install = commands.add_parser("install-profile", help="install the IPython profile only")
    install.add_argument("--ipython-dir", type=Path, default=None, help="default: IPython's own")
    install.set_defaults(func=_install_profile)
    add_transport_commands(commands)
    return parser


#: The errors a user can cause and fix (a server that is down, a wrong name, file or setting),
#: by the module that defines them: printed as one line, exit status 2.
USER_ERRORS = {
    "smartlab_plugins.adaptive.agent": "AgentError",
    "smartlab_plugins.connection": "TiledUnavailableError",
    "smartlab_plugins.manager": "UnknownPluginError",
    "smartlab_plugins.models.cards": "ModelIntegrityError",
    "smartlab_plugins.models.finetune": "DataSetError",
    "smartlab_plugins.processes": "ProcessStartError",
    "smartlab_plugins.registry": "UnknownNameError",
    "smartlab_plugins.replay": "UnknownRunError",
}


def user_errors() -> tuple[type[Exception], ...]:
    """The classes of :data:`USER_ERRORS` whose modules are imported, and the built-in ones.

    Looked up only once an exception reaches :func:`main`: a module never
    imported raised nothing, and importing it (torch, the worker) just to
    compare would delay every command's start or its error message.
    """
    found = [getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules]
    # ConnectionError: a broker or PostgreSQL catalog that cannot be reached
    return (*found, settings.ConfigurationError, ConnectionError)


def main(argv: list[str] | None = None) -> int:
    """Run the ``smartlab`` command; return its exit status.

    ``--api-key`` is put in the environment as ``SMARTLAB_API_KEY`` first
    (:func:`use_api_key`). A :func:`user_errors` error is printed as one line
    (``smartlab: error: ...``) with exit status 2; any other exception is a bug
    and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    use_api_key(args)
    try:
        return args.func(args)
    except user_errors() as exc:
        print(f"smartlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
