"""argparse over the command table: the same parser for the CLI and every shell line."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .context import GLOBAL_DESTS
from .table import COMMANDS, GLOBAL_ARGS


class ParserExit(Exception):
    """argparse wanted to exit (after --help): the face decides what that means."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message):
        if message.startswith("argument COMMAND: invalid choice"):
            word = message.split("'")[1] if "'" in message else "?"
            raise UserError(f"unknown command {word!r}", "'help' lists the commands")
        raise UserError(f"{self.prog}: {message}", f"see: {self.prog} --help")

    def exit(self, status=0, message=None):
        if message:
            sys.stderr.write(message)
        raise ParserExit(status)


def build_parser(prog: str = "ec2mpi") -> Parser:
    """argparse over the table; global options are accepted before and after the command."""
    parser = Parser(
        prog=prog,
        description="MPI clusters on EC2 (spot by default), or on the local cloud.",
        epilog="Run without a command on a terminal for the interactive shell.",
    )
    for arg in GLOBAL_ARGS:
        arg.add_to(parser)
    subs = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS.values():
        sub = subs.add_parser(
            cmd.name, help=cmd.help, description=cmd.help, epilog=cmd.epilog or None
        )
        groups: dict = {}
        for arg in cmd.args:
            target = sub
            if arg.group:
                if arg.group not in groups:
                    groups[arg.group] = sub.add_mutually_exclusive_group()
                target = groups[arg.group]
            arg.add_to(target)
        if cmd.remainder:
            sub.set_defaults(**{cmd.remainder: []})
        for arg in GLOBAL_ARGS:
            arg.add_to(sub, suppress_default=True)
    return parser


def parse(argv: list[str], base: argparse.Namespace | None = None):
    """argv -> (Namespace, Command or None). Everything after '--' goes to the command's remainder.

    `base` supplies global options the line does not set (the shell's start-up options)."""
    argv = list(argv)
    rest = None
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    command = COMMANDS.get(args.command_name) if args.command_name else None
    if rest is not None:
        if command is None or not command.remainder:
            raise UserError(f"unexpected arguments after '--': {' '.join(rest)}",
                            "only 'ssh NODE -- CMD' takes a command after '--'")
        setattr(args, command.remainder, rest)
    if base is not None:
        for dest in GLOBAL_DESTS:
            if getattr(args, dest, None) in (None, False) and getattr(base, dest, None) not in (
                None,
                False,
            ):
                setattr(args, dest, getattr(base, dest))
    return args, command


def help_text() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["commands (help COMMAND for details):"]
    lines += [f"  {c.name.ljust(width)}  {c.help}" for c in COMMANDS.values()]
    lines.append("global options: " + ", ".join(a.flags[0] for a in GLOBAL_ARGS))
    return "\n".join(lines)
