"""Handler of `check` (and of `create --check`): an MPI check across every ready node.

It runs as a job on the master (`ec2mpi-agent job submit`, like `ec2mpi run`), so it is
supervised, listed by `jobs`, and its output stays in the job's directory. The job is
`mpirun --map-by node -np NODES python -m ec2mpi.agent.check`: one rank per node, in the
hostfile's order. The client waits for it (`job attach`, bounded by --timeout), reads the one
result line, joins it with the registry (labels, instance ids, states) and applies the rule
of ec2mpi/agent/check.py. A ready node that is missing from the result is unreachable;
when the job gives no result at all, the master probes every ready node over SSH (what
mpirun needs) to say which.
"""
from __future__ import annotations

import json
import re
import shlex

from .. import output
from ..config import NODE_PREFIX
from ..errors import CloudError, UserError
from .access import _ready_link
from .context import Result

AGENT = "ec2mpi-agent"
PROGRAM = (f"{NODE_PREFIX}/venv/bin/python", "-m", "ec2mpi.agent.check")
DEFAULT_TIMEOUT = 300.0

EPILOG = ("Measures each node against its ring neighbours at distance 1 and 2 (ping-pong "
          "latency and bandwidth per pair), runs an allreduce over every rank and reports each "
          "node's mpirun and mpi4py versions. The rule: a node's latency is the lowest of its "
          "pairs and its bandwidth the highest, and it is slow when its latency is over 2x the "
          "median or its bandwidth under 0.5x the median; so only a node slow with every peer "
          "is named, never the healthy neighbour of a slow one (this needs 3 nodes or more). "
          "Exit status 1 when a node is slow or unreachable. --drain-slow removes slow workers "
          "(drained from the hostfile, then terminated); with keep-size the master launches "
          "replacements. It runs as a job: 'ec2mpi jobs' lists it.")


def cmd_check(ctx, a) -> Result:
    name = ctx.cluster_name()
    if a.drain_slow and not getattr(ctx.args, "yes", False) and not ctx.can_ask:
        raise UserError("check --drain-slow terminates slow nodes and needs confirmation",
                        "pass --yes to confirm in scripts")
    result = run_check(ctx, name, timeout=a.timeout or DEFAULT_TIMEOUT)
    if a.drain_slow:
        result = drain_slow(ctx, name, result)
    return result


def after_create(ctx, name: str, created: Result) -> Result:
    """`create --check`: the check of the new cluster; its exit status is create's."""
    checked = run_check(ctx, name, timeout=DEFAULT_TIMEOUT)
    data = {**(created.data or {}), "check": checked.data}
    return Result(data, f"{created.text}\n\n{checked.text}", status=checked.status)


# -- running it on the master -------------------------------------------------------------------
def run_check(ctx, name: str, timeout: float) -> Result:
    from .. import remote
    mgr = ctx.manager()
    status = mgr.status(name, with_cost=False)
    link, master = _ready_link(ctx, status, None)
    ready = [n for n in status.nodes if n.state == "ready"]
    program = [*PROGRAM, "--parallel", "1" if ctx.args.local else "0"]
    submit = [AGENT, "job", "submit", "--np", str(len(ready)), "--", "--map-by", "node",
              *program]
    client, closers = remote.connect_link(link, master, status.spec.user, mgr.keys(name))
    job_id, timed_out = None, False
    try:
        code, out, err = remote.capture(client, shlex.join(submit))
        try:
            job_id = str(json.loads(out.strip().splitlines()[-1])["id"])
        except (ValueError, IndexError, KeyError, TypeError):
            raise CloudError(f"the master could not start the check: "
                             f"{(err or out).strip()[-300:] or f'exit status {code}'}",
                             f"see the master's job log: ec2mpi logs master -c {name}") from None
        ctx.say(f"ec2mpi: checking {len(ready)} node(s) of {name} (job {job_id})")
        code, out, err = remote.capture(
            client, f"timeout {max(1, int(timeout))} {AGENT} job attach {job_id}")
        if code == 124:
            timed_out = True
            remote.capture(client, f"{AGENT} job cancel {job_id}")
        probe = {} if _result(out) else _probe(remote, client, ready)
    except KeyboardInterrupt:
        if job_id is not None:
            try:
                remote.capture(client, f"{AGENT} job cancel {job_id}")
            except Exception:  # noqa: BLE001, S110 - the interrupt is what the user sees
                pass
        raise
    finally:
        for c in closers:
            c.close()
    return report(name, status, job_id, out + err, timeout if timed_out else None, probe)


