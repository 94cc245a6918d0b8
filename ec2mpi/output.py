"""Pure formatting of command results: human tables for the terminal, plain data for --json.

Kept free of I/O and AWS so both faces show the same thing and tests need no cloud.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time as _time


def to_data(obj):
    """Dataclasses (with tuples, nested) -> JSON-able dicts and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for prop in ("ready", "master", "stopped"):  # ClusterStatus conveniences for scripts
            if hasattr(type(obj), prop) and isinstance(getattr(type(obj), prop), property):
                value = getattr(obj, prop)
                data[prop] = value.instance_id if hasattr(value, "instance_id") else to_data(value)
        return data
    if isinstance(obj, dict):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_data(v) for v in obj]
    return obj


def table(headers, rows) -> str:
    """Left-aligned columns, two spaces apart; no trailing spaces."""
    rows = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [headers] + rows
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def money(per_hour) -> str:
    return "?" if per_hour is None else f"${per_hour:.3f}/h"


def node_labels(nodes) -> list[str]:
    """The short names used by ssh-config and the NODE argument: master, node-1, node-2..."""
    labels, k = [], 0
    for node in nodes:
        if node.role == "master":
            labels.append("master")
        else:
            k += 1
            labels.append(f"node-{k}")
    return labels


def lifecycle_mix(nodes) -> str:
    spot = sum(1 for n in nodes if n.lifecycle == "spot")
    ondemand = len(nodes) - spot
    parts = ([f"{spot} spot"] if spot else []) + ([f"{ondemand} on-demand"] if ondemand else [])
    return ", ".join(parts) or "no nodes"


def stopped_text(master_state: dict) -> str:
    since = master_state.get("idle_since") or master_state.get("stopped_at") or 0
    return "stopped (idle since " + _dt.datetime.fromtimestamp(since).strftime(
        "%Y-%m-%d %H:%M") + ")"


def autostop_text(master_state: dict, now: float | None = None) -> str:
    """', autostop in 12m' while idle, ', autostop after 1h idle' while busy, '' when off."""
    from .config import format_duration
    limit = int(master_state.get("autostop") or 0)
    if not limit:
        return ""
    since = float(master_state.get("idle_since") or 0)
    if since:
        left = max(0.0, limit - ((now or _time.time()) - since))
        return f", autostop in {format_duration(left)} (idle)"
    return f", autostop after {format_duration(limit)} idle"


def capacity_text(st, now: float | None = None) -> str:
    """Lines for `status` when capacity ran short: nodes missing to the target, and the
    (type, AZ, lifecycle) pools launches avoid for now. '' when there is nothing to say."""
    from .aws.instances import describe_pools
    from .aws.registry import avoided
    state = st.master_state or {}
    lines = []
    target = int(state.get("target") or 0)
    counted = sum(1 for n in st.nodes if n.state not in ("lost", "terminated", "draining",
                                                         "invalid"))
    if target > counted:
        lines.append(f"{counted} of {target} node(s) up; "
                     + ("the master keeps launching the rest (keep-size)"
                        if state.get("keep_size")
                        else f"add the rest with: ec2mpi resize {target} -c {st.name}"))
    now = _time.time() if now is None else now
    avoid = avoided(state, now)
    if avoid:
        left = max(avoid.values()) - now
        lines.append(f"capacity: avoiding {describe_pools(sorted(avoid))} for up to "
                     f"{max(1, round(left / 60))} more minute(s) (no capacity there)")
    return "".join("\n" + line for line in lines)


def format_launch(rep) -> str:
    """What a launch got when capacity ran short (create, add-nodes, resize): '' if all went
    as asked."""
    if rep is None or not rep.eventful:
        return ""
    parts = []
    if rep.failed:
        parts.append(f"no capacity in {_failed_pools(rep.failed)}")
    if rep.on_demand:
        parts.append(f"{rep.on_demand} node(s) launched on-demand instead of spot "
                     "(--spot-fallback on-demand)")
    if rep.missing:
        parts.append(f"launched {rep.launched} of {rep.asked} node(s), {rep.missing} missing: "
                     + ("the master keeps trying for them (keep-size)" if rep.keeps_trying
                        else "add them later with add-nodes or resize"))
    if rep.per_hour is not None:
        parts.append(f"the cluster now costs {money(rep.per_hour)}")
    return "; ".join(parts)


