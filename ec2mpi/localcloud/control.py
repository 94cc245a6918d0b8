"""The local cloud as the CLI sees it: start it, stop it, ask it, inject faults.

One daemon process (daemon.py) owns it all: moto's server (the AWS control plane, over TLS) and the
instance-metadata emulator, both on the private bridge's gateway, and the node runner
that turns every instance moto reports as running into a namespace node (nodes.py) and
tears it down when the instance goes. Its state lives in one directory; `ensure_up()`
starts it on the first --local command, `down()` stops it, and a stale state (after a
crash or reboot) is cleaned before anything reuses it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CloudError, UserError
from . import nodes

REGION = "us-east-1"
DEFAULT_STATE = "/var/lib/ec2mpi-local"
# One local cloud per machine: it owns the bridge and the 172.31.0.0/16 addresses.
OWNER = Path("/run/ec2mpi-local.json")      # /run: gone after a reboot, like the cloud
MACHINE_LOCK = Path("/run/ec2mpi-local.lock")
log = logging.getLogger("ec2mpi.localcloud")


@dataclass
class LocalCloudInfo:
    endpoint: str         # https://GATEWAY:PORT (moto over TLS)
    ca_path: str          # CA bundle verifying `endpoint`
    region: str           # always us-east-1
    ssh_cidr: str         # the bridge subnet: the "user's own address" for the security group
    state_dir: str
    pid: int
    imds: str = ""        # http://GATEWAY:PORT/ (the metadata emulator)
    started: float = 0.0


def state_dir() -> Path:
    path = Path(os.environ.get("EC2MPI_LOCAL_STATE", DEFAULT_STATE)).resolve()
    for private in nodes.PRIVATE_DIRS.values():  # nodes bind their own copies over these
        if path == Path(private) or Path(private) in path.parents:
            raise UserError(f"local cloud state dir {path} is inside {private}, which nodes hide",
                            f"set EC2MPI_LOCAL_STATE elsewhere (default {DEFAULT_STATE})")
    return path


# --------------------------------------------------------------------------- client side
def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError(
            "the local cloud needs root (it creates network namespaces, a bridge and one sshd per "
            "node)",
            "run with sudo, or use a real AWS account without --local",
        )
    for tool in ("ip", "unshare", "nsenter", "ssh-keygen", "iptables"):
        if shutil.which(tool) is None:
            raise UserError(
                f"the local cloud needs '{tool}'",
                "apt-get install iproute2 util-linux openssh-client iptables",
            )
    if not os.path.exists("/usr/sbin/sshd"):
        raise UserError(
            "the local cloud needs sshd for its nodes", "apt-get install openssh-server"
        )


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _read_info(state: Path) -> LocalCloudInfo | None:
    try:
        return LocalCloudInfo(**json.loads((state / "daemon.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _daemon_alive(pid: int) -> bool:
    try:
        return b"ec2mpi.localcloud.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _live_owner() -> dict | None:
    """The machine's running local cloud ({state_dir, pid}), if any."""
    try:
        owner = json.loads(OWNER.read_text())
    except (OSError, ValueError):
        return None
    return owner if _daemon_alive(owner.get("pid", -1)) else None


def _refuse_foreign(state: Path) -> None:
    owner = _live_owner()
    if owner and Path(owner["state_dir"]) != state:
        raise UserError(
            f"another local cloud runs on this machine (state {owner['state_dir']}, pid "
            f"{owner['pid']})",
            f"stop it first: EC2MPI_LOCAL_STATE={owner['state_dir']} ec2mpi --local local down",
        )


