"""``%smartlab``: the session's SmartLab at the IPython prompt.

IPython's ``magic_arguments`` parses the line, so ``%smartlab?`` shows the usage
and a wrong argument is an IPython ``UsageError``.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from smartlab_plugins.status import format_rows, format_table, recent_analyses

# Each command, and whether it takes PLUGIN: "none", "optional" or "required".
_COMMANDS = {
    "status": "none",
    "plugins": "none",
    "enable": "required",
    "disable": "required",
    "latest": "optional",
}


@magics_class
class SmartLabMagics(Magics):
    """Line magic ``%smartlab`` bound to one SmartLab callback and one Tiled client."""

    def __init__(self, shell: Any, smartlab: Any, client: Any) -> None:
        super().__init__(shell)
        self.smartlab = smartlab
        self.client = client

    @magic_arguments()
    @argument("command", nargs="?", choices=_COMMANDS, metavar="COMMAND", help="what to do")
    @argument("plugin", nargs="?", metavar="PLUGIN", help="the plugin it applies to")
    @line_magic
    def smartlab(self, line: str) -> None:
        """The session's SmartLab: its worker, its plugins, their newest results.

        status            queue depth, drops, the worker, recent analyses on the server
        plugins           installed plugins, and which run in this session
        enable PLUGIN     run a plugin from the next run on
        disable PLUGIN    stop running a plugin from the next run on
        latest [PLUGIN]   the newest results (of PLUGIN), fetched from Tiled

        With no command, print this help.
        """
        magic = SmartLabMagics.smartlab  # self.smartlab is the SmartLab callback
        args = parse_argstring(magic, line)
        if args.command is None:
            print(magic.__doc__)
            return
        takes = _COMMANDS[args.command]
        if takes == "required" and args.plugin is None:
            raise UsageError(f"%smartlab {args.command} needs PLUGIN, the plugin's name")
        if takes == "none" and args.plugin is not None:
            raise UsageError(f"%smartlab {args.command} takes no PLUGIN, got {args.plugin!r}")
        action = getattr(self, f"_{args.command}")
        try:
            action(args.plugin or "")
        except KeyError as exc:  # an unknown plugin: the message lists the known ones
            print(f"smartlab: {exc.args[0] if exc.args else exc}")

    def _status(self, _: str) -> None:
        status = self.smartlab.status()
        worker = status.get("worker")
        worker = worker if isinstance(worker, dict) else {}
        publisher = worker.get("publisher", {})
        print(
            f"worker {'running' if status['worker_alive'] else 'STOPPED'}; "
            f"documents taken {status['accepted']}, waiting {status['pending']} "
            f"(+{status['on_disk']} on disk), dropped {status['dropped']}; "
            f"runs finished {status['runs_finished']}; "
            f"open runs {len(worker.get('open_runs', []))}; publisher queue "
            f"{publisher.get('queued', '?')}, writes {publisher.get('written', '?')}, "
            f"failed writes {publisher.get('failed', '?')}, "
            f"rounds waiting for Tiled {publisher.get('backlog_rounds', '?')}"
        )
        print(format_rows(recent_analyses(self.client, 5)))

    def _plugins(self, _: str) -> None:
        enabled = set(self.smartlab.enabled)
        manager = self.smartlab.plugins
        rows = [("NAME", "IN THIS SESSION", "VERSION", "MODEL")]
        for name in manager.names():
            model = manager.info(name).model
            rows.append(
                (
                    name,
                    "on" if name in enabled else "off",
                    manager.info(name).version,
                    model.name if model else "-",
                )
            )
        print(format_table(rows))

    def _enable(self, name: str) -> None:
        self.smartlab.enable(name)
        print(f"{name} runs from the next run on")

    def _disable(self, name: str) -> None:
        self.smartlab.disable(name)
        print(f"{name} no longer runs from the next run on")

    def _latest(self, plugin: str) -> None:
        from smartlab_plugins.results import find_analyses, read_events

        found = find_analyses(self.client, plugin=plugin or None)
        if not found:
            print(f"no results{' of ' + plugin if plugin else ''} yet")
            return
        latest = found[-1]  # find_analyses sorts oldest first
        metadata = latest.metadata
        run = f"run {metadata['run_uid'][:8]} (scan {metadata.get('scan_id')})"
        print(
            f"{metadata['plugin']} on {run}: {metadata['status']}, {metadata.get('events')} events"
        )
        print(read_events(latest).tail(10).to_string(index=False))


def register(shell: Any, smartlab: Any, client: Any) -> None:
    """Add ``%smartlab`` to an IPython shell."""
    shell.register_magics(SmartLabMagics(shell, smartlab, client))
