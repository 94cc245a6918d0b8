"""`ec2mpi-agent {run,boot,watch,hostfile,--version}`: the node-side entry point.

`run` is the node's service: boot (idempotent, retried), then watch, in ONE process, so
a node pays Python's and boto3's start-up once, and every start of the service (also
after a reboot) re-does the boot steps: storage mounted, keys in place, registered.
It reports the boot's outcome in /run/ec2mpi/boot.status for the user-data stub.

Parameters come from /etc/ec2mpi/agent.json (written by the user-data stub); the
environment variables of docs/internals.md (AWS_EC2_METADATA_SERVICE_ENDPOINT,
AWS_ENDPOINT_URL, AWS_CA_BUNDLE, EC2MPI_*) adapt it to the local cloud.
"""
from __future__ import annotations

# Only what every command needs: the rest is imported where it is used, so that
# `ec2mpi-agent --version` (which the user-data stub runs on every boot) and the job commands
# start quickly; `run` imports boto3 and the boot steps (agent/boot.py) when it starts them.
import os
import sys

from .. import __version__


def _setup_logging(paths) -> None:
    import logging

    handlers = [logging.StreamHandler(sys.stderr)]
    try:
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(paths.log_dir / "agent.log"))
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _boot(args, params, paths) -> int:
    from .boot import boot
    node = boot(params, paths, ssh_port=args.ssh_port)
    print(f"{node.instance_id} {node.role} {node.private_ip} ready")
    return 0


CREDENTIALS_WAIT = 120.0   # s a boot waits for its instance-role credentials
BOOT_FAILED = 3   # exit status of `run` when boot failed for good: supervisors do not restart it


def _run(args, params, paths) -> int:
    import logging
    import time

    from .boot import boot, session_for
    status = paths.run / "boot.status"
    paths.run.mkdir(parents=True, exist_ok=True)
    delay = float(os.environ.get("EC2MPI_BOOT_RETRY_DELAY", "5"))
    aws = None
    for attempt in (1, 2, 3):
        try:   # a new session each try: nothing of a failed try is kept
            aws = session_for(params, wait=CREDENTIALS_WAIT)
            node = boot(params, paths, aws=aws, ssh_port=args.ssh_port)
            break
        except Exception as err:  # boot is idempotent: a slow first boot gets two more chances
            logging.getLogger("ec2mpi.agent").exception("boot failed (try %d of 3)", attempt)
            if attempt == 3:
                status.write_text(f"failed: {err}\n")
                print(f"ec2mpi-agent run: boot failed: {err}", file=sys.stderr)
                _record_boot_failure(params, paths, aws, err)
                return BOOT_FAILED
            time.sleep(attempt * delay)
    status.write_text(f"ready {node.instance_id} {node.role} {node.private_ip}\n")
    os.nice(10)  # from here on background work: never compete with MPI ranks
    return _watch(args, params, paths, aws=aws)


def _record_boot_failure(params, paths, aws, err: Exception) -> None:
    """Say in the registry why this node gave up (state `failed`), so that `create` stops
    waiting at once and `status` shows the reason. Best effort: the registry may be what
    failed, and then the boot status and the console say it."""
    import json
    import logging

    from ..aws.registry import Node, Registry
    try:
        node = Node(**json.loads(paths.state.read_text()))
    except (OSError, ValueError, TypeError):
        return   # not registered yet: nothing in the registry to mark
    try:
        reason = " ".join(f"boot failed: {err}".split())[:300]
        Registry(aws, table=params.table).set_node_state(params.cluster, node, "failed", reason)
    except Exception:  # the console and boot.status still say it
        logging.getLogger("ec2mpi.agent").exception("could not record the boot failure")