def _result(text: str) -> dict | None:
    from ..agent.check import MARK
    for line in reversed(text.splitlines()):
        if line.startswith(MARK):
            try:
                return json.loads(line[len(MARK):])
            except ValueError:
                return None
    return None


def _probe(remote, client, nodes) -> dict:
    """IP -> True when the master can log in to it over SSH (what mpirun does first)."""
    ips = [n.private_ip for n in nodes]
    script = "; ".join(
        f"(timeout 15 ssh -o BatchMode=yes -o ConnectTimeout=10 {shlex.quote(ip)} true "
        f">/dev/null 2>&1 && echo ok {shlex.quote(ip)} || echo no {shlex.quote(ip)}) &"
        for ip in ips) + "; wait"
    _, out, _ = remote.capture(client, script)
    said = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            said[parts[1]] = parts[0]
    return {ip: said.get(ip) == "ok" for ip in ips}


# -- the report ---------------------------------------------------------------------------------
def report(name: str, status, job_id, text: str, timed_out: float | None,
           probe: dict) -> Result:
    from ..agent import check as prog
    result = _result(text)
    labels = dict(zip((n.instance_id for n in status.nodes), output.node_labels(status.nodes)))
    measured = result["nodes"] if result else []
    figures = prog.node_figures(len(measured), result["pairs"]) if result else []
    verdict = prog.judge(figures) if result else {"nodes": [], "median_latency_us": None,
                                                  "median_bandwidth_mib_s": None}
    index = {}
    for i, m in enumerate(measured):
        index[m.get("instance_id") or m.get("ip")] = i
    rows, nodes = [], []
    for node in status.nodes:
        i = index.get(node.instance_id, index.get(node.private_ip))
        entry = {"instance_id": node.instance_id, "label": labels[node.instance_id],
                 "private_ip": node.private_ip, "state": node.state, "latency_us": None,
                 "bandwidth_mib_s": None, "slow": False, "unreachable": False, "reasons": [],
                 "peers": [], "mpirun": "", "mpi4py": "", "mpi_library": ""}
        if i is not None:
            f, v, m = figures[i], verdict["nodes"][i], measured[i]
            entry.update(latency_us=f["latency_us"], bandwidth_mib_s=f["bandwidth_mib_s"],
                         slow=v["slow"], reasons=v["reasons"],
                         peers=[measured[p].get("instance_id") for p in f["peers"]],
                         mpirun=m.get("mpirun", ""), mpi4py=m.get("mpi4py", ""),
                         mpi_library=m.get("mpi_library", ""))
        elif node.state == "ready":
            entry["unreachable"] = True
            entry["reasons"] = (["the master cannot log in to it over SSH"]
                                if probe.get(node.private_ip) is False else
                                ["no result from it"] if result else
                                ["the check gave no result (see below)"])
        else:
            entry["reasons"] = [f"not checked: {node.state}"
                                + (f" ({node.reason})" if node.reason else "")]
        nodes.append(entry)
        rows.append([entry["label"], node.instance_id, node.private_ip,
                     _fmt(entry["latency_us"], "{:.1f}"),
                     _fmt(entry["bandwidth_mib_s"], "{:.1f}"), len(entry["peers"]) or "-",
                     _version(entry["mpirun"]), entry["mpi4py"] or "-", _verdict(entry)])
    allreduce = (result or {}).get("allreduce")
    bad = [n for n in nodes if n["slow"] or n["unreachable"]]
    failed = bool(bad) or not result or not (allreduce or {}).get("ok")
    lines = [output.table(["NODE", "INSTANCE", "PRIVATE IP", "LATENCY_US", "BANDWIDTH_MIB_S",
                           "PEERS", "MPIRUN", "MPI4PY", "RESULT"], rows)]
    if result:
        lines.append(f"allreduce over {allreduce['ranks']} ranks: "
                     f"{'OK' if allreduce['ok'] else 'WRONG'} ({allreduce['us']:.0f} us); "
                     f"{len(result['pairs'])} pair(s) measured in {result['seconds']} s")
        med_lat, med_bw = verdict["median_latency_us"], verdict["median_bandwidth_mib_s"]
        if med_lat is not None:
            lines.append(f"median: latency {med_lat:.1f} us, bandwidth {med_bw:.1f} MiB/s; rule: "
                         f"{prog.RULE}")
        if len(measured) == 2:
            lines.append("with 2 nodes there is one pair: a slow link cannot be pinned on "
                         "either node")
        mpiruns = {n["mpirun"] for n in nodes if n["mpirun"]}
        if len(mpiruns) > 1 or len({n["mpi4py"] for n in nodes if n["mpi4py"]}) > 1:
            lines.append("versions differ across nodes: "
                         + "; ".join(f"{n['label']} {n['mpirun']}, mpi4py {n['mpi4py']}"
                                     for n in nodes if n["mpirun"]))
    else:
        why = (f"did not finish within {timed_out:.0f} s (cancelled)" if timed_out
               else "gave no result")
        lines.append(f"the check (job {job_id}) {why}; its output ends with:")
        lines += [f"  {line}" for line in _tail(text)]
    lines.append(f"{name}: " + ("ok: no slow or unreachable node" if not failed else
                                f"{len([n for n in nodes if n['slow']])} slow, "
                                f"{len([n for n in nodes if n['unreachable']])} unreachable"
                                + ("" if (allreduce or {}).get("ok") else
                                   ", allreduce failed" if result else "")))
    data = {"cluster": name, "job": job_id, "ok": not failed, "nodes": nodes,
            "pairs": _pairs_by_id(result, measured), "allreduce": allreduce,
            "median_latency_us": verdict["median_latency_us"],
            "median_bandwidth_mib_s": verdict["median_bandwidth_mib_s"], "rule": prog.RULE,
            "seconds": (result or {}).get("seconds")}
    if not result:
        data["error"] = "\n".join(_tail(text))
    return Result(data, "\n".join(lines), status=1 if failed else 0)


