"""Pure formatting of command results: human tables for the terminal, plain data for --json.

Kept free of I/O and AWS so both faces show the same thing and tests need no cloud.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt


def to_data(obj):
    """Dataclasses (with tuples, nested) -> JSON-able dicts and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for prop in ("ready", "master"):  # ClusterStatus conveniences scripts want too
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


def format_status(st) -> str:
    """The `status` view: a one-line summary, then one row per node, master first."""
    cost = money(st.cost.per_hour) if st.cost else "?"
    head = (f"cluster {st.name}: {st.status}, {st.ready}/{len(st.nodes)} nodes ready "
            f"({lifecycle_mix(st.nodes)}), {cost}, storage {st.spec.storage}, epoch {st.epoch}")
    if not st.nodes:
        return head + "\n(no nodes)"
    rows = []
    for label, n in zip(node_labels(st.nodes), st.nodes):
        beat = "" if n.heartbeat_age is None else f"{n.heartbeat_age:.0f}s"
        rows.append([label, n.instance_id, n.instance_type, n.lifecycle, n.state, n.private_ip,
                     n.public_ip or "-", n.slots, beat])
    return head + "\n" + table(["NODE", "INSTANCE", "TYPE", "LIFECYCLE", "STATE", "PRIVATE IP",
                                "PUBLIC IP", "SLOTS", "HEARTBEAT"], rows)


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
