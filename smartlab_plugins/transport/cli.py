"""``smartlab worker``: analyse the documents a broker carries (added to the ``smartlab`` command
by :func:`add_commands`; ``python -m smartlab_plugins.transport.cli worker`` runs it alone)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from smartlab_plugins import settings


def _worker(args: argparse.Namespace) -> int:
    from smartlab_plugins.manager import PluginManager
    from smartlab_plugins.protocol import WorkerConfig
    from smartlab_plugins.transport.consumer import BrokerWorker, LeaseLost
    from smartlab_plugins.transport.settings import BrokerSettings, read_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    config = read_config(args.config)
    table = config.get("worker", {})
    broker = BrokerSettings.load(config, uri=args.broker, shards=args.shards, prefix=args.prefix)
    tiled_uri = args.tiled or settings.tiled_uri() or table.get("tiled_uri")
    if not tiled_uri:
        raise settings.ConfigurationError(
            "no Tiled server: pass --tiled, set SMARTLAB_TILED_URI or tiled_uri in [worker]"
        )
    plugins = args.plugins or table.get("plugins")
    data_roots = args.data_root or settings.data_roots() or table.get("data_roots") or []
    log = logging.getLogger(__name__)
    if data_roots:
        log.info("detector files are read only under: %s", ", ".join(map(str, data_roots)))
    else:
        log.warning(
            "no data roots: this worker reads no detector files (file-backed fields of every "
            "event are refused) until --data-root, SMARTLAB_DATA_ROOTS or data_roots in "
            "[worker] names the folders detectors write to"
        )
    worker_config = WorkerConfig(
        tiled_uri=tiled_uri,
        api_key=settings.api_key(),
        enabled=PluginManager().resolve(plugins) if plugins else None,
        raw=args.raw,
        nice=0,
        spool_dir=str(settings.spool_dir()),
        compute=args.compute or settings.compute() or table.get("compute"),
        data_roots=[str(root) for root in data_roots],
        max_event_bytes=args.max_event_bytes or table.get("max_event_bytes"),
    )
    worker = BrokerWorker(worker_config, broker, name=args.name or table.get("name"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
    except LeaseLost as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 3
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``worker`` to the ``smartlab`` command's subcommands."""
    from smartlab_plugins.cli import add_api_key

    worker = commands.add_parser(
        "worker",
        help="analyse the documents a Redis broker carries and publish the results to Tiled",
        description="Consume documents that BrokerPublisher put on Redis streams, analyse them "
        "with the enabled plugins and publish to Tiled. Workers share the broker's shards; a "
        "run is analysed by one worker, in order; a dead worker's runs are taken over. "
        "Settings: options, then SMARTLAB_BROKER_URI, SMARTLAB_TILED_URI, SMARTLAB_API_KEY, "
        "then the config file (SMARTLAB_CONFIG, default ~/.config/smartlab.toml).",
    )
    worker.add_argument("--broker", metavar="URI", help="default: SMARTLAB_BROKER_URI")
    worker.add_argument(
        "--name", help="this worker's consumer name, unique among live workers (default: host-pid)"
    )
    worker.add_argument("--plugins", nargs="+", metavar="NAME", help="default: all installed")
    worker.add_argument("--tiled", metavar="URI", help="default: SMARTLAB_TILED_URI")
    add_api_key(worker)
    worker.add_argument("--config", type=Path, help="TOML config file (default: SMARTLAB_CONFIG)")
    worker.add_argument("--shards", type=int, help="default: SMARTLAB_BROKER_SHARDS, else 8")
    worker.add_argument("--prefix", help="key prefix in Redis (default: smartlab)")
    worker.add_argument(
        "--compute",
        metavar="ADDRESS",
        help="Dask scheduler (tcp://host:8786, or local[:N]) for stateless plugins' batches "
        "(default: SMARTLAB_COMPUTE, else compute in [worker], else analyse here)",
    )
    worker.add_argument(
        "--data-root",
        action="append",
        metavar="DIR",
        help="a folder detector files may be read from (repeat for several; default: "
        "SMARTLAB_DATA_ROOTS, else data_roots in [worker], else none: no file is read, "
        "since the documents come over the network)",
    )
    worker.add_argument(
        "--max-event-bytes",
        type=int,
        metavar="BYTES",
        help="largest declared size of one event's file-backed data; larger is refused "
        "before anything is read (default: max_event_bytes in [worker], else 256 MiB)",
    )
    worker.add_argument(
        "--no-raw",
        dest="raw",
        action="store_false",
        help="do not write the raw run to Tiled (another consumer does)",
    )
    worker.set_defaults(func=_worker)


def main(argv: list[str] | None = None) -> int:
    from smartlab_plugins.cli import use_api_key

    parser = argparse.ArgumentParser(prog="smartlab")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    use_api_key(args)
    try:
        return args.func(args)
    except (settings.ConfigurationError, ConnectionError) as exc:
        print(f"smartlab {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
