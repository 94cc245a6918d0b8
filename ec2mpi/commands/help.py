"""The `help` command: the list of commands, or one command's argparse help."""
from __future__ import annotations

import argparse

from ..errors import UserError
from .context import Result


def cmd_help(ctx, a) -> Result:
    from .table import COMMANDS
    if a.topic:
        if a.topic not in COMMANDS:
            raise UserError(f"no command {a.topic!r}", "type 'help' for the list of commands")
        from .parser import build_parser
        parser = build_parser()
        sub = next(act for act in parser._actions if isinstance(act, argparse._SubParsersAction))
        return Result(
            {"command": a.topic, "help": COMMANDS[a.topic].help},
            sub.choices[a.topic].format_help().rstrip(),
        )
    from .parser import help_text
    return Result([{"command": c.name, "help": c.help} for c in COMMANDS.values()], help_text())
