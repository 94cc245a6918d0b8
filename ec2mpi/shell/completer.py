"""Completion for the shell, straight from the command table plus the live cluster state.

Commands, their options, option values and positionals each name a completion source
in commands.COMMANDS (clusters, nodes, instance_types, choices, files, commands).
"""
from __future__ import annotations

import shlex

from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from .. import catalog
from ..commands import COMMANDS, GLOBAL_ARGS


def _takes_value(arg) -> bool:
    return not arg.positional and arg.action is None


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an open quote: fall back to whitespace
        return text.split()


class CommandCompleter(Completer):
    def __init__(self, state):
        self.state = state
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event):
        text = document.text_before_cursor
        words = _split(text)
        word = "" if (not text or text[-1].isspace()) else (words.pop() if words else "")
        # find the command: the first word that is not a global option or its value
        command, i, options = None, 0, {f: a for a in GLOBAL_ARGS for f in a.flags}
        while i < len(words):
            w = words[i]
            if w in options:
                if _takes_value(options[w]) and i + 1 >= len(words):
                    yield from self._values(options[w], word, document)
                    return
                i += 2 if _takes_value(options[w]) else 1
                continue
            command = COMMANDS.get(w)
            i += 1
            break
        if command is None and i >= len(words):
            yield from self._words(
                word,
                list(COMMANDS) + [f for a in GLOBAL_ARGS for f in a.flags if f.startswith("--")],
                meta={n: c.help for n, c in COMMANDS.items()},
            )
            return
        if command is None:
            return
        args = command.args + GLOBAL_ARGS
        flags = {f: a for a in args if not a.positional for f in a.flags}
        rest = words[i:]
        if "--" in rest:
            return  # a remote command: nothing of ours to complete
        if rest and rest[-1] in flags and _takes_value(flags[rest[-1]]):
            yield from self._values(flags[rest[-1]], word, document)
            return
        if word.startswith("-"):
            yield from self._words(
                word,
                [f for a in args if not a.positional for f in a.flags if f.startswith("--")],
                meta={f: a.help for a in args for f in a.flags},
            )
            return
        # which positional is this? count the positionals already typed
        count, j = 0, 0
        while j < len(rest):
            if rest[j] in flags:
                j += 2 if _takes_value(flags[rest[j]]) else 1
                continue
            count, j = count + 1, j + 1
        positionals = [a for a in command.args if a.positional]
        if count < len(positionals):
            yield from self._values(positionals[count], word, document)

    # sources
    def _values(self, arg, word: str, document: Document):
        source = arg.complete
        if source == "clusters":
            yield from self._words(word, self.state.clusters)
        elif source == "nodes":
            yield from self._words(word, self.state.node_names())
        elif source == "commands":
            yield from self._words(word, list(COMMANDS))
        elif source == "choices" and arg.choices:
            yield from self._words(word, list(arg.choices))
        elif source == "instance_types":
            head, _, last = word.rpartition(",")
            prefix = head + "," if head else ""
            for t in sorted(catalog.INSTANCE_TYPES):
                if t.startswith(last):
                    yield Completion(prefix + t, start_position=-len(word), display=t,
                                     display_meta=catalog.describe(t))
        elif source == "files":
            sub = Document(word, len(word))
            yield from self.paths.get_completions(sub, None)

    @staticmethod
    def _words(word: str, candidates, meta=None):
        for c in candidates:
            if c.startswith(word):
                yield Completion(c, start_position=-len(word), display_meta=(meta or {}).get(c, ""))