def _failed_pools(failed) -> str:
    from .aws.instances import describe_pools
    return describe_pools([tuple(f[:3]) for f in failed])


def format_status(st) -> str:
    """The `status` view: a one-line summary, then one row per node, master first."""
    cost = money(st.cost.per_hour) if st.cost else "?"
    if st.stopped:
        month = "?" if st.storage_month is None else f"${st.storage_month:.2f}"
        head = (f"cluster {st.name}: {stopped_text(st.master_state)}; no nodes run, its "
                f"{st.spec.storage} storage still costs about {month}/month; bring it back "
                f"with: ec2mpi resize {st.spec.nodes} -c {st.name}")
        return head
    head = (f"cluster {st.name}: {st.status}, {st.ready}/{len(st.nodes)} nodes ready "
            f"({lifecycle_mix(st.nodes)}), {cost}, storage {st.spec.storage}, epoch {st.epoch}"
            f"{autostop_text(st.master_state)}")
    head += capacity_text(st)
    if not st.nodes:
        return head + "\n(no nodes)"
    rows = []
    for label, n in zip(node_labels(st.nodes), st.nodes):
        beat = "" if n.heartbeat_age is None else f"{n.heartbeat_age:.0f}s"
        rows.append([label, n.instance_id, n.instance_type, n.lifecycle, n.state, n.private_ip,
                     n.public_ip or "-", n.slots, beat, n.image or "-", _install(n)])
    why = [f"{label} {n.instance_id} is {n.state}: {clean(n.reason)}"
           for label, n in zip(node_labels(st.nodes), st.nodes) if n.reason and n.state in (
               "lost", "draining", "failed")]
    return head + "\n" + table(["NODE", "INSTANCE", "TYPE", "LIFECYCLE", "STATE", "PRIVATE IP",
                                "PUBLIC IP", "SLOTS", "HEARTBEAT", "IMAGE", "INSTALLED"],
                               rows) + "".join(f"\n{line}" for line in why)


def _install(n) -> str:
    """Seconds the node's boot spent installing (stock image), '-' on a baked image."""
    return f"{n.install_s:.0f}s" if n.install_s else "-"


def clean(text: str) -> str:
    """A node-written text (a reason) made safe for a terminal: printable, one line, short."""
    return "".join(c if c.isprintable() else " " for c in str(text))[:200]


def format_list(summaries, current: str | None = None) -> str:
    if not summaries:
        return "no clusters (create one with: ec2mpi create NAME)"
    rows = []
    for s in summaries:
        created = (
            _dt.datetime.fromtimestamp(s.created).strftime("%Y-%m-%d %H:%M") if s.created else "-"
        )
        rows.append(
            [
                ("* " if s.name == current else "  ") + s.name,
                s.status,
                f"{s.ready}/{s.nodes}",
                created,
            ]
        )
    return table(["  NAME", "STATUS", "READY", "CREATED"], rows)


def format_cost(cost) -> str:
    lines = [f"{money(cost.per_hour)} for the whole cluster"
             + (f" ({cost.source})" if cost.source else "")]
    rows = []
    for line in cost.lines:
        rows.append([line.instance_type, line.count, line.lifecycle, money(line.unit),
                     money(line.per_hour)])
    if rows:
        lines.append(table(["TYPE", "COUNT", "LIFECYCLE", "EACH", "TOTAL"], rows))
    return "\n".join(lines)


def format_destroy(name: str, report) -> str:
    removed = sum(len(v) for v in report.removed.values())
    lines = [f"destroyed cluster {name}: removed {removed} resource(s)"]
    for kind, ids in sorted(report.removed.items()):
        if ids:
            lines.append(f"  {kind}: {', '.join(map(str, ids))}")
    if report.leftovers:
        lines.append(f"WARNING: could not remove: {', '.join(map(str, report.leftovers))}")
    return "\n".join(lines)


def progress_bar(done: int, total: int, message: str = "", width: int = 30) -> str:
    """'[#########.....]  3/8 message' — the text of one progress line; with total 0 (a step
    that is not counted, e.g. a note) just the message."""
    if total <= 0:
        return message
    frac = 1.0 if total == 0 else min(max(done / total, 0.0), 1.0)
    filled = round(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {message}".rstrip()