def _watch(args, params, paths, aws=None) -> int:
    import json
    import logging
    import signal
    import threading

    from ..aws.registry import Node, Registry
    from .boot import session_for
    from .imds import Imds
    from .watch import Watcher, WatchSettings
    node = Node(**{k: v for k, v in json.loads(paths.state.read_text()).items()})
    aws = aws or session_for(params)
    registry = Registry(aws, table=params.table)
    instances = healer = None
    if node.role == "master":
        from ..aws.instances import Instances
        from ..aws.network import Network
        from ..aws.templates import Templates
        from .heal import ClusterSource, Healer
        instances = Instances(aws, params.cluster)
        healer = Healer(ClusterSource(registry, Templates(aws, params.cluster),
                                      Network(aws, params.cluster), params.cluster), instances)
    settings = WatchSettings.from_env(**({"poll": args.poll} if args.poll else {}))
    keepers = [(5.0, JobManagerKeeper(params, paths))] if node.role == "master" else []
    autostop = None
    if node.role == "master":
        import pwd

        from .autostop import Autostop, running_jobs
        uid = pwd.getpwnam(params.user).pw_uid
        autostop = Autostop(params.cluster, registry, instances, ssh_sessions,
                            lambda: running_jobs(uid))
    watcher = Watcher(params.cluster, node, registry, paths.hostfile_dirs(params), Imds(),
                      settings=settings, instances=instances, healer=healer, run_dir=paths.run,
                      sessions=ssh_sessions, keepers=keepers, autostop=autostop)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    paths.run.mkdir(parents=True, exist_ok=True)
    jobs_aws = _serve_job_role(aws, registry, params, paths, node.instance_id)
    logging.getLogger("ec2mpi.agent").info("watch %s as %s, poll %.1fs", node.instance_id,
                                           node.role, settings.poll)
    try:
        watcher.run(stop)
    finally:
        if jobs_aws is not None:
            jobs_aws.stop()
    return 0


def _serve_job_role(aws, registry, params, paths, instance_id: str):
    """The job role's credentials for the cluster user, if the cluster has one (else jobs
    get no AWS credentials at all)."""
    import pwd

    from .jobcreds import JobCredentials
    (paths.run / "job-token").unlink(missing_ok=True)
    role = (registry.get_cluster(params.cluster) or {}).get("job_role")
    if not role:
        return None
    gid = pwd.getpwnam(params.user).pw_gid
    return JobCredentials(aws, role, instance_id, paths.run, gid).start()


class JobManagerKeeper:
    """Keeps the job manager running on the master, as the cluster user (a login shell: its
    own HOME and MPI environment, none of the agent's AWS settings)."""

    def __init__(self, params, paths):
        self.params, self.paths = params, paths
        self.proc = None

    def __call__(self) -> None:
        import logging
        import shlex
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            return
        agent = f"{self.params.prefix}/venv/bin/ec2mpi-agent"
        settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                            if k.startswith("EC2MPI_JOB_"))   # a login shell drops the rest
        cmd = ["runuser", "-l", self.params.user, "-c",
               f"{settings} exec {agent} --root {self.paths.root} job manage".lstrip()]
        log_path = self.paths.log_dir / "jobs.log"
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        logging.getLogger("ec2mpi.agent").info("job manager started (pid %d)", self.proc.pid)


def ssh_sessions() -> int:
    """Open SSH sessions on THIS node: established TCP connections to its port 22, read from
    /proc/net/tcp*, which shows the node's own network namespace (on the local cloud nodes
    share the host's PID space, so counting sshd processes would mean nothing)."""
    from pathlib import Path

    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[1].endswith(":0016") and parts[3] == "01":
                count += 1
    return count


def _job(args, params, paths) -> int:
    """The job commands, run as the cluster user (the client over SSH, or the manager)."""
    import json
    import signal
    import threading

    from . import jobs
    store = jobs.JobStore(jobs.jobs_root(params, paths))
    if args.job_command == "submit":
        command = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
        if not command:
            print("ec2mpi-agent job submit: nothing to run (give it after --)", file=sys.stderr)
            return 2
        return jobs.submit(store, jobs.JobSpec("", command, kind=args.kind, np=args.np,
                                               restarts=args.restarts, retries=args.retries,
                                               checkpoint_signal=args.checkpoint_signal))
    if args.job_command == "attach":
        return jobs.attach(store, args.id, from_start=not args.new_only)
    if args.job_command == "cancel":
        return jobs.cancel(store, args.id)
    if args.job_command == "list":
        return jobs.listing(store)
    if args.job_command in ("farm", "resume"):
        from . import farm
        if args.job_command == "farm":
            return farm.submit(store, sys.stdin.read(), args.name, args.retries)
        return farm.resume(store, args.id, args.retries)
    from .supervisor import Manager, Supervisor
    me = json.loads(paths.state.read_text())["instance_id"]
    cwd = paths.shared(params) if params.storage != "none" else paths.home(params.user)
    if args.job_command == "supervise" and store.spec(args.id).kind == "farm":
        from .farm import Farm
        return Farm(store, args.id, paths.etc, paths.run, me, cwd,
                    python=f"{params.prefix}/venv/bin/python").run()
    if args.job_command == "supervise":
        return Supervisor(store, args.id, paths.etc, paths.run, me, cwd).run()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    root = str(paths.root)
    Manager(store, me, lambda job_id: [sys.executable, "-m", "ec2mpi.agent.main", "--root", root,
                                       "job", "supervise", job_id],
            paths.home(params.user) / ".ec2mpi").run(stop)
    return 0


