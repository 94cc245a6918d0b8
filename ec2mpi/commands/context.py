"""Where a command runs (options, the face's I/O and questions, a lazy AWS session) and
what it returns. Getters here have no side effects."""
from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .. import output, userdirs
from ..config import validate_name
from ..errors import UserError

GLOBAL_DESTS = ("local", "profile", "region", "cluster", "json", "yes", "verbose")


@dataclass
class Result:
    """What a handler returns: `data` for --json, `text` for people, `status` the exit status."""

    data: Any = None
    text: str | None = None
    status: int = 0


class ProgressBar:
    """A one-line progress bar on stderr: redrawn in place on a terminal; otherwise a new line
    only when the step (done/total) changes, or a message not yet shown for this step comes
    (so two alternating messages of one step do not print a line per poll)."""

    def __init__(self, stream, what: str):
        self.stream, self.what = stream, what
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._step = None
        self._shown_messages: set = set()
        self._lock = threading.Lock()
        self.shown = False

    def __call__(self, done: int, total: int, message: str = "") -> None:
        try:
            line = f"{self.what} {output.progress_bar(done, total, message)}"
            with self._lock:
                if self.tty:
                    self.stream.write("\r" + line[:200] + "\x1b[K")
                else:
                    if (done, total) != self._step:
                        self._step, self._shown_messages = (done, total), set()
                    if message in self._shown_messages:
                        return
                    self._shown_messages.add(message)
                    self.stream.write(line + "\n")
                self.stream.flush()
                self.shown = True
        except Exception:  # noqa: BLE001, S110 - progress must never break what it reports on
            pass

    def finish(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


class Context:
    """Where a command runs: its options, the face's I/O and questions, and a lazy AWS session.

    Faces differ only in what they pass here: the shell can ask questions and run the
    create dialog; a script without a terminal cannot, so destructive commands need --yes.
    """

    def __init__(self, args=None, out=None, err=None, can_ask: bool | None = None,
                 ask: Callable[[str], bool] | None = None, dialog: Callable | None = None):
        self.args = args or argparse.Namespace(**{d: None for d in GLOBAL_DESTS})
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.can_ask = (sys.stdin.isatty() and self.err.isatty()) if can_ask is None else can_ask
        self._ask = ask or self._ask_on_terminal
        self.dialog = dialog
        self.shell = dialog is not None   # the interactive face (it can ask and run dialogs)
        self._aws = None
        self._aws_key = None
        self._unsubscribe = None
        self.local_info = None

    # messages and questions
    def say(self, message: str) -> None:
        print(message, file=self.err, flush=True)

    def confirm(self, question: str) -> bool:
        if getattr(self.args, "yes", False):
            return True
        if not self.can_ask:
            raise UserError(
                "refusing to do this without confirmation", "pass --yes to confirm in scripts"
            )
        return self._ask(question)

    def _ask_on_terminal(self, question: str) -> bool:
        self.err.write(f"{question} [y/N] ")
        self.err.flush()
        answer = sys.stdin.readline()
        return answer.strip().lower() in ("y", "yes")

    def progress(self, what: str) -> ProgressBar:
        return ProgressBar(self.err, what)

    # AWS
    @property
    def aws(self):
        key = (bool(self.args.local), self.args.profile, self.args.region)
        if self._aws is None or key != self._aws_key:
            from ..sessions import open_session
            bar = self.progress("local cloud") if self.args.local else None
            try:
                self._aws, self.local_info = open_session(
                    bool(self.args.local), self.args.profile, self.args.region, progress=bar)
            finally:
                if bar is not None:
                    bar.finish()
            self._aws_key, self._unsubscribe = key, None
        self._log_calls(bool(self.args.verbose))
        return self._aws

    def _log_calls(self, on: bool) -> None:
        if on and self._unsubscribe is None:
            self._unsubscribe = self._aws.on_call(lambda svc, op: self.say(f"aws: {svc}:{op}"))
        elif not on and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def manager(self, progress=None):
        from ..cluster import ClusterManager
        return ClusterManager(self.aws, progress=progress)

    def cluster_name(self) -> str:
        """-c NAME, else the only cluster, else the last one used. A getter: it changes
        nothing (run.execute remembers a -c NAME once the command has succeeded)."""
        if self.args.cluster:
            return validate_name(self.args.cluster)
        names = [s.name for s in self.manager().list_clusters()]
        if len(names) == 1:
            return names[0]
        last = userdirs.last_cluster()
        if last in names:
            return last
        if not names:
            raise UserError("there is no cluster yet", "create one with: ec2mpi create NAME")
        raise UserError(
            f"{len(names)} clusters exist ({', '.join(sorted(names))}) and none was chosen",
            "pass -c NAME, or run: ec2mpi use NAME",
        )
