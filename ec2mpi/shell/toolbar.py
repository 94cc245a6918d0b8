"""The shell's prompt and bottom toolbar, drawn from the LiveState snapshot only."""
from __future__ import annotations

import time

from .. import output


def prompt_fragments(state, local: bool):
    where = "local" if local else "aws"
    cluster = state.current or "no cluster"
    return [("class:prompt.app", "ec2mpi"), ("class:prompt.where", f" ({where})"),
            ("class:prompt.cluster", f" {cluster}"), ("class:prompt", "> ")]


def toolbar_text(state, now: float | None = None) -> str:
    """' demo: 3/4 ready | 2 spot, 2 on-demand | $0.136/h | 5s ago ' or why it is unknown."""
    now = now or time.time()
    if state.updated is None and state.error is None:
        return " loading cluster state... | help: commands | Ctrl-D: leave"
    st = state.status
    if st is None:
        text = (
            f" {state.error}"
            if state.error
            else " no cluster selected: 'create NAME' or 'use NAME'"
        )
        return text + " | help: commands | Ctrl-D: leave"
    cost = output.money(st.cost.per_hour) if st.cost else "$?/h"
    age = "" if state.updated is None else f" | {int(now - state.updated)}s ago"
    stale = f" | refresh failed: {state.error}" if state.error else ""
    if st.stopped:
        return (f" {st.name}: {output.stopped_text(st.master_state)} | 'resize N' brings it "
                f"back{age}{stale}")
    autostop = output.autostop_text(st.master_state, now).lstrip(", ")
    return (
        f" {st.name}: {st.status}, {st.ready}/{len(st.nodes)} ready | "
        f"{output.lifecycle_mix(st.nodes)}"
        f" | {cost}{' | ' + autostop if autostop else ''}{age}{stale}"
    )
