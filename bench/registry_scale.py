"""Registry at scale: N agents boot at once, the master's hostfile follows, one leaves.

Against a control plane it starts itself (moto's server with the fidelity layer, loopback
only, dummy credentials), with the current registry and watcher code. Prints figures; the
last line is the summary (never asserts):

  setup (not timed)  the table and the cluster item as `create` writes them (spec, launch
                     token, role ids, master id, target), N+1 EC2 instances tagged with the
                     cluster (so the master's liveness check is the real DescribeInstances),
                     the master registered as boot does and watching as `run` does.
  registration       N agent threads (over --sessions AWS sessions) are released at once;
                     each does what boot does: cluster_roles, then boot.register booting,
                     then boot.register ready (its retries and backoff), then watches as a
                     worker does (a heartbeat every 15 s).
  converged_s        from the release until the master's hostfile lists all N+1 nodes.
  lost               registered agents whose item is missing or not ready at the end, or
                     missing from the master's hostfile, plus epoch bumps that went missing.
  master_req_per_min every request of the master's session (registry and EC2) over
                     --steady seconds with no membership change.
  change_to_hostfile one worker's agent stops (it deregisters, as on shutdown) until the
                     master's hostfile no longer lists it.

Not reproduced: what boot does between the two registrations (keys, sshd, storage) and the
IMDS spot-notice poll (local to a node, no registry request).

usage: python bench/registry_scale.py [--agents 1000] [--sessions 16] [--steady 20] [--poll S]
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

# Pin the environment before anything imports boto3: no real account, no metadata service.
for _var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
    os.environ.pop(_var, None)
os.environ.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})

from ec2mpi.agent.boot import cluster_roles, register
from ec2mpi.agent.heal import ClusterSource, Healer
from ec2mpi.agent.watch import Watcher, WatchSettings
from ec2mpi.aws.instances import Instance, Instances
from ec2mpi.aws.network import Network
from ec2mpi.aws.node_session import NodeSession
from ec2mpi.aws.registry import Node, Registry, node_pk
from ec2mpi.aws.session import AwsSession, CallCounter
from ec2mpi.aws.templates import Templates
from ec2mpi.config import MAX_NODES, TAG_ROLE, ClusterSpec, cluster_tags
from ec2mpi.localcloud import controlplane

CLUSTER = "bench"
REGION = "us-east-1"
ROLE_IDS = {"master": "AROABENCHMASTERROLE01", "worker": "AROABENCHWORKERROLE01"}
IMAGE = "ami-12c6146b"      # one of moto's stock images
SLOTS = 2
BOOT_BUDGET = 600.0         # boot()'s master_timeout: register() retries this long


class Tally(logging.Handler):
    """Counts warnings by their format string (registration retries, watcher failures,
    urllib3 pool overflow) instead of printing a thousand of them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: Counter = Counter()
        self.example: dict = {}
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.closed:
            return
        key = f"{record.name}: {record.msg}"
        self.counts[key] += 1
        self.example.setdefault(key, record.getMessage()[:200])

    def matching(self, text: str) -> int:
        return sum(n for k, n in self.counts.items() if text in k)


class AttemptErrors:
    """HTTP attempts that failed (each one the node session saw), by error code."""

    def __init__(self):
        self.codes: Counter = Counter()
        self._lock = threading.Lock()

    def watch(self, session: NodeSession) -> None:
        session.on_failed_attempt(self._seen)

    def _seen(self, service: str, code: str) -> None:
        with self._lock:
            self.codes[code] += 1