def _pairs_by_id(result, measured) -> list:
    if not result:
        return []
    ids = [m.get("instance_id") or m.get("ip") for m in measured]
    return [{**p, "a": ids[p["a"]], "b": ids[p["b"]]} for p in result["pairs"]]


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _version(text: str) -> str:
    """'mpirun (Open MPI) 5.0.11' -> '5.0.11'."""
    found = re.search(r"\d+\.\d+(\.\d+)?\S*", text or "")
    return found.group(0) if found else (text or "-")


def _verdict(entry: dict) -> str:
    if entry["slow"]:
        return "SLOW: " + "; ".join(entry["reasons"])
    if entry["unreachable"]:
        return "UNREACHABLE: " + "; ".join(entry["reasons"])
    if entry["reasons"]:
        return "; ".join(entry["reasons"])
    return "ok"


def _tail(text: str, lines: int = 8) -> list:
    from ..mpidefaults import KNOWN_NOISE
    kept = [line for line in text.splitlines()
            if line.strip() and not any(re.match(p, line) for p in KNOWN_NOISE)]
    return kept[-lines:] or ["(no output)"]


# -- --drain-slow -------------------------------------------------------------------------------
def drain_slow(ctx, name: str, checked: Result) -> Result:
    """Remove the slow workers: drained (the master's hostfile drops them), terminated and
    deregistered. With keep-size the target stays, so the master launches replacements;
    without it the target shrinks with them. The master is never removed."""
    from ..cluster.resize import remove
    slow = [n for n in (checked.data or {}).get("nodes", []) if n["slow"]]
    workers = [n for n in slow if n["label"] != "master"]
    notes = []
    if len(workers) < len(slow):
        notes.append("the master is slow but is not drained (it runs healing and the jobs)")
    drained: list = []
    if workers:
        mgr = ctx.manager()
        keep = mgr.status(name, with_cost=False).spec.keeps_size
        what = ", ".join(f"{n['label']} ({n['instance_id']})" for n in workers)
        then = ("the master then launches as many new nodes (keep-size)" if keep
                else "the cluster shrinks by as many (no keep-size)")
        if ctx.confirm(f"drain and terminate {len(workers)} slow node(s) of {name}: {what}; "
                       f"{then}?"):
            bar = ctx.progress(f"drain {name}")
            try:
                mgr = ctx.manager(progress=bar)
                plan = mgr.plan_removal(name, instance_ids=[n["instance_id"] for n in workers])
                drained = remove(mgr.ops, plan, lower_target=not keep)
            finally:
                bar.finish()
            notes.append(f"drained {len(drained)} slow node(s): {', '.join(drained)}; " + (
                "the master launches replacements (keep-size); 'ec2mpi status' shows them"
                if keep else "not replaced (the cluster has no keep-size)"))
        else:
            notes.append("nothing drained")
    elif not slow:
        notes.append("no slow node to drain")
    data = {**(checked.data or {}), "drained": drained}
    return Result(data, "\n".join([checked.text or "", *notes]), status=checked.status)
