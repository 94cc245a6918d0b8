"""`ec2mpi check` on the nodes: an MPI program that measures every node against several peers,
and the one rule that names a slow node (used by the program's own report and by the client).

The client submits it as a job on the master (`ec2mpi-agent job submit --np NODES --
--map-by node PYTHON -m ec2mpi.agent.check`), so it runs under the job supervisor like any
`ec2mpi run`: one rank per node, in the hostfile's order (master first). It measures:
- an allreduce over all ranks (its result is verified);
- each node's `mpirun --version`, MPI library and mpi4py versions;
- ping-pong latency (8 bytes, the median round trip over the time budget, halved) and
  bandwidth (the best round trip of the largest message up to 1 MiB whose round trip fits
  an eighth of the budget, from 16 KiB up) for every pair of ring neighbours at distance 1
  and 2: each node has up to four peers (i-2, i-1, i+1, i+2).

Singling out a node, not a pair: in a ring one slow node spoils both pairs it is in, and
only those. A node's latency is therefore the LOWEST latency of its pairs and its bandwidth
the HIGHEST: a node scores badly only when it is slow with every peer it has, while a
healthy neighbour of a slow node keeps a good pair with its other peers. A node is slow when
its latency is over 2x the median of the nodes' latencies, or its bandwidth under 0.5x their
median. With two nodes there is one pair and nothing to single out (both score alike);
from three nodes on each node has two or more peers.

Pairs are measured in rounds (no rank in two pairs of a round); `--parallel K` caps the
pairs of a round (the local cloud uses 1: its nodes share the host's cores). Ranks not in a
pair wait in a sleeping loop, not in a spinning MPI call, so they leave the cores to the
pair being measured. Rank 0 prints a table and one line `EC2MPI-CHECK {json}`, which the
client reads from the job's output. The program exits 0 once it has measured: the verdict
is the client's exit status, so the job itself is `done`.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time

MARK = "EC2MPI-CHECK "
SLOW_LATENCY = 2.0        # slow: latency over this many times the median
SLOW_BANDWIDTH = 0.5      # slow: bandwidth under this fraction of the median
DISTANCES = (1, 2)        # ring neighbours measured on both sides
NODE_STATE = "/var/lib/ec2mpi/node.json"
RULE = (f"slow when a node's latency is over {SLOW_LATENCY:g}x the median or its bandwidth "
        f"under {SLOW_BANDWIDTH:g}x the median; a node's figures are its best pair among its "
        f"ring neighbours at distance {' and '.join(map(str, DISTANCES))} (up to "
        f"{2 * len(DISTANCES)} peers), so only a node slow with every peer is named")
MiB = 1024 * 1024


# -- the plan (pure: also used by the client and the tests) ---------------------------------
def ring_pairs(n: int, distances=DISTANCES) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of ring neighbours at the given distances, once."""
    pairs: list = []
    for d in distances:
        for i in range(n):
            j = (i + d) % n
            pair = (min(i, j), max(i, j))
            if i != j and pair not in pairs:
                pairs.append(pair)
    return pairs


def rounds(pairs, parallel: int = 0) -> list[list[tuple[int, int]]]:
    """Pairs grouped so that no rank is in two pairs of a round (at most `parallel` pairs a
    round when it is > 0), greedily, in order: every rank computes the same plan."""
    remaining, out = list(pairs), []
    while remaining:
        busy: set = set()
        this, rest = [], []
        for a, b in remaining:
            if a in busy or b in busy or (parallel and len(this) >= parallel):
                rest.append((a, b))
            else:
                this.append((a, b))
                busy |= {a, b}
        out.append(this)
        remaining = rest
    return out


# -- the rule ---------------------------------------------------------------------------------
def node_figures(n: int, pairs: list[dict]) -> list[dict]:
    """Per node: its best latency and bandwidth over its pairs, and its peers."""
    out = []
    for i in range(n):
        mine = [p for p in pairs if i in (p["a"], p["b"])]
        lat = [p["latency_us"] for p in mine if p.get("latency_us") is not None]
        bw = [p["bandwidth_mib_s"] for p in mine if p.get("bandwidth_mib_s") is not None]
        out.append({"latency_us": min(lat) if lat else None,
                    "bandwidth_mib_s": max(bw) if bw else None,
                    "peers": sorted({p["b"] if p["a"] == i else p["a"] for p in mine})})
    return out


