"""Registry at scale: many agents register at once, then one membership change.

Against a control plane it starts itself (moto's server, loopback only, dummy
credentials). Prints figures only, never asserts on time:
  - registration throughput (agents/s; each agent = put booting + set ready, as boot does)
  - time from one membership change until the master's watcher rewrote its hostfile
  - registry requests per watcher per minute in steady state (master and worker)

usage: python bench/registry_scale.py [--agents 500] [--poll 2] [--steady 30] [--sessions 16]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

# Pin the environment before anything imports boto3: no real account, no metadata service.
for _var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
    os.environ.pop(_var, None)
os.environ.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})

from ec2mpi.agent.watch import Watcher
from ec2mpi.aws.registry import Node, Registry
from ec2mpi.aws.session import AwsSession, CallCounter
from ec2mpi.localcloud import controlplane

CLUSTER = "bench"


def ip(i: int) -> str:
    return f"172.31.{i // 250}.{i % 250 + 2}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--poll", type=float, default=2.0, help="watcher epoch poll interval (s)")
    ap.add_argument("--steady", type=float, default=30.0, help="steady-state window (s)")
    ap.add_argument(
        "--sessions", type=int, default=16, help="AWS sessions shared by the agent threads"
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ec2mpi-bench-"))
    cp = controlplane.start(tmp / "cp")
    try:
        def session() -> AwsSession:
            return AwsSession(region="us-east-1", endpoint_url=cp.endpoint, ca_bundle=cp.ca_path)

        admin = Registry(session())
        admin.ensure_table()
        admin.create_cluster(CLUSTER, "{}")
        admin.set_master(CLUSTER, "i-m0000")

        # the master registers first and starts watching, as on a real cluster
        master = Node("i-m0000", "master", ip(0), "master", 2, state="ready")
        admin.put_node(CLUSTER, master)
        msess, wsess = session(), session()
        mcount, wcount = CallCounter(msess), CallCounter(wsess)
        mwatch = Watcher(
            CLUSTER, master, Registry(msess), [tmp / "etc"], poll=args.poll, deregister=False
        )
        stop = threading.Event()
        threading.Thread(target=mwatch.run, args=(stop,), daemon=True).start()

        # N agents register concurrently (one thread each)
        pool = [Registry(session()) for _ in range(args.sessions)]
        start_gate = threading.Barrier(args.agents + 1)
        errors: list[Exception] = []

        def agent(i: int) -> None:
            reg = pool[i % len(pool)]
            start_gate.wait()
            try:
                iid = f"i-w{i:04d}"
                reg.put_node(CLUSTER, Node(iid, "worker", ip(i + 1), f"w{i}", 2))
                reg.set_node_state(CLUSTER, iid, "ready")
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(args.agents)]
        for t in threads:
            t.start()
        start_gate.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        reg_time = time.perf_counter() - t0
        hostfile = tmp / "etc" / "hostfile"
        expected_lines = args.agents + 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if hostfile.exists() and hostfile.read_text().count("\n") == expected_lines:
                break
            time.sleep(0.05)
        converged = time.perf_counter() - t0
        epoch = admin.epoch(CLUSTER)

        # a worker's watcher (no epoch polling: heartbeat only) for the steady-state figure
        worker = Node("i-w0000", "worker", ip(1), "w0", 2, state="ready")
        wwatch = Watcher(CLUSTER, worker, Registry(wsess), poll=args.poll, deregister=False)
        threading.Thread(target=wwatch.run, args=(stop,), daemon=True).start()

        # steady state: no membership change for --steady seconds
        time.sleep(0.5)
        m0, w0 = dict(mcount.calls), dict(wcount.calls)
        time.sleep(args.steady)
        m1, w1 = dict(mcount.calls), dict(wcount.calls)

        def per_min(after, before):
            return {
                k: (after.get(k, 0) - before.get(k, 0)) * 60 / args.steady
                for k in set(after) | set(before)
                if after.get(k, 0) - before.get(k, 0)
            }

        m_rate, w_rate = per_min(m1, m0), per_min(w1, w0)

        # one membership change: a worker drains; when does the master's hostfile drop it?
        writes = mwatch.hostfile_writes
        tc = time.time()
        victim = args.agents // 2
        admin.set_node_state(CLUSTER, f"i-w{victim:04d}", "draining")
        changed = time.time()
        while mwatch.hostfile_writes == writes and time.time() < changed + 60:
            time.sleep(0.005)
        follow = mwatch.last_write - tc
        dropped = f"{ip(victim + 1)} slots=2" not in hostfile.read_text().splitlines()
        stop.set()
        t1 = time.perf_counter()
        n_read = len(admin.nodes(CLUSTER))
        read_time = time.perf_counter() - t1

        print(
            f"agents:                          {args.agents} (threads over {args.sessions} AWS "
            "sessions), "
            f"poll {args.poll:g}s"
        )
        print(
            f"registration errors:             {len(errors)}"
            + (f" (first: {errors[0]})" if errors else "")
        )
        print(
            f"registration throughput:         {args.agents / reg_time:.1f} agents/s "
            f"({2 * args.agents / reg_time:.1f} membership transactions/s; {reg_time:.2f}s for all)"
        )
        print(f"epoch after registration:        {epoch} (expected {2 * args.agents + 1})")
        print(
            f"hostfile converged to {expected_lines} nodes: {converged:.2f}s after the first "
            "registration"
        )
        print(f"membership change -> hostfile:   {follow:.3f}s (node dropped: {dropped}; "
              f"poll interval {args.poll:g}s)")
        print(
            f"one full node-list read:         {read_time:.3f}s for {n_read} node items (paid "
            "only when the epoch moves)"
        )
        print(f"master watcher, steady state:    {sum(m_rate.values()):.1f} registry requests/min "
              + str({k: round(v, 1) for k, v in sorted(m_rate.items())}))
        print(f"worker watcher, steady state:    {sum(w_rate.values()):.1f} registry requests/min "
              + str({k: round(v, 1) for k, v in sorted(w_rate.items())}))
        print("  (independent of cluster size: the node list is read only when the epoch moves)")
    finally:
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
