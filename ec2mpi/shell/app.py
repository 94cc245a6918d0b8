"""The interactive face of the command table: `ec2mpi` with no command on a terminal.

Split like pgcli/aws-shell: this module is the loop; completion, toolbar, keys, style,
the live state and the create dialog live in the shell_* modules next to it.
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory

from .. import commands, userdirs
from .completer import CommandCompleter
from .dialog import run_create_dialog
from .keys import shell_key_bindings
from .state import LiveState
from .style import STYLE
from .toolbar import prompt_fragments, toolbar_text

BANNER = "ec2mpi shell: 'help' lists commands, Tab completes, Ctrl-C cancels a line, Ctrl-D leaves."


class Shell:
    def __init__(self, args: argparse.Namespace | None = None, input=None, output=None,
                 background: bool = True, refresh_interval: float = 15.0):
        self.base = copy.copy(args) if args is not None else commands.parse([])[0]
        if self.base.cluster:  # a -c at start-up picks the cluster; later lines may pick another
            userdirs.remember_cluster(self.base.cluster)
            self.base.cluster = None
        self.io = {"input": input, "output": output}
        self.ctx = commands.Context(
            copy.copy(self.base), can_ask=True, ask=self.ask, dialog=self.create_dialog
        )
        self.state = LiveState(self._background_manager, interval=refresh_interval)
        self.background = background
        self.session = PromptSession(
            history=FileHistory(str(userdirs.history_path())),
            completer=CommandCompleter(self.state),
            complete_while_typing=True,
            bottom_toolbar=lambda: toolbar_text(self.state),
            style=STYLE,
            key_bindings=shell_key_bindings(),
            refresh_interval=5.0,
            **self.io,
        )
        self.questions = PromptSession(style=STYLE, **self.io)

    # the background state uses its own AWS session, so -v logging and the main work stay apart
    def _background_manager(self):
        from ..cluster import ClusterManager
        from ..sessions import open_session
        aws, _ = open_session(bool(self.base.local), self.base.profile, self.base.region,
                              local_info=self.ctx.local_info)
        return ClusterManager(aws)

    def _invalidate(self) -> None:
        app = self.session.app
        if app.is_running:
            app.invalidate()

    # the face's questions
    def ask(self, question: str) -> bool:
        answer = self.questions.prompt(f"{question} [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    def _ask_text(self, message, default, validator, completer) -> str:
        return self.questions.prompt(
            message,
            default=default,
            validator=validator,
            completer=completer,
            validate_while_typing=False,
        )

    def create_dialog(self, ctx, args):
        return run_create_dialog(self._ask_text, self.ask, args)

    # the loop
    def run(self) -> int:
        print(BANNER, file=sys.stderr)
        if self.background:
            self.state.start(self._invalidate)
        try:
            while True:
                try:
                    line = self.session.prompt(
                        lambda: prompt_fragments(self.state, bool(self.base.local))
                    )
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not self.handle(line):
                    break
        finally:
            self.state.stop()
        return 0

    def handle(self, line: str) -> bool:
        """Run one line; False means leave the shell."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        if line in ("exit", "quit"):
            return False
        try:
            argv = shlex.split(line)
        except ValueError as err:
            print(f"ec2mpi: error: {err}; close the quote", file=sys.stderr)
            return True
        commands.run_line(argv, self.ctx, self.base)
        self.state.poke()
        return True


def main(args: argparse.Namespace | None = None) -> int:
    return Shell(args).run()
