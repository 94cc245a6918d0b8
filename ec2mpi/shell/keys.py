"""Key bindings of the shell. prompt_toolkit already gives Ctrl-C (cancel the line) and
Ctrl-D (leave, on an empty line); we add F1 for help and a Tab that never loses a keypress.

Why our own Tab: with complete-while-typing, a completion for the text typed so far may
still be running when Tab arrives, and prompt_toolkit then drops Tab's request (one
completion at a time). Our completer only reads a snapshot, so Tab asks it directly.
"""
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.completion.base import get_common_complete_suffix
from prompt_toolkit.key_binding import KeyBindings


def complete(buffer) -> None:
    """Tab: one candidate -> take it; several -> insert their common part, else cycle."""
    state = buffer.complete_state
    if state is not None and state.completions:
        if len(state.completions) == 1:
            buffer.apply_completion(state.completions[0])
        else:
            buffer.complete_next()
        return
    if buffer.completer is None:
        return
    found = list(buffer.completer.get_completions(buffer.document,
                                                  CompleteEvent(completion_requested=True)))
    if len(found) == 1:
        buffer.apply_completion(found[0])
    elif found:
        common = get_common_complete_suffix(buffer.document, found)
        if common:
            buffer.insert_text(common)
        else:
            buffer.start_completion(select_first=False)


def shell_key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("f1")
    def _help(event):
        event.current_buffer.text = "help"
        event.current_buffer.validate_and_handle()

    @kb.add("tab")
    def _tab(event):
        complete(event.current_buffer)

    return kb
