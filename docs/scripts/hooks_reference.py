"""Write docs/reference/hooks.md from smartlab_plugins/hookspecs.py, so it never drifts.

python docs/scripts/hooks_reference.py

Every hook (a function marked `@hookspec`) gets its signature and docstring; every
dataclass of the module gets its docstring and a table of its fields, with the type
and default taken from `dataclasses.fields` and the description from the class
docstring's `Attributes:` section, which must describe every field and nothing else.
The docstrings are Markdown. tests/test_docs_reference.py checks the page is current.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import inspect
import json
import re
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

from smartlab_plugins import hookspecs

OUT = Path(__file__).resolve().parents[1] / "reference" / "hooks.md"
SOURCE = "smartlab_plugins/hookspecs.py"


def hooks(module: ModuleType) -> list[Any]:
    """The module's hook specifications, in source order."""
    marker = f"{module.PROJECT_NAME}_spec"
    return [
        obj
        for obj in vars(module).values()
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and hasattr(obj, marker)
    ]


def datatypes(module: ModuleType) -> list[type]:
    """The dataclasses the module defines, in source order."""
    return [
        obj
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
    ]


def split_attributes(doc: str, where: str) -> tuple[str, dict[str, str]]:
    """A cleaned docstring's body, and its `Attributes:` section as one line per name."""
    body, _, section = doc.partition("\nAttributes:\n")
    described: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        entry = re.fullmatch(r" {4}(\w+): (.+)", line)
        if entry:
            name = entry[1]
            described[name] = entry[2].strip()
        elif line.startswith(" " * 8) and name:
            described[name] += " " + line.strip()
        elif line.strip():
            raise ValueError(f"{where}: cannot read this line of Attributes: {line!r}")
    return body.strip(), described


def annotation(text: Any) -> str:
    """An annotation as the source spells it (they are strings: `from __future__`)."""
    return text if isinstance(text, str) else inspect.formatannotation(text)


def signature(func: Any, *, skip_self: bool = False) -> str:
    """`name(arg: type, ...) -> type`, from the function's own annotations."""
    sig = inspect.signature(func)
    params = []
    for param in list(sig.parameters.values())[1 if skip_self else 0 :]:
        text = param.name
        if param.annotation is not param.empty:
            text += f": {annotation(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {param.default!r}"
        params.append(text)
    returns = ""
    if sig.return_annotation is not sig.empty:
        returns = f" -> {annotation(sig.return_annotation)}"
    return f"{func.__name__}({', '.join(params)}){returns}"


def literal(value: Any) -> str:
    """A default as Python source would spell it, with double-quoted strings."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        items = ", ".join(map(literal, value))
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)


def default(f: dataclasses.Field[Any]) -> str:
    """A field's default as it would be written, or `required`."""
    if f.default is not dataclasses.MISSING:
        return f"`{literal(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        factory = f.default_factory
        empty = {dict: "{}", list: "[]", tuple: "()"}.get(factory)  # type: ignore[call-overload]
        return f"`{empty or factory.__name__ + '()'}`"
    return "required"


def cell(text: str) -> str:
    """Text for a table cell, where a `|` (as in `X | None`) would end the cell.

    A code span with a `|` becomes `<code>` with `&#124;`, which both Python-Markdown
    and GitHub render as `|` (an escaped `\\|` shows its backslash in the former).
    """

    def code(match: re.Match[str]) -> str:
        return "<code>" + html.escape(match[1]).replace("|", "&#124;") + "</code>"

    text = re.sub(r"`([^`]*\|[^`]*)`", code, text)
    if "|" in text:
        raise ValueError(f"a table cell may have `|` only in code: {text!r}")
    return text


def linker(names: list[str]) -> typing.Callable[[str], str]:
    """Turn `` `Name` `` for each documented name into a link to its section."""
    pattern = re.compile(r"(?<!\[)`(" + "|".join(map(re.escape, names)) + r")`")

    def link(text: str) -> str:
        parts = re.split(r"(^```.*?^```$)", text, flags=re.M | re.S)  # keep code blocks
        return "".join(
            part
            if part.startswith("```")
            else pattern.sub(lambda m: f"[`{m[1]}`](#{m[1].lower()})", part)
            for part in parts
        )

    return link