class TimedWatcher(Watcher):
    """The real Watcher; only measures how long each of its duties takes (a loop runs its
    duties one after another, so a slow one delays the next of the same loop)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings: dict[str, list[float]] = {}

    def duties(self) -> list:
        return self._timed(super().duties())

    def slow_duties(self) -> list:
        return self._timed(super().slow_duties())

    def _timed(self, duties: list) -> list:
        def timed(name, duty):
            def run():
                t = time.perf_counter()
                try:
                    return duty()
                finally:
                    self.timings.setdefault(name, []).append(time.perf_counter() - t)
            run.__name__ = name
            return run
        return [(period, timed(getattr(duty, "__name__", "duty"), duty))
                for period, duty in duties]


def hostname(ip: str) -> str:
    return f"ip-{ip.replace('.', '-')}.ec2.internal"


def boot_node(reg: Registry, inst: Instance, role: str) -> Node:
    """What boot() does with the registry (agent/boot.py), without IMDS, keys and sshd:
    the role ids, the node item booting, then ready; boot.register retries and backs off."""
    roles = cluster_roles(reg, CLUSTER, BOOT_BUDGET)
    node = Node(inst.instance_id, role, inst.private_ip, hostname(inst.private_ip), SLOTS,
                inst.lifecycle, inst.instance_type, "booting", image=inst.image)
    node.key = node_pk(CLUSTER, roles[role], inst.instance_id)
    register(reg, CLUSTER, node, BOOT_BUDGET)
    node.state = "ready"
    register(reg, CLUSTER, node, BOOT_BUDGET)
    return node


def launch_instances(session: AwsSession, count: int, instance_type: str) -> list[Instance]:
    """count instances tagged with the cluster (as create's fleets are), the master first,
    in one default subnet (distinct addresses)."""
    ec2 = session.client("ec2")
    subnet = Network(session, CLUSTER).subnets()[0]["SubnetId"]
    ids: list[str] = []
    while len(ids) < count:
        k = 1 if not ids else min(250, count - len(ids))
        tags = cluster_tags(CLUSTER, **{TAG_ROLE: "master" if not ids else "worker"})
        resp = ec2.run_instances(ImageId=IMAGE, MinCount=k, MaxCount=k, SubnetId=subnet,
                                 InstanceType=instance_type,
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        ids += [i["InstanceId"] for i in resp["Instances"]]
    by_id = {i.instance_id: i for i in Instances(session, CLUSTER).instances()}
    out = [by_id[i] for i in ids]
    if len({i.private_ip for i in out}) != count:
        raise RuntimeError("the emulator gave two instances one address")
    return out


def hostfile_ips(path: Path) -> list[str]:
    try:
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def written_at(path: Path) -> float:
    """When the watcher wrote the file (its mtime): the watcher sets last_write only after
    the rename, so a reader can see the new file before last_write moves."""
    return path.stat().st_mtime


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Profiler:
    """py-spy on the control plane and on this process while the agents register
    (--profile DIR): raw collapsed stacks, for flame graphs or a grep."""

    def __init__(self, out: Path | None, pids: dict):
        self.procs = []
        exe = shutil.which("py-spy")
        if out is None or exe is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            self.procs.append((out / f"{name}.txt", subprocess.Popen(
                [exe, "record", "--nonblocking", "--rate", "25", "--format", "raw",
                 "-o", str(out / f"{name}.txt"), "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))

    def stop(self) -> list:
        for _, proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for _, proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return [str(path) for path, _ in self.procs]


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def per_min(after: dict, before: dict, seconds: float) -> dict:
    return {k: (after.get(k, 0) - before.get(k, 0)) * 60 / seconds
            for k in sorted(set(after) | set(before)) if after.get(k, 0) != before.get(k, 0)}


def num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 0.05 else f"{x:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000, help="worker agents booting at once")
    ap.add_argument("--sessions", type=int, default=16,
                    help="AWS sessions shared by the agent threads (agent i uses i %% S)")
    ap.add_argument("--steady", type=float, default=20.0,
                    help="steady-state window for the master's request rate (s)")
    ap.add_argument("--poll", type=float, default=0.0,
                    help="watcher epoch poll (s); default: WatchSettings (EC2MPI_WATCH_POLL)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="give up waiting for the hostfile after this long (s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy the control plane and this process while agents register")
    args = ap.parse_args()
    n = args.agents
    wall0 = time.perf_counter()

    tally = Tally()
    logging.basicConfig(level=logging.WARNING, handlers=[tally], force=True)
    settings = WatchSettings.from_env(**({"poll": args.poll} if args.poll else {}))
    tmp = Path(tempfile.mkdtemp(prefix="ec2mpi-bench-"))
    cp = controlplane.start(tmp / "cp")
    stop = threading.Event()
    try:
        def session() -> AwsSession:
            return AwsSession(region=REGION, endpoint_url=cp.endpoint, ca_bundle=cp.ca_path)

        def node_session() -> NodeSession:
            """What a node's agent talks to AWS with (one HTTP connection per thread)."""
            return NodeSession(REGION, endpoint_url=cp.endpoint, ca_bundle=cp.ca_path)

        # -- setup, as `create` does (not timed) ------------------------------------
        t_setup = time.perf_counter()
        admin_sess = session()
        admin = Registry(admin_sess)
        admin.ensure_table()
        spec = ClusterSpec(name=CLUSTER, nodes=min(n + 1, MAX_NODES), storage="none",
                           region=REGION, keep_size=False)
        admin.create_cluster(CLUSTER, spec.to_json(), status="creating")
        admin.update_cluster(CLUSTER, launch_token=uuid.uuid4().hex)
        admin.update_cluster(CLUSTER, job_role="", roles=dict(ROLE_IDS))
        instances = launch_instances(admin_sess, n + 1, spec.instance_types[0])
        master_inst, worker_insts = instances[0], instances[1:]
        admin.update_cluster(CLUSTER, master=master_inst.instance_id)
        admin.update_cluster(CLUSTER, status="ready")
        admin.update_master(CLUSTER, bump=True, target=n + 1, keep_size=spec.keeps_size,
                            autostop=spec.autostop_seconds)
        epoch_before = admin.epoch(CLUSTER) or 0

        # the master boots, then watches as agent/main.py _watch builds its Watcher
        msess = node_session()
        mcount = CallCounter(msess)
        mreg = Registry(msess)
        master = boot_node(mreg, master_inst, "master")
        minstances = Instances(msess, CLUSTER)
        healer = Healer(ClusterSource(mreg, Templates(msess, CLUSTER), Network(msess, CLUSTER),
                                      CLUSTER), minstances)
        extra = {}
        if "autostop" in inspect.signature(Watcher.__init__).parameters:
            from ec2mpi.agent.autostop import Autostop
            extra["autostop"] = Autostop(CLUSTER, mreg, minstances, lambda: 0, lambda: 0)
        etc, run_dir = tmp / "etc", tmp / "run"
        run_dir.mkdir()
        mwatch = TimedWatcher(CLUSTER, master, mreg, [etc], None, settings=settings,
                              instances=minstances, healer=healer, run_dir=run_dir,
                              sessions=lambda: 0, **extra)
        threading.Thread(target=mwatch.run, args=(stop,), name="master", daemon=True).start()
        hostfile = etc / "hostfile"
        if not wait_until(lambda: hostfile_ips(hostfile) == [master.private_ip], 60):
            print("the master's hostfile never listed the master", file=sys.stderr)
            return 1

        # the agents' node sessions (a connection per thread, as each node has its own), counted
        pool = [node_session() for _ in range(max(1, min(args.sessions, n)))]
        pool_counts = [CallCounter(s) for s in pool]
        attempt_errors = AttemptErrors()
        for s in pool:
            attempt_errors.watch(s)
        regs = [Registry(s) for s in pool]
        setup_s = time.perf_counter() - t_setup

        # -- registration: N agents released at once --------------------------------
        victim = n // 2
        victim_stop = threading.Event()
        gate = threading.Barrier(n + 1)
        done_at: list[float | None] = [None] * n
        nodes: list[Node | None] = [None] * n
        errors: list[str] = []
        finished = threading.Semaphore(0)

        def agent(i: int) -> None:
            reg = regs[i % len(regs)]
            gate.wait()
            try:
                node = boot_node(reg, worker_insts[i], "worker")
            except Exception as err:  # noqa: BLE001 - boot failed for good: counted
                errors.append(f"{worker_insts[i].instance_id}: {err}")
                finished.release()
                return
            nodes[i], done_at[i] = node, time.perf_counter()
            finished.release()
            watcher = Watcher(CLUSTER, node, reg, settings=settings, sessions=lambda: 0,
                              deregister=i == victim)
            watcher.run(victim_stop if i == victim else stop)

        threads = [threading.Thread(target=agent, args=(i,), name=f"agent{i}", daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        profiler = Profiler(args.profile, {"controlplane": cp.info.pid, "bench": os.getpid()})
        gate.wait()
        t0, t0_wall = time.perf_counter(), time.time()
        cpu0, cp_cpu0 = cpu_seconds(os.getpid()), cpu_seconds(cp.info.pid)
        deadline = time.monotonic() + args.timeout
        for _ in range(n):
            if not finished.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        registered_s = time.perf_counter() - t0
        ok = [nd for nd in nodes if nd is not None]
        want = {master.private_ip} | {nd.private_ip for nd in ok}
        converged = wait_until(lambda: set(hostfile_ips(hostfile)) == want,
                               max(0.0, deadline - time.monotonic()))
        converged_s = (written_at(hostfile) - t0_wall) if converged \
            else time.perf_counter() - t0
        cpu1, cp_cpu1 = cpu_seconds(os.getpid()), cpu_seconds(cp.info.pid)
        profiles = profiler.stop()
        busy_s = time.perf_counter() - t0
        reg_calls = sum((c.total for c in pool_counts), 0)

        # -- did every registration arrive? -----------------------------------------
        items = {nd.instance_id: nd for nd in admin.nodes(CLUSTER)}
        expected = [master] + ok
        missing = {nd.instance_id for nd in expected
                   if items.get(nd.instance_id) is None or items[nd.instance_id].state != "ready"
                   or items[nd.instance_id].problem}
        in_hostfile = set(hostfile_ips(hostfile))
        missing |= {nd.instance_id for nd in expected if nd.private_ip not in in_hostfile}
        epoch_now = admin.epoch(CLUSTER) or 0
        bumps_expected = 2 * len(expected)
        bumps = epoch_now - epoch_before
        lost = len(missing) + max(0, bumps_expected - bumps)

        # -- steady state: no membership change for --steady seconds ----------------
        time.sleep(2 * settings.poll + 0.5)     # the master's settle re-read and publish
        epoch_at = mwatch.epoch
        m0, w0 = dict(mcount.calls), [dict(c.calls) for c in pool_counts]
        cp_steady0 = cpu_seconds(cp.info.pid)
        time.sleep(args.steady)
        m1, w1 = dict(mcount.calls), [dict(c.calls) for c in pool_counts]
        cp_steady = cpu_seconds(cp.info.pid) - cp_steady0
        steady_moved = mwatch.epoch != epoch_at
        m_rate = per_min(m1, m0, args.steady)
        master_rate = sum(m_rate.values())
        w_total = sum(sum(a.values()) - sum(b.values()) for a, b in zip(w1, w0))
        w_rate = w_total * 60 / args.steady / max(1, len(ok))

        # -- one membership change: a worker's agent stops and deregisters ----------
        gone = worker_insts[victim].private_ip
        change_s = float("nan")
        if nodes[victim] is not None:
            tc = time.time()
            victim_stop.set()
            if wait_until(lambda: gone not in hostfile_ips(hostfile), 60, step=0.005):
                change_s = written_at(hostfile) - tc
            else:
                change_s = time.time() - tc
        total_s = time.perf_counter() - wall0

        # -- figures ------------------------------------------------------------------
        durations = [d - t0 for d in done_at if d is not None]
        ws = settings
        scheduled = (60 / ws.poll + 60 / ws.master_heartbeat_every
                     + 60 / min(ws.liveness_every, ws.heartbeat_check_every)
                     + 60 / ws.heartbeat_check_every)
        print(f"agents:                   {n} worker threads over {len(pool)} AWS sessions, "
              f"+1 master (setup {setup_s:.1f}s, not timed)")
        print(f"watcher settings:         poll {settings.poll:g}s, worker heartbeat "
              f"{settings.heartbeat_every:g}s, master heartbeat "
              f"{settings.master_heartbeat_every:g}s, liveness {settings.liveness_every:g}s, "
              f"heartbeat check {settings.heartbeat_check_every:g}s")
        print(f"registration:             {len(ok)}/{n} agents ready in {registered_s:.1f}s "
              f"(p50 {pct(durations, 0.5):.1f}s, p95 {pct(durations, 0.95):.1f}s per agent); "
              f"{reg_calls} agent requests by then")
        print(f"errors after retry:       {len(errors)}"
              + (f" (first: {errors[0][:160]})" if errors else ""))
        retries = tally.matching("registration failed")
        print(f"retries:                  {retries} registration retries (boot.register); "
              f"failed HTTP attempts: {dict(attempt_errors.codes) or 'none'}")
        print(f"CPU until converged:      control plane {cp_cpu1 - cp_cpu0:.1f}s "
              f"({(cp_cpu1 - cp_cpu0) / busy_s:.2f} cores; one process: at most ~1 for "
              f"Python), bench {cpu1 - cpu0:.1f}s ({(cpu1 - cpu0) / busy_s:.2f} cores)"
              + (f"; profiles: {', '.join(profiles)}" if profiles else ""))
        print(f"marked lost by the master: {tally.matching('is lost')} (they register again "
              "at their next heartbeat)")
        print(f"lost:                     {lost} ({len(missing)} missing from registry or "
              f"hostfile; epoch moved {bumps} for {bumps_expected} registrations)")
        print(f"hostfile converged:       {converged_s:.1f}s to {len(want)} nodes"
              + ("" if converged else f" -- NOT converged ({len(in_hostfile)} listed)"))
        print(f"master, steady state:     {num(master_rate)} requests/min over "
              f"{args.steady:g}s: " + ", ".join(f"{k} {num(v)}" for k, v in m_rate.items())
              + (" (the epoch moved meanwhile)" if steady_moved else "")
              + f"; {num(scheduled)}/min by the settings' schedule (epoch reads, own "
              "heartbeats, liveness DescribeInstances, heartbeat checks: a node-list Query)")
        print(f"workers, steady state:    {w_rate:.1f} requests/min each "
              f"({w_total * 60 / args.steady:.0f}/min for all); control plane CPU "
              f"{cp_steady / args.steady:.2f} cores")
        print(f"membership change:        {change_s:.2f}s from a worker's stop to the master's "
              f"hostfile without it ({change_s / settings.poll:.1f} polls of {settings.poll:g}s)")
        print("master duties:            " + ", ".join(
            f"{k} x{len(v)} mean {statistics.fmean(v):.2f}s max {max(v):.2f}s"
            for k, v in mwatch.timings.items() if v))
        noisy = tally.counts.most_common(5)
        if noisy:
            print("warnings:                 " + "; ".join(
                f"{c}x {tally.example[k]}" for k, c in noisy))
        print(f"total wall time:          {total_s:.1f}s")
        print(f"registry-scale: agents={n} lost={lost} errors_after_retry={len(errors)} "
              f"converged_s={converged_s:.1f} change_to_hostfile_s={change_s:.1f} "
              f"master_req_per_min={num(master_rate)}")
        return 0
    finally:
        tally.closed = True
        stop.set()
        cp.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