def _hostfile(args, params, paths) -> int:
    from ..aws.registry import Registry
    from .boot import session_for
    from .hostfile import write_hostfiles
    nodes = Registry(session_for(params), table=params.table).nodes(params.cluster)
    sys.stdout.write(write_hostfiles(nodes, paths.hostfile_dirs(params)))
    return 0


def main(argv=None) -> int:
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:
        print(__version__)   # what argparse's version action prints, without importing argparse
        raise SystemExit(0)
    import argparse

    ap = argparse.ArgumentParser(prog="ec2mpi-agent", description="ec2mpi node agent")
    ap.add_argument("--version", action="version", version=__version__)
    ap.add_argument("--root", default="/", help="filesystem root (tests)")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the node service: boot, then watch (one process)")
    b = sub.add_parser("boot", help="configure this node and register it")
    w = sub.add_parser("watch", help="follow membership, spot notices and heartbeat")
    for p in (r, b):
        p.add_argument("--ssh-port", type=int, default=int(os.environ.get("EC2MPI_SSH_PORT", "22")))
    for p in (r, w):
        p.add_argument("--poll", type=float, default=None,
                       help="membership poll interval in seconds (default 2; EC2MPI_WATCH_POLL)")
    sub.add_parser("hostfile", help="rewrite the hostfiles from the registry once")
    g = sub.add_parser("guard", help="run CMD; end its process group when stdin ends")
    g.add_argument("command_argv", nargs=argparse.REMAINDER)
    j = sub.add_parser("job", help="jobs on the master (as the cluster user)")
    jsub = j.add_subparsers(dest="job_command", required=True)
    js = jsub.add_parser("submit", help="queue a job; prints its id")
    js.add_argument("--np", type=int, default=0)
    js.add_argument("--restarts", type=int, default=0)
    js.add_argument("--retries", type=int, default=0)
    js.add_argument("--kind", choices=("run", "farm"), default="run")
    js.add_argument("--checkpoint-signal", default="SIGUSR1")
    js.add_argument("command_argv", nargs=argparse.REMAINDER)
    for name in ("attach", "cancel", "supervise"):
        jp = jsub.add_parser(name)
        jp.add_argument("id")
        if name == "attach":
            jp.add_argument("--new-only", action="store_true")
    jsub.add_parser("list")
    jf = jsub.add_parser("farm", help="queue a task farm (the task file on stdin); prints its id")
    jf.add_argument("--name", default="tasks")
    jf.add_argument("--retries", type=int, default=0)
    jr = jsub.add_parser("resume", help="go on with what a farm has not done")
    jr.add_argument("id")
    jr.add_argument("--retries", type=int, default=None)
    jsub.add_parser("manage", help="start supervisors for the active jobs (kept alive by run)")
    args = ap.parse_args(argv)
    if args.command == "guard":
        from .guard import guard
        command = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
        return guard(command) if command else 2
    # Role credentials come from the metadata service; for the boto3 clients (the master's
    # EC2) botocore gives it 1 s and one try by default, which a busy node can miss.
    os.environ.setdefault("AWS_METADATA_SERVICE_TIMEOUT", "5")
    os.environ.setdefault("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "5")

    import logging
    from pathlib import Path

    from .params import AgentParams, AgentPaths  # not .boot: the job commands need no boto3
    paths = AgentPaths(Path(args.root))
    _setup_logging(paths)
    try:
        params = AgentParams.load(paths.agent_json)
        return {"run": _run, "boot": _boot, "watch": _watch, "job": _job,
                "hostfile": _hostfile}[args.command](args, params, paths)
    except Exception as err:
        logging.getLogger("ec2mpi.agent").exception("%s failed", args.command)
        print(f"ec2mpi-agent {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