def members(cls: type, link: typing.Callable[[str], str]) -> list[str]:
    """Bullets for the public methods and properties a dataclass defines itself."""
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            head = f"`{name}: {annotation(inspect.signature(member.fget).return_annotation)}`"
            head += " (property)"
            doc = inspect.getdoc(member.fget)
        elif inspect.isfunction(member):
            head = f"`{signature(member, skip_self=True)}`"
            doc = inspect.getdoc(member)
        else:
            continue
        if not doc:
            raise ValueError(f"{cls.__name__}.{name} has no docstring")
        first, *rest = doc.split("\n\n")
        lines.append(f"- {head}: {link(' '.join(first.split()))}")
        for paragraph in rest:
            lines += ["", *(f"    {line}" for line in link(paragraph).splitlines())]
    return lines


def render(module: ModuleType = hookspecs) -> str:
    specs = hooks(module)
    types = datatypes(module)
    link = linker([f.__name__ for f in specs] + [t.__name__ for t in types])
    project = module.PROJECT_NAME
    package = importlib.import_module(module.__name__.rpartition(".")[0])
    for name in [t.__name__ for t in types] + ["hookimpl"]:
        if getattr(package, name, None) is not getattr(module, name):
            raise ValueError(f"{package.__name__} does not export {name}, as the page says")
    out = [
        "# Hooks",
        "",
        f"<!-- Generated from {SOURCE} by docs/scripts/hooks_reference.py: edit the",
        "docstrings there and run the script; do not edit this page. -->",
        "",
        link(inspect.getdoc(module) or ""),
        "",
        "Import the marker and the data types from `smartlab_plugins`:",
        "",
        "```python",
        "from smartlab_plugins import (",
        *(f"    {name}," for name in [*sorted(t.__name__ for t in types), "hookimpl"]),
        ")",
        "```",
        "",
        f'`hookimpl` is `pluggy.HookimplMarker("{project}")`; a hook implementation may take',
        "fewer arguments than its specification names, never others.",
        "",
        "## Hook specifications",
        "",
    ]
    for func in specs:
        doc = inspect.getdoc(func)
        if not doc:
            raise ValueError(f"hook {func.__name__} has no docstring")
        out += [
            f"### `{func.__name__}`",
            "",
            "```python",
            "@hookimpl",
            f"def {signature(func)}: ...",
            "```",
            "",
            link(doc),
            "",
        ]
        used = [
            t.__name__ for t in types if re.search(rf"\b{t.__name__}\b", str(func.__annotations__))
        ]
        if used:
            out += ["Types: " + ", ".join(link(f"`{name}`") for name in used) + ".", ""]
    out += ["## Data types", ""]
    for cls in types:
        where = f"{module.__name__}.{cls.__name__}"
        body, described = split_attributes(inspect.getdoc(cls) or "", where)
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        if set(described) != set(names):
            raise ValueError(
                f"{where}: the docstring's Attributes must describe exactly the fields "
                f"{names}, not {list(described)}"
            )
        typing.get_type_hints(cls)  # every field's type must resolve
        frozen = cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        kind = (
            "A frozen dataclass: its fields cannot change once made."
            if frozen
            else ("A dataclass.")
        )
        out += [
            f"### `{cls.__name__}`",
            "",
            link(body),
            "",
            kind,
            "",
            "| Field | Type | Default | Description |",
            "|---|---|---|---|",
        ]
        for f in fields:
            out.append(
                f"| `{f.name}` | {cell(f'`{annotation(f.type)}`')} | {cell(default(f))} "
                f"| {cell(link(described[f.name]))} |"
            )
        out.append("")
        extra = members(cls, link)
        if extra:
            out += ["Methods and properties:", "", *extra, ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
