"""The command reference (docs/cli.md), made from the commands themselves.

    python -m prismer_cli.reference > docs/cli.md

tests/test_docs.py fails when docs/cli.md differs from what this writes, so a command, an
option or a help text cannot change without its documentation (as datasette checks its own).
"""

from __future__ import annotations

from typing import Any

import typer.main

from .main import app


def commands() -> dict[str, Any]:
    """Every command by its full name ("prismer experts list"), groups included, in order."""
    found: dict[str, Any] = {}

    def walk(command: Any, name: str) -> None:
        found[name] = command
        if _is_group(command):
            for sub in sorted(command.commands):
                walk(command.commands[sub], f"{name} {sub}")

    walk(typer.main.get_command(app), "prismer")
    return found


def markdown() -> str:
    lines = ["# Command reference", "", "Written by `python -m prismer_cli.reference > docs/cli.md` from the commands'",
             "own help; `prismer COMMAND --help` says the same.", ""]
    for name, command in commands().items():
        if _is_group(command) and name != "prismer":
            lines += [f"## `{name}`", "", _text(command.help), ""]
            continue
        lines += [f"## `{name}`" if name != "prismer" else "## `prismer`", "", _text(command.help), ""]
        rows = [p for p in command.params if p.name != "help"]
        if rows and not _is_group(command):
            lines += ["| argument / option | default | meaning |", "|---|---|---|"]
            for param in rows:
                lines.append(f"| {_names(param)} | {_default(param)} | {_text(getattr(param, 'help', '') or '').replace('|', '/')} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def _names(param: Any) -> str:
    if _is_argument(param):
        return f"`{(param.metavar or param.name).upper()}`"
    names = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
    return names + (" (required)" if param.required else "")


def _default(param: Any) -> str:
    if _is_argument(param) or param.required or param.default in (None, [], ()):
        return ""
    return f"`{param.default}`"


def _text(text: str | None) -> str:
    """One paragraph of plain text (rich markup and escapes removed)."""
    plain = (text or "").replace("\\[", "[").replace("[bold]", "**").replace("[/bold]", "**")
    return " ".join(plain.split())


if __name__ == "__main__":
    print(markdown(), end="")
