"""Local-cloud benchmarks: how fast clusters come up and grow, and what MPI costs through ec2mpi.

Prints figures, asserts nothing about time (machines are noisy; compare within one run):
  1. create -> all nodes ready, for N = 4, 16, 32, 64 (goals on a 2-core machine: 32 in
     < 10 s, 64 in < 20 s), with each size's per-node cost split, read from the real logs:
     the daemon's (it picked the instance up; the node's namespace and sshd are up), the node
     directory's files (namespace ready, the agent service's pid file) and the agent's own
     log (boot started, registered as booting, ready, warnings); plus the client's registry
     reads while waiting, and how busy the machine's cores were (all processes)
  2. the agent's start-up on the node image: `ec2mpi-agent --version` (what the user-data
     stub runs) and `python -X importtime` of the agent's entry module and of its boot path;
     and the keys a boot fetches (API calls of the very KeyStore.get_keys the agent runs)
  3. add-nodes 8 -> the master's hostfile lists them
  4. ping-pong latency and bandwidth between two nodes through `ec2mpi ssh -- mpirun`
     next to a hand-written mpirun on the same nodes (ratio should be >= 0.9)

    sudo python bench/local_cluster.py [--sizes 4,16,32,64] [--rounds 3]
        [--skip create,agent,add,pingpong]
Needs root. Uses the machine's local cloud (starting it if needed).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from ec2mpi.aws.keystore import KeyStore
from ec2mpi.aws.session import CallCounter
from ec2mpi.cluster import ClusterManager
from ec2mpi.config import ClusterSpec
from ec2mpi.localcloud import control
from ec2mpi.localcloud.image import VENV, image_dir, in_image
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


# -- the per-node cost split, from the logs ---------------------------------------------
# (phase, from, to): the marks of one node, in the order a node passes them
PHASES = [
    ("queue", "picked", "dir"),            # the daemon saw the instance -> a pool worker took it
    ("namespace", "dir", "namespace"),     # node dir, host key, veth, netns, mounts (anchor)
    ("sshd", "namespace", "up"),           # sshd started in the node, user-data launched
    ("user-data", "up", "service"),        # the stub: firewall rule, agent --version, agent.json
    ("agent start", "service", "boot"),    # python + the agent's imports + IMDS identity
    ("registry", "boot", "registered"),    # role ids read, own item put (booting), epoch bumped
    ("boot steps", "registered", "ready"),  # keys GET, user, sshd reload, storage, env, ready put
]
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def log_time(line):
    """The local time of a logging line (`%(asctime)s`, ms) as a Unix time, or None."""
    m = LOG_TIME.match(line)
    if not m:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def daemon_marks(state, since):
    """instance id -> {mark: time} from the daemon's log: 'picked' (its node runner saw the
    instance: 'starting node') and 'up' (namespace and sshd made, user-data launched)."""
    out = {}
    try:
        lines = Path(state, "daemon.log").read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.search(r"(starting node|node) (i-[0-9a-f]+) (at|up in) ", line)
        t = log_time(line)
        if m and t is not None and t >= since - 1:
            out.setdefault(m.group(2), {})["picked" if m.group(3) == "at" else "up"] = t
    return out


def node_marks(state, iid, daemon):
    """When one node passed each mark (Unix times; a missing mark is left out)."""
    node = Path(state, "nodes", iid)
    marks = dict(daemon)
    for mark, rel in (("dir", "user-data"), ("namespace", "anchor.ready"),
                      ("service", "run/agent.pid")):
        try:
            marks[mark] = (node / rel).stat().st_mtime
        except OSError:
            pass
    try:
        lines = (node / "log" / "agent.log").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        t = log_time(line)
        if t is None:
            continue
        if " WARNING " in line or " ERROR " in line:   # retries: registration, boot
            marks.setdefault("problems", []).append(f"{iid}: {line[24:].strip()[:150]}")
        if " INFO boot i-" in line:
            marks.setdefault("boot", t)
        elif " INFO registered as " in line:
            marks.setdefault("registered", t)
        elif line.endswith(" INFO ready"):
            marks.setdefault("ready", t)
    return {k: v for k, v in marks.items() if v is not None}


def cost_split(state, ids, t0_wall, fleet=None):
    """Per phase: (median, max) over the nodes, in seconds; plus the timeline's ends."""
    daemon = daemon_marks(state, t0_wall)
    marks = [node_marks(state, iid, daemon.get(iid, {})) for iid in ids]
    split = {"problems": [p for m in marks for p in m.pop("problems", [])]}
    for phase, a, b in PHASES:
        d = [m[b] - m[a] for m in marks if a in m and b in m]
        if d:
            split[phase] = (statistics.median(d), max(d), len(d))
    ends = {
        "CreateFleet": fleet,
        "first pick-up": min((m["picked"] for m in marks if "picked" in m), default=None),
        "last pick-up": max((m["picked"] for m in marks if "picked" in m), default=None),
        "first ready": min((m["ready"] for m in marks if "ready" in m), default=None),
        "last ready": max((m["ready"] for m in marks if "ready" in m), default=None),
    }
    return split, {k: v - t0_wall for k, v in ends.items() if v is not None}


