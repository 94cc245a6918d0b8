"""The interactive face: a prompt_toolkit app split into app (the loop), completer, dialog,
keys, state (the live snapshot), style and toolbar."""
from .app import Shell, main

__all__ = ["Shell", "main"]
