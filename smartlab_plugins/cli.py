"""The ``smartlab`` command: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smartlab_plugins import settings


def _serve(args: argparse.Namespace) -> int:
    from smartlab_plugins.server import serve

    serve(args.data_dir, host=args.host, port=args.port, public=args.public)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the embedded, writable Tiled server")
    serve.add_argument("--data-dir", type=Path, default=settings.default_data_dir())
    serve.add_argument("--host", default=settings.DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=settings.DEFAULT_PORT)
    serve.add_argument("--public", action="store_true")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