def cpu_times():
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class RegistryReads:
    """Latency of the client's DynamoDB calls while it waits (botocore's call events)."""

    def __init__(self, aws):
        self.times, self._local = {}, threading.local()
        events = aws.client("dynamodb").meta.events
        events.register("before-call.dynamodb.*", self._before)
        events.register("after-call.dynamodb.*", self._after)

    def _before(self, model=None, **_):
        self._local.t = time.monotonic()

    def _after(self, model=None, **_):
        t = getattr(self._local, "t", None)
        if t is not None and model is not None:
            self.times.setdefault(model.name, []).append(time.monotonic() - t)


def bench_create(info, sizes, timeout=600, image="baked"):
    from ec2mpi.localcloud.image import find_image
    print(f"\n## create -> all nodes ready (image: {image})")
    splits = []
    for n in sizes:
        aws = control.session(info)
        mgr = ClusterManager(aws)
        reads = RegistryReads(aws)
        fleet = []
        aws.on_call(lambda service, op, fleet=fleet:
                    fleet.append(time.time()) if op == "CreateFleet" else None)
        name = f"bench{n}"
        spec = ClusterSpec(
            name, nodes=n, storage="efs", ssh_cidr=SUBNET, instance_types=("c6i.large",),
            image_id=find_image(aws.client("ec2"), image),
        )
        busy0, total0 = cpu_times()
        t0_wall, t0 = time.time(), time.monotonic()
        st = mgr.create(spec, wait=True, timeout=timeout)
        took = time.monotonic() - t0
        busy1, total1 = cpu_times()
        ids = [node.instance_id for node in st.nodes]
        split, ends = cost_split(info.state_dir, ids, t0_wall, fleet[0] if fleet else None)
        query = reads.times.get("Query", [])
        splits.append((n, took, split, ends, (busy1 - busy0) / max(1, total1 - total0), query))
        installs = [node.install_s for node in mgr.status(name, with_cost=False).nodes]
        print(f"{n:>4} nodes ready after {took:6.2f} s ({1000 * took / n:4.0f} ms per node)"
              + (f"; install at boot {statistics.median(installs):.0f} s median, "
                 f"{max(installs):.0f} s max" if any(installs) else ""), flush=True)
        if n == sizes[-1]:
            bench_keys(info, mgr, name, ids[0])
        mgr.destroy(name)
        settle()
    print("\n## per-node cost split (seconds; median / max over the nodes of each size)")
    print(f"{'phase':<12}" + "".join(f"{f'N={n}':>16}" for n, *_ in splits))
    for phase, *_ in PHASES:
        cells = [f"{s[phase][0]:7.2f} / {s[phase][1]:5.2f}" if phase in s else f"{'-':>15}"
                 for _, _, s, _, _, _ in splits]
        print(f"{phase:<12}" + "".join(f"{c:>16}" for c in cells))
    print("timeline (s after create started):")
    for key in ("CreateFleet", "first pick-up", "last pick-up", "first ready", "last ready"):
        print(f"  {key:<12}" + "".join(
            f"{e[key]:>16.2f}" if key in e else f"{'-':>16}" for _, _, _, e, _, _ in splits))
    print(f"  {'create done':<12}" + "".join(f"{took:>16.2f}" for _, took, *_ in splits))
    print("cores busy   " + "".join(f"{100 * busy:>15.0f}%" for *_, busy, _ in splits))
    print("agent log WARNING/ERROR lines" + "".join(
        f"{len(s['problems']):>8}" for _, _, s, *_ in splits))
    for n, _, s, *_ in splits:
        for line in s["problems"][:3]:
            print(f"  N={n} {line}")
    print("client registry Query while waiting [ms] (median / max / count):")
    print("             " + "".join(
        f"{1000 * statistics.median(q):>7.0f} /{1000 * max(q):>4.0f} /{len(q):>3}" if q else
        f"{'-':>16}" for *_, q in splits))