def ensure_up(progress=None) -> LocalCloudInfo:
    """Start the local cloud unless it already runs; return how to reach it.

    progress(done, total, message), the same convention as cluster.ProgressFn.
    """
    report = progress or (lambda done, total, message: None)

    def progress(message: str) -> None:   # uncounted: how many steps depends on what exists
        report(0, 0, message)
    require_root()
    state = state_dir()
    with _lock(MACHINE_LOCK):
        _refuse_foreign(state)
        from .image import ensure_image
        ensure_image(progress, state)  # new nodes always run exactly this client's build
        info = _read_info(state)
        if info and _daemon_alive(info.pid) and nodes.bridge_ready():
            return info
        if info and _daemon_alive(info.pid):  # alive but its bridge is gone: unusable
            progress("the local cloud lost its bridge; restarting it")
            os.kill(info.pid, signal.SIGKILL)
        if info or nodes.list_netns() or (state / "nodes").exists():
            progress("cleaning a stale local cloud (left by a crash or a reboot)")
            cleanup(state)
        progress("starting the local cloud (moto control plane, metadata service, node runner)")
        state.mkdir(parents=True, exist_ok=True)
        logf = open(state / "daemon.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "ec2mpi.localcloud.daemon", "--state-dir", str(state)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = _read_info(state)
            if info and info.pid == proc.pid:
                OWNER.write_text(json.dumps({"state_dir": str(state), "pid": proc.pid}))
                return info
            if proc.poll() is not None:
                raise CloudError(f"the local cloud failed to start (exit {proc.returncode})",
                                 f"see {state / 'daemon.log'}")
            time.sleep(0.05)
        proc.kill()
        raise CloudError("the local cloud did not start within 60 s", f"see {state / 'daemon.log'}")


def status() -> dict | None:
    """None when the local cloud is down; else what runs and where."""
    state = state_dir()
    info = _read_info(state)
    if not info or not _daemon_alive(info.pid):
        return None
    node_ids = sorted(nodes.list_netns())
    return {**asdict(info), "nodes": node_ids, "uptime": round(time.time() - info.started, 1)}


def down(timeout: float = 60.0) -> bool:
    """Stop the daemon (which tears down every node) and clean the state. True if it was up."""
    require_root()
    state = state_dir()
    with _lock(MACHINE_LOCK):
        _refuse_foreign(state)
        info = _read_info(state)
        was_up = bool(info and _daemon_alive(info.pid))
        if was_up:
            os.kill(info.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _daemon_alive(info.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        cleanup(state)
        OWNER.unlink(missing_ok=True)
        return was_up


def session(info: LocalCloudInfo):
    """A session with the local cloud's client key (root-only file): the control plane
    accepts no other credentials, as AWS would not."""
    from ..aws.session import AwsSession
    from .credentials import CredentialStore
    key = CredentialStore(Path(info.state_dir) / "controlplane").client()
    return AwsSession(region=info.region, endpoint_url=info.endpoint, ca_bundle=info.ca_path,
                      credentials={"aws_access_key_id": key.access_key_id,
                                   "aws_secret_access_key": key.secret})


def _request_fault(kind: str, instance_id: str, timeout: float = 10.0, **args) -> None:
    info = ensure_up()
    faults = Path(info.state_dir) / "faults"
    faults.mkdir(exist_ok=True)
    req = faults / f"{instance_id}.json"
    req.write_text(json.dumps({"kind": kind, **args}))
    deadline = time.monotonic() + timeout
    while req.exists():
        if time.monotonic() > deadline:
            raise CloudError(f"the local cloud did not act on '{kind} {instance_id}'",
                             f"see {Path(info.state_dir) / 'daemon.log'}")
        time.sleep(0.05)
    result = faults / f"{instance_id}.result"
    if result.exists():
        message = result.read_text()
        result.unlink()
        if message:
            raise UserError(message, "see 'ec2mpi --local status' for the instance ids")


def interrupt(instance_id: str, grace: float = 20.0) -> None:
    """Serve a spot interruption notice to the node, terminate it after `grace` seconds."""
    _request_fault("interrupt", instance_id, grace=grace)


def kill(instance_id: str) -> None:
    """Remove the node abruptly (no notice, no shutdown): its instance is terminated under it."""
    _request_fault("kill", instance_id)


def capacity(pool: dict | None = None) -> list[dict] | None:
    """The control plane's EC2 capacity pools (fidelity_capacity.py): the list, or with
    `pool` ({"type", "az", "lifecycle", "count"}, None = any / unlimited) set one first.
    Setting brings the local cloud up; listing a cloud that is down gives None."""
    import ssl
    import urllib.error
    import urllib.request
    if pool is not None:
        info = ensure_up()
    else:
        info = _read_info(state_dir())
        if not info or not _daemon_alive(info.pid):
            return None
    data = None if pool is None else json.dumps(pool).encode()
    req = urllib.request.Request(info.endpoint + "/_ec2mpi/capacity", data=data,
                                 method="GET" if pool is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10,
                                    context=ssl.create_default_context(cafile=info.ca_path)) as r:
            return json.load(r)["pools"]
    except urllib.error.HTTPError as err:
        try:
            why = json.load(err).get("error", "")
        except ValueError:
            why = ""
        raise UserError(f"the local cloud refused the capacity pool: {why or err}",
                        "e.g. ec2mpi --local local capacity c6i.large@us-east-1a 0 --spot") \
            from None
    except OSError as err:
        raise CloudError(f"cannot reach the local cloud's control plane: {err}",
                         f"see {Path(info.state_dir) / 'daemon.log'}") from None


SLOW_LINK = "tbf " + " ".join(nodes.SLOW_TBF)


def slow(instance_id: str, off: bool = False) -> None:
    """Slow the node's network link (tc tbf on its veth: SLOW_LINK), or with `off` restore it."""
    _request_fault("slow", instance_id, off=off)


def cleanup(state: Path) -> None:
    """Remove everything a local cloud (live or stale) left: nodes, control plane, bridge.

    Callers hold MACHINE_LOCK and have checked that no other live cloud owns the machine.
    """
    for iid in nodes.list_netns():
        nodes.destroy(iid, state / "nodes")
    cp_info = state / "controlplane" / "controlplane.json"
    try:
        pid = json.loads(cp_info.read_text())["pid"]
        if b"ec2mpi.localcloud.controlplane" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, KeyError):
        pass
    from .credentials import CredentialStore
    from .firewall import open_again
    open_again()
    CredentialStore(state / "controlplane").forget_nodes()
    nodes.delete_bridge()
    for name in ("nodes", "efs", "faults"):
        shutil.rmtree(state / name, ignore_errors=True)
    for name in ("daemon.json", "controlplane/controlplane.json"):
        (state / name).unlink(missing_ok=True)
