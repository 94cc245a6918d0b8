"""The error funnel: run one command, print its result, turn every failure into one line
and an exit status (0 ok, 1 AWS or the cluster failed, 2 bad input, 130 interrupted)."""
from __future__ import annotations

import argparse
import json
import os
import traceback

from .. import userdirs
from ..config import validate_name
from ..errors import Ec2mpiError, UserError
from .context import Context, Result
from .parser import ParserExit, parse
from .table import Command

EXIT_INTERRUPTED = 130


def execute(command: Command, args: argparse.Namespace, ctx: Context) -> int:
    """Run one command and print its result; every failure becomes one line and an exit status."""
    ctx.args = args
    try:
        if command.destructive and not args.yes and not ctx.can_ask:
            raise UserError(
                f"'{command.name}' needs confirmation and there is no terminal to ask on",
                "pass --yes to confirm in scripts",
            )
        result = command.handler(ctx, args) or Result()
        emit(ctx, result)
        if args.cluster and result.status == 0:   # -c NAME picks the cluster for the next ones
            userdirs.remember_cluster(validate_name(args.cluster))
        return result.status
    except Ec2mpiError as err:
        if args.verbose and err.__cause__ is not None:  # -v promises the cause (botocore's)
            traceback.print_exception(type(err), err, err.__traceback__, file=ctx.err)
        ctx.say(f"ec2mpi: error: {err}")
        return err.exit_status
    except ParserExit as exc:
        return exc.status
    except KeyboardInterrupt:
        if command.waits:
            ctx.say(
                "\nec2mpi: stopped waiting. Nothing is half-made: the cluster stays consistent and "
                "nodes already launched keep booting; 'ec2mpi status' shows where it is."
            )
        else:
            ctx.say("\nec2mpi: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `ec2mpi list | head`: the reader left, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), ctx.out.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except Exception as exc:  # noqa: BLE001
        if type(exc).__module__.split(".")[0] in ("botocore", "boto3", "urllib3"):
            # the network or the endpoint failed below the adapters: an AWS failure, not a bug
            if args.verbose:
                traceback.print_exc(file=ctx.err)
            ctx.say(f"ec2mpi: error: AWS call failed: {type(exc).__name__}: {exc}; "
                    "check your network and region (or the endpoint), then retry")
            return 1
        # anything else is a bug: say so in one line, traceback only with -v
        if args.verbose:
            traceback.print_exc(file=ctx.err)
        ctx.say(f"ec2mpi: internal error: {type(exc).__name__}: {exc}"
                + ("" if args.verbose else " (run with -v for the traceback)"))
        return 1


def emit(ctx: Context, result: Result) -> None:
    if ctx.args.json:
        if result.data is not None:
            print(
                json.dumps(result.data, indent=2, sort_keys=True, default=str),
                file=ctx.out,
                flush=True,
            )
    elif result.text:
        print(result.text, file=ctx.out, flush=True)


def run_line(argv: list[str], ctx: Context, base: argparse.Namespace | None = None) -> int:
    """Parse and run one command line (used by the shell for every line it reads)."""
    try:
        args, command = parse(argv, base)
    except ParserExit as exc:
        return exc.status
    except Ec2mpiError as err:
        ctx.say(f"ec2mpi: error: {err}")
        return err.exit_status
    if command is None:
        ctx.say("ec2mpi: error: no command given; type 'help' for the list")
        return 2
    return execute(command, args, ctx)