def bench_keys(info, mgr, name, iid):
    """A boot fetches the cluster's keys as ONE object: count the calls of the very method
    the agent runs (KeyStore.get_keys), with the node's own parameters."""
    params = json.loads(Path(info.state_dir, "nodes", iid, "etc", "agent.json").read_text())
    aws = control.session(info)
    counter = CallCounter(aws)
    KeyStore(aws, bucket=params["bucket"], owner=params.get("account") or None).get_keys(name)
    counter.close()
    print(f"keys: one boot's KeyStore.get_keys makes {counter.calls} "
          f"(owner from agent.json: {'yes' if params.get('account') else 'no, + STS'})")


def bench_agent(info, rounds=5):
    """The agent's start-up on the node image, on a quiet cloud: medians of `rounds` runs."""
    print(f"\n## agent start-up on the node image (medians of {rounds} runs)")
    image = image_dir(Path(info.state_dir))
    py = f"{VENV}/bin/python"

    def wall(*cmd):
        t = time.monotonic()
        subprocess.run(in_image(image, *cmd), check=True, capture_output=True)
        return time.monotonic() - t

    def importtime(module):
        """(cumulative us of `module`, its largest direct imports as [(us, name)])."""
        out = subprocess.run(in_image(image, py, "-X", "importtime", "-c", f"import {module}"),
                             check=True, capture_output=True, text=True).stderr
        children = []
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) != 3 or not parts[1].strip().isdigit():
                continue
            name, us = parts[2].rstrip(), int(parts[1])
            level = (len(name) - len(name.lstrip()) - 1) // 2
            if level == 0 and name.strip() == module:
                return us, sorted(children, reverse=True)[:4]
            if level == 0:
                children = []
            elif level == 1:
                children.append((us, name.strip()))
        return 0, []

    base = statistics.median(wall(py, "-c", "pass") for _ in range(rounds))
    version = statistics.median(wall(f"{VENV}/bin/ec2mpi-agent", "--version")
                                for _ in range(rounds))
    clients = statistics.median(wall(py, "-c", (
        "import ec2mpi.agent.boot; from ec2mpi.aws.node_session import NodeSession; "
        "a = NodeSession(region='us-east-1'); a.client('dynamodb'); a.client('s3')"))
        for _ in range(rounds))
    print(f"python -c pass: {base:.3f} s; ec2mpi-agent --version: {version:.3f} s; "
          f"import boot path + dynamodb and s3 clients: {clients:.3f} s")
    for module in ("ec2mpi.agent.main", "ec2mpi.agent.boot"):
        runs = [importtime(module) for _ in range(rounds)]
        med = statistics.median(us for us, _ in runs)
        top = ", ".join(f"{m} {us / 1000:.0f}" for us, m in runs[-1][1])
        print(f"-X importtime {module}: {med / 1000:.0f} ms cumulative (largest: {top} ms)")


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
    ap.add_argument("--sizes", default="4,16,32,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600, help="seconds a create may take")
    ap.add_argument("--image", default="baked", choices=("baked", "stock"),
                    help="the local image the nodes boot from (stock: every install at boot)")
    ap.add_argument("--skip", default="",
                    help="comma list of parts to skip: create,agent,add,pingpong")
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
        bench_create(info, [int(s) for s in args.sizes.split(",")], args.timeout, args.image)
    if "agent" not in skip:
        bench_agent(info)
    if "add" not in skip:
        bench_add(info)
    if "pingpong" not in skip:
        bench_pingpong(info, args.rounds)


if __name__ == "__main__":
    main()