def judge(figures: list[dict]) -> dict:
    """Apply the rule to node figures (dicts with latency_us, bandwidth_mib_s; None when not
    measured): the medians, and per node `slow` with the reasons."""
    lats = [f["latency_us"] for f in figures if f.get("latency_us") is not None]
    bws = [f["bandwidth_mib_s"] for f in figures if f.get("bandwidth_mib_s") is not None]
    med_lat = statistics.median(lats) if lats else None
    med_bw = statistics.median(bws) if bws else None
    verdicts = []
    for f in figures:
        reasons = []
        lat, bw = f.get("latency_us"), f.get("bandwidth_mib_s")
        if lat is not None and med_lat and lat > SLOW_LATENCY * med_lat:
            reasons.append(f"latency {lat:.0f} us > {SLOW_LATENCY:g}x median {med_lat:.0f} us")
        if bw is not None and med_bw and bw < SLOW_BANDWIDTH * med_bw:
            reasons.append(f"bandwidth {bw:.1f} MiB/s < {SLOW_BANDWIDTH:g}x median "
                           f"{med_bw:.1f} MiB/s")
        verdicts.append({"slow": bool(reasons), "reasons": reasons})
    return {"median_latency_us": med_lat, "median_bandwidth_mib_s": med_bw, "nodes": verdicts}


# -- on the node: who am I, what runs here ----------------------------------------------------
def identity() -> dict:
    me = {"host": socket.gethostname(), "instance_id": "", "ip": ""}
    try:
        with open(NODE_STATE) as fh:
            node = json.load(fh)
        me.update(instance_id=str(node.get("instance_id", "")), ip=str(node.get("private_ip", "")))
    except (OSError, ValueError):
        pass
    return me


