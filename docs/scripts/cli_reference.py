"""Write docs/reference/cli.md from the `smartlab` argument parser, so it never drifts.

python docs/scripts/cli_reference.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smartlab_plugins.cli import build_parser

OUT = Path(__file__).resolve().parents[1] / "reference" / "cli.md"


def subcommands(
    parser: argparse.ArgumentParser, prefix: str
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub))
                found.extend(subcommands(sub, f"{prefix} {name}"))
    return found


def main() -> None:
    parser = build_parser()
    parser.prog = "smartlab"
    sections = [
        "# Command line",
        "",
        "Generated from `smartlab --help`.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, sub in subcommands(parser, "smartlab"):
        sub.prog = name
        sections += [f"## `{name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    OUT.write_text("\n".join(sections))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
