"""The one command table and how commands run: table.py (what), parser.py (argparse over
it), run.py (how a command runs and fails), context.py (where), and one module per group
of handlers (lifecycle, nodes, access, files, local, help)."""
from .access import links_for, resolve_node
from .context import GLOBAL_DESTS, Context, ProgressBar, Result
from .lifecycle import read_template, spec_from_args
from .parser import Parser, ParserExit, build_parser, help_text, parse
from .run import EXIT_INTERRUPTED, emit, execute, run_line
from .table import COMMANDS, GLOBAL_ARGS, Arg, Command

__all__ = ["COMMANDS", "EXIT_INTERRUPTED", "GLOBAL_ARGS", "GLOBAL_DESTS", "Arg", "Command",
           "Context", "Parser", "ParserExit", "ProgressBar", "Result", "build_parser", "emit",
           "execute", "help_text", "links_for", "parse", "read_template", "resolve_node",
           "run_line", "spec_from_args"]
