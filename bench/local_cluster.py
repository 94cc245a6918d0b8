"""Local-cloud benchmarks: how fast clusters come up and grow, and what MPI costs through ec2mpi.

Prints figures, asserts nothing about time (machines are noisy; compare within one run):
  1. create -> all nodes ready, for N = 4, 16, 32 (goal on a 2-core machine: 16 in < 10 s)
  2. add-nodes 8 -> the master's hostfile lists them
  3. ping-pong latency and bandwidth between two nodes through `ec2mpi ssh -- mpirun`
     next to a hand-written mpirun on the same nodes (ratio should be >= 0.9)

    sudo python bench/local_cluster.py [--sizes 4,16,32] [--rounds 3]
Needs root. Uses the machine's local cloud (starting it if needed).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from ec2mpi.cluster import ClusterManager
from ec2mpi.config import ClusterSpec
from ec2mpi.localcloud import control
from ec2mpi.localcloud.nodes import SUBNET

PINGPONG = [
    "python",
    "-m",
    "mpi4py.bench",
    "pingpong",
    "-a",
    "none",
    "-m",
    "8",
    "-n",
    "1048576",
    "-l",
    "300",
]


def manager(info):
    return ClusterManager(control.session(info))


def settle(timeout=120):
    """Wait until the local cloud has torn down every node: each part runs on a quiet cloud."""
    deadline = time.monotonic() + timeout
    while (control.status() or {}).get("nodes") and time.monotonic() < deadline:
        time.sleep(0.2)


def bench_create(info, sizes):
    print("\n## create -> all nodes ready")
    print(f"{'nodes':>6} {'ready after [s]':>16} {'per node [ms]':>14}")
    for n in sizes:
        mgr = manager(info)
        name = f"bench{n}"
        spec = ClusterSpec(
            name, nodes=n, storage="efs", ssh_cidr=SUBNET, instance_types=("c6i.large",)
        )
        t0 = time.monotonic()
        mgr.create(spec, wait=True, timeout=600)
        took = time.monotonic() - t0
        print(f"{n:>6} {took:>16.2f} {1000 * took / n:>14.0f}", flush=True)
        mgr.destroy(name)
        settle()


def bench_add(info):
    print("\n## add-nodes 8 -> master hostfile lists them")
    mgr = manager(info)
    name = "benchadd"
    mgr.create(
        ClusterSpec(name, nodes=4, storage="none", ssh_cidr=SUBNET, instance_types=("c6i.large",))
    )
    t0 = time.monotonic()
    mgr.add_nodes(name, 8, wait=False)
    launched = time.monotonic() - t0
    master = mgr.status(name, with_cost=False).master.instance_id
    hostfile = Path(info.state_dir, "nodes", master, "etc", "hostfile")
    while len(hostfile.read_text().splitlines()) < 12:
        if time.monotonic() - t0 > 300:
            print("hostfile did not reach 12 hosts in 300 s")
            break
        time.sleep(0.1)
    print(
        f"launch call returned after {launched:.2f} s; hostfile lists 12 hosts after "
        f"{time.monotonic() - t0:.2f} s"
    )
    mgr.destroy(name)
    settle()


def parse_pingpong(text):
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit() and parts[2] == "|":
            rows[int(parts[0])] = (float(parts[1]), float(parts[3]))
    return rows


def bench_pingpong(info, rounds):
    print("\n## ping-pong between two nodes: ec2mpi-launched mpirun vs hand-written mpirun")
    mgr = manager(info)
    name = "benchpp"
    mgr.create(
        ClusterSpec(name, nodes=2, storage="none", ssh_cidr=SUBNET, instance_types=("c6i.large",))
    )
    try:
        st = mgr.status(name)
        ips = [n.private_ip for n in st.nodes]
        master = st.master.instance_id
        anchor = Path(info.state_dir, "nodes", master, "anchor.pid").read_text().strip()
        via_ec2mpi = [
            "ec2mpi",
            "--local",
            "ssh",
            "-c",
            name,
            "--",
            "mpirun",
            "-np",
            "2",
            "--map-by",
            "node",
            *PINGPONG,
        ]
        by_hand = [
            "nsenter",
            "-t",
            anchor,
            "-n",
            "-u",
            "-m",
            "--",
            "su",
            "-",
            "ec2mpi",
            "-c",
            " ".join(
                [
                    "/opt/ec2mpi/venv/bin/mpirun",
                    "--bind-to",
                    "none",
                    "--host",
                    f"{ips[0]}:1,{ips[1]}:1",
                    "-np",
                    "2",
                    "/opt/ec2mpi/venv/bin/" + PINGPONG[0],
                    *PINGPONG[1:],
                ]
            ),
        ]
        results = {"ec2mpi": [], "by hand": []}
        for _ in range(rounds):  # interleaved, so drift hits both alike
            for label, cmd in (("ec2mpi", via_ec2mpi), ("by hand", by_hand)):
                out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
                rows = parse_pingpong(out.stdout)
                if not rows:
                    print(f"{label}: no output\n{out.stdout[-500:]}\n{out.stderr[-500:]}")
                    continue
                results[label].append(rows)
        def med(label, size, col):
            return statistics.median(r[size][col] for r in results[label] if size in r)
        print(f"{'':>10} {'latency 8 B [us]':>18} {'bandwidth 1 MiB [MB/s]':>24}")
        for label, rows in results.items():
            if rows:
                print(
                    f"{label:>10} {1e6 * med(label, 8, 1):>18.1f} {med(label, 1048576, 0):>24.1f}"
                )
        if results["ec2mpi"] and results["by hand"]:
            lat = med("by hand", 8, 1) / med("ec2mpi", 8, 1)
            bw = med("ec2mpi", 1048576, 0) / med("by hand", 1048576, 0)
            print(
                f"ratio ec2mpi/by hand (higher is better, 1.0 = same): latency {lat:.2f}, "
                f"bandwidth {bw:.2f}"
                f"  (medians of {rounds} interleaved rounds)"
            )
    finally:
        mgr.destroy(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,16,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: create,add,pingpong")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/local_cluster.py needs root (the local cloud makes namespaces)")
    t0 = time.monotonic()
    info = control.ensure_up(lambda done, total, m: print(f"# {m}", flush=True))
    print(
        f"# local cloud up in {time.monotonic() - t0:.1f} s at {info.endpoint}; {os.cpu_count()} "
        "cores"
    )
    skip = set(args.skip.split(","))
    if "create" not in skip:
        bench_create(info, [int(s) for s in args.sizes.split(",")])
    if "add" not in skip:
        bench_add(info)
    if "pingpong" not in skip:
        bench_pingpong(info, args.rounds)


if __name__ == "__main__":
    main()