def versions() -> dict:
    """This node's mpirun (the one on PATH, as a user's job finds it) and mpi4py."""
    import mpi4py
    out = {"mpi4py": mpi4py.__version__, "mpirun": ""}
    try:
        res = subprocess.run(["mpirun", "--version"], check=False, capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
        first = (res.stdout or res.stderr).strip().splitlines()
        out["mpirun"] = first[0].strip() if first else f"exit status {res.returncode}"
    except (OSError, subprocess.SubprocessError) as err:
        out["mpirun"] = f"not found ({err.__class__.__name__})"
    return out


# -- the measurements -------------------------------------------------------------------------
def _lazy_wait(request) -> None:
    """Wait for a non-blocking MPI request while sleeping: waiting ranks never spin."""
    while not request.Test():
        time.sleep(0.0005)


def _exchange(comm, peer: int, initiator: bool, buf, count: int, tag: int) -> list[float]:
    """`count` round trips of `buf`; the initiator's list of round-trip times (s)."""
    from mpi4py import MPI
    spec = [buf, MPI.BYTE]
    times = []
    for _ in range(count):
        if initiator:
            t = MPI.Wtime()
            comm.Send(spec, peer, tag)
            comm.Recv(spec, peer, tag)
            times.append(MPI.Wtime() - t)
        else:
            comm.Recv(spec, peer, tag)
            comm.Send(spec, peer, tag)
    return times


def measure_pair(comm, peer: int, initiator: bool, budget: float, max_bytes: int,
                 lat_bytes: int = 8, min_bw_bytes: int = 16 * 1024) -> dict | None:
    """Latency and bandwidth between this rank and `peer`. The initiator decides every step
    (how many round trips, which size) and tells its peer. Each figure takes about `budget`
    seconds on a healthy link, and a few round trips of `min_bw_bytes` on a slow one.
    Returns the figures on the initiator (None on the peer)."""
    tag = 77
    small = bytearray(lat_bytes)
    if not initiator:
        while True:
            step = comm.recv(source=peer, tag=tag)
            if step is None:
                return None
            size, count = step
            _exchange(comm, peer, False, bytearray(size) if size != lat_bytes else small, count,
                      tag)

    def run(size: int, count: int, buf=None) -> list[float]:
        comm.send((size, count), dest=peer, tag=tag)
        return _exchange(comm, peer, True, buf if buf is not None else bytearray(size), count, tag)

    from mpi4py import MPI
    run(lat_bytes, 5, small)            # warm up: the connection, the first touch
    times: list = []
    ends = MPI.Wtime() + budget         # by time, not by count: a link may slow down later
    while MPI.Wtime() < ends and len(times) < 2000:
        times += run(lat_bytes, 20, small)
    latency_us = statistics.median(times) / 2 * 1e6
    size = min_bw_bytes                 # the largest size whose round trip fits budget/8
    probe = min(run(size, 2))           # the best of two: a first touch or a hiccup is not it
    while probe < budget / 8 and size * 2 <= max_bytes:
        size *= 2
        probe = min(run(size, 2))
    times = run(size, 1 if probe > budget else max(3, min(50, int(budget / max(probe, 1e-7)))))
    bandwidth = 2 * size / min(times) / MiB     # the best round trip: noise only slows one
    comm.send(None, dest=peer, tag=tag)
    return {"latency_us": round(latency_us, 2), "bandwidth_mib_s": round(bandwidth, 2),
            "bandwidth_bytes": size, "round_trips": len(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ec2mpi.agent.check",
                                 description="ec2mpi's MPI check (one rank per node)")
    ap.add_argument("--parallel", type=int, default=0,
                    help="pairs measured at once (0: as many as the ring allows)")
    ap.add_argument("--budget", type=float, default=0.05,
                    help="seconds each figure of a pair may take, about (default 0.05)")
    ap.add_argument("--max-bytes", type=int, default=MiB,
                    help="largest bandwidth message (default 1 MiB)")
    ap.add_argument("--per-rank", action="store_true",
                    help="treat every rank as a node of its own (tests on one machine)")
    args = ap.parse_args(argv)
    mine = {**identity(), **versions()}         # before MPI starts: no fork in an MPI process

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    mine["mpi_library"] = MPI.Get_library_version().strip("\0 \n").splitlines()[0]
    started = MPI.Wtime()
    total = comm.allreduce(rank + 1, op=MPI.SUM)     # the first: connections are made here
    t = MPI.Wtime()
    again = comm.allreduce(rank + 1, op=MPI.SUM)
    allreduce = {"ranks": size, "ok": total == again == size * (size + 1) // 2,
                 "us": round((MPI.Wtime() - t) * 1e6, 1)}
    everyone = comm.allgather(mine)
    key = [(m["instance_id"] or m["host"]) + (f"#{r}" if args.per_rank else "")
           for r, m in enumerate(everyone)]
    leader = key.index(key[rank]) == rank     # one rank per node measures (the first)
    lead = comm.Split(0 if leader else MPI.UNDEFINED, rank)
    pairs: list = []
    if leader:
        n, me = lead.Get_size(), lead.Get_rank()
        for this in rounds(ring_pairs(n), args.parallel):
            for a, b in this:
                if me in (a, b):
                    got = measure_pair(lead, b if me == a else a, me == a, args.budget,
                                       args.max_bytes)
                    if got is not None:
                        pairs.append({"a": a, "b": b, **got})
            _lazy_wait(lead.Ibarrier())
        gathered = lead.gather(pairs, root=0)
        nodes = [everyone[r] for r in range(size) if key.index(key[r]) == r]
        lead.Free()
    _lazy_wait(comm.Ibarrier())
    if rank != 0:
        return 0
    pairs = sorted((p for part in gathered for p in part), key=lambda p: (p["a"], p["b"]))
    result = {"allreduce": allreduce, "nodes": nodes, "pairs": pairs, "rule": RULE,
              "parallel": args.parallel, "seconds": round(MPI.Wtime() - started, 2)}
    print(report(result), flush=True)
    print(MARK + json.dumps(result, sort_keys=True), flush=True)
    return 0


def report(result: dict) -> str:
    """The program's own table (in the job's output); the client prints its own, by node."""
    nodes = result["nodes"]
    figures = node_figures(len(nodes), result["pairs"])
    verdict = judge(figures)
    rows = ["RANK  HOST                LATENCY_US  BANDWIDTH_MIB_S  SLOW  MPIRUN / MPI4PY"]
    for i, (node, fig, v) in enumerate(zip(nodes, figures, verdict["nodes"])):
        lat = "-" if fig["latency_us"] is None else f"{fig['latency_us']:.1f}"
        bw = "-" if fig["bandwidth_mib_s"] is None else f"{fig['bandwidth_mib_s']:.1f}"
        rows.append(f"{i:<4}  {node['host'][:18]:<18}  {lat:>10}  {bw:>15}  "
                    f"{'yes' if v['slow'] else 'no':<4}  {node['mpirun']} / {node['mpi4py']}")
    a = result["allreduce"]
    rows.append(f"allreduce over {a['ranks']} ranks: {'OK' if a['ok'] else 'WRONG'} "
                f"({a['us']:.0f} us); {len(result['pairs'])} pairs in {result['seconds']} s")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
