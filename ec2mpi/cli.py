"""`ec2mpi`: the scripted face of the command table (argparse built from commands.COMMANDS).

With no command on a terminal it starts the interactive shell instead.
"""
from __future__ import annotations

import sys

from . import commands
from .errors import Ec2mpiError


def main(argv=None) -> int:
    """Console-script entry point; returns (and, as a script, exits with) the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ctx = commands.Context()
    try:
        args, command = commands.parse(argv)
    except commands.ParserExit as exc:
        return exc.status
    except Ec2mpiError as err:
        ctx.say(f"ec2mpi: error: {err}")
        return err.exit_status
    if command is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from . import shell
            return shell.main(args)
        ctx.say("ec2mpi: error: no command given; see: ec2mpi --help (the shell needs a terminal)")
        return 2
    return commands.execute(command, args, ctx)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
