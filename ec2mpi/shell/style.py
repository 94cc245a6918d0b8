"""Colours of the shell (prompt_toolkit style classes)."""
from prompt_toolkit.styles import Style

STYLE = Style.from_dict({
    "prompt.app": "bold ansigreen",
    "prompt.where": "ansigray",
    "prompt.cluster": "bold ansicyan",
    "prompt": "",
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    "completion-menu.completion.current": "bg:ansicyan ansiblack",
})
