"""Local cloud machines: one node per running instance, each its own little Linux host.

A node is a network + UTS + mount namespace: its own address on the private bridge
(equal to the instance's PrivateIpAddress in moto), its own hostname, private copies of
the few directories a real node keeps to itself, and its own sshd. Then it runs the
instance's real user-data as root, exactly as cloud-init would on EC2.

Nodes have no default route: they reach the bridge gateway (control plane, IMDS) and
each other, nothing else.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from ..config import NODE_PREFIX

BRIDGE = "ec2mpi0"
GATEWAY = "172.31.0.1"
RESOLVER = "172.31.0.2"       # the VPC base + 2, like the Amazon-provided DNS server
SUBNET = "172.31.0.0/16"      # moto's default VPC: instance IPs come from its subnets
PREFIXLEN = 16
NETNS_PREFIX = "ec2mpi-"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_CA_NAME = "local-ca.pem"        # the local cloud's CA alone, at /etc/ec2mpi/ in a node

# Directories each node keeps to itself (name under the node dir -> path on the node).
PRIVATE_DIRS = {
    "etc": "/etc/ec2mpi", "log": "/var/log/ec2mpi", "lib": "/var/lib/ec2mpi",
    "run": "/run/ec2mpi", "home": "/home", "tmp": "/tmp",
}

SSHD_CONFIG = """\
# The node's sshd. The agent adds the cluster host key through the Include.
Include /etc/ec2mpi/sshd_config
ListenAddress {ip}
HostKey {host_key}
PidFile /run/ec2mpi/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
PrintMotd no
MaxStartups 200:30:400
MaxSessions 64
Subsystem sftp internal-sftp
"""


def run(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


BLACKHOLE_METRIC = "65535"   # loses to the bridge's own route; wins when the bridge is gone


def foreign_subnet_use() -> str:
    """A route into our subnet that is not ours (e.g. a real VPC on this host), or ''."""
    out = run("ip", "-o", "route", "show", "match", SUBNET.split("/")[0], check=False).stdout
    for line in out.splitlines():
        dest = line.split()[0]
        if dest in (SUBNET, "blackhole") or dest == "default" or BRIDGE in line.split():
            continue
        return line.strip()
    return ""


def ensure_bridge() -> None:
    """The private bridge with the gateway address, and the mount points nodes need.

    A blackhole route for the subnet guarantees that traffic to node addresses can never
    leave through the host's own network, even if the bridge disappears.
    """
    conflict = foreign_subnet_use()
    if conflict:
        raise RuntimeError(f"this host already routes part of {SUBNET} ({conflict}); "
                           "the local cloud needs that range for itself")
    run("ip", "route", "replace", "blackhole", SUBNET, "metric", BLACKHOLE_METRIC)
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/{PREFIXLEN}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    if run("ip", "-o", "addr", "show", "dev", BRIDGE, check=False).stdout.find(
            f" {RESOLVER}/") < 0:
        run("ip", "addr", "add", f"{RESOLVER}/{PREFIXLEN}", "dev", BRIDGE)
    for path in list(PRIVATE_DIRS.values()) + ["/run/sshd", NODE_PREFIX]:
        os.makedirs(path, exist_ok=True)


def bridge_ready() -> bool:
    """The bridge exists and holds the gateway address (else nothing may talk to it)."""
    out = run("ip", "-o", "addr", "show", "dev", BRIDGE, check=False).stdout
    return f" {GATEWAY}/{PREFIXLEN} " in out


def delete_bridge() -> None:
    run("ip", "link", "del", BRIDGE, check=False)
    run("ip", "route", "del", "blackhole", SUBNET, "metric", BLACKHOLE_METRIC, check=False)


def netns_name(instance_id: str) -> str:
    return NETNS_PREFIX + instance_id


def list_netns() -> list[str]:
    """Instance ids of every local-cloud namespace on this machine (also stale ones)."""
    out = run("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n[len(NETNS_PREFIX):] for n in names if n.startswith(NETNS_PREFIX)]


def veth_name(instance_id: str) -> str:
    """The host end of a node's veth pair (interface names are at most 15 characters)."""
    return "e2m" + hashlib.sha1(instance_id.encode()).hexdigest()[:10]


# `local slow`: a token bucket (this kernel has tbf, not netem) on the host end of the node's
# veth, i.e. on everything sent to the node. The rate caps its bandwidth; the small bucket
# (burst) makes every small message past the first few wait for its tokens, which is the
# latency a ping-pong sees; `latency` bounds the queue (beyond it packets drop, as on a
# congested link).
SLOW_TBF = ("rate", "1mbit", "burst", "2kb", "latency", "200ms")


def slow_link(instance_id: str, on: bool = True) -> None:
    """Slow the node's link (replacing any earlier setting), or give it its full link back."""
    dev = veth_name(instance_id)
    if on:
        run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", *SLOW_TBF)
    else:
        run("tc", "qdisc", "del", "dev", dev, "root", check=False)


# Per-node name-service files (name in the node dir -> path in the node).
NAME_FILES = {"resolv.conf": "/etc/resolv.conf", "nsswitch.conf": "/etc/nsswitch.conf",
              "hosts": "/etc/hosts"}


def name_files(resolver: str, region: str) -> dict[str, str]:
    """What a VPC instance's resolver configuration says: the VPC resolver and the EC2 search
    domain; hosts from files then DNS (not the host's systemd-resolved or nscd); a plain
    /etc/hosts with only localhost."""
    from .names import resolv_conf
    nsswitch = []
    try:
        nsswitch = Path("/etc/nsswitch.conf").read_text().splitlines()
    except OSError:
        pass
    nsswitch = [line for line in nsswitch if line.split(":")[0].strip() != "hosts"]
    return {"resolv.conf": resolv_conf(resolver, region),
            "nsswitch.conf": "\n".join(nsswitch + ["hosts: files dns"]) + "\n",
            "hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"}


_KEYGEN = threading.Lock()


def boot_host_key(root: Path) -> Path:
    """The host key a node's sshd starts with, one for all nodes of this local cloud (made
    once): the agent soon adds the cluster's own, the only one clients trust."""
    key = Path(root) / "boot_host_ecdsa_key"
    with _KEYGEN:
        if not key.exists():
            run("ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(key))
    return key


def hostname_for(ip: str) -> str:
    """EC2's private DNS style: ip-172-31-0-4."""
    return "ip-" + ip.replace(".", "-")


class Node:
    """One running instance as a namespace node. `anchor` holds the namespaces open.

    `prefix` is bind-mounted at the node prefix (/opt/ec2mpi): the image's, or a node's own
    empty directory for a stock image. `resolver` is the VPC-like name server the node's
    /etc/resolv.conf names (nodes share the host's /etc: these files are bind-mounted)."""

    def __init__(self, root: Path, instance_id: str, ip: str, prefix: Path | None = None,
                 resolver: str | None = None, region: str = "us-east-1"):
        self.instance_id, self.ip = instance_id, ip
        self.hostname = hostname_for(ip)
        self.dir = Path(root) / instance_id
        self.netns = netns_name(instance_id)
        self.veth = veth_name(instance_id)
        self.prefix, self.resolver, self.region = prefix, resolver, region
        self.anchor: subprocess.Popen | None = None

    # -- life ---------------------------------------------------------------
    def start(self, user_data: bytes, env: dict[str, str], ca_bundle: str | None = None) -> None:
        """Create the node and start its sshd and user-data (in the background)."""
        if leftover(self.instance_id, self.dir.parent):  # a stale node of the same id never
            destroy(self.instance_id, self.dir.parent)  # survives
        self._prepare_dirs(user_data, ca_bundle)
        self._network()
        self._spawn_anchor()
        self.nsenter("/usr/sbin/sshd", "-f", str(self.dir / "sshd_config"),
                     "-E", str(self.dir / "sshd.log"))
        base_env = {"PATH": NODE_PATH,
                    "HOME": "/root", "LANG": "C.UTF-8"}
        environment = [f"{k}={v}" for k, v in {**base_env, **env}.items()]
        with open(self.dir / "console.log", "ab") as console:
            subprocess.Popen(self._enter_cmd() + ["env", "-i", *environment, "/bin/bash",
                                                  str(self.dir / "user-data")],
                             stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)

    def _prepare_dirs(self, user_data: bytes, ca_bundle: str | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.prefix is not None and not self.prefix.exists():   # a node's own (stock)
            self.prefix.mkdir(parents=True)
            self.prefix.chmod(0o755)
        for name in PRIVATE_DIRS:
            (self.dir / name).mkdir(exist_ok=True)
        os.chmod(self.dir / "tmp", 0o1777)
        (self.dir / "user-data").write_bytes(user_data)
        (self.dir / "sshd_config").write_text(SSHD_CONFIG.format(
            ip=self.ip, host_key=boot_host_key(self.dir.parent)))
        if ca_bundle:  # the node trusts the local cloud's CA system-wide (s3fs reads only this)
            local_ca = Path(ca_bundle).read_bytes()
            system = Path(SYSTEM_CA_BUNDLE).read_bytes() if Path(SYSTEM_CA_BUNDLE).exists() else b""
            (self.dir / "ca-certificates.crt").write_bytes(system + b"\n" + local_ca)
            # and the local CA alone, for botocore (AWS_CA_BUNDLE): every client loads its
            # bundle, ~35 ms of CPU for the system's, ~0.1 ms for one certificate
            (self.dir / "etc" / LOCAL_CA_NAME).write_bytes(local_ca)
            (self.dir / "etc" / LOCAL_CA_NAME).chmod(0o644)
        if self.resolver:
            for name, text in name_files(self.resolver, self.region).items():
                (self.dir / name).write_text(text)

    def _network(self) -> None:
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
            "netns", self.netns)
        run("ip", "link", "set", self.veth, "master", BRIDGE, "up")
        run("ip", "-n", self.netns, "addr", "add", f"{self.ip}/{PREFIXLEN}", "dev", "eth0")
        run("ip", "-n", self.netns, "link", "set", "eth0", "up")
        run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def _binds(self) -> list[tuple[Path, str]]:
        """(source on the host, path in the node): what the node keeps to itself."""
        binds = [(self.dir / name, path) for name, path in PRIVATE_DIRS.items()]
        if (self.dir / "ca-certificates.crt").exists():
            binds.append((self.dir / "ca-certificates.crt", SYSTEM_CA_BUNDLE))
        if self.prefix is not None:
            binds.append((self.prefix, NODE_PREFIX))
        if self.resolver:
            binds += [(self.dir / name, path) for name, path in NAME_FILES.items()
                      if os.path.exists(path)]
        return binds

    def _spawn_anchor(self) -> None:
        ready = self.dir / "anchor.ready"
        ready.unlink(missing_ok=True)
        mounts = [f"mount --bind {src} {dst}" for src, dst in self._binds()]
        script = " && ".join([f"hostname {self.hostname}", *mounts, f"touch {ready}",
                              "exec sleep infinity"])
        with open(self.dir / "anchor.log", "ab") as log:
            self.anchor = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--mount",
                 "--propagation", "private", "--", "/bin/sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        (self.dir / "anchor.pid").write_text(str(self.anchor.pid))
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.anchor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.instance_id} failed to start: "
                                   f"{(self.dir / 'anchor.log').read_text()[-500:]}")
            time.sleep(0.01)

    def anchor_pid(self) -> int | None:
        try:
            return int((self.dir / "anchor.pid").read_text())
        except (OSError, ValueError):
            return None

    def _enter_cmd(self) -> list[str]:
        return ["nsenter", "-t", str(self.anchor_pid()), "-n", "-u", "-m", "--"]

    def nsenter(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the node (as root)."""
        return run(*self._enter_cmd(), *cmd, check=check)

    def stop(self, keep_dir: bool = False) -> None:
        """Kill everything in the node, then drop its namespaces and files."""
        destroy(self.instance_id, self.dir.parent, keep_dir=keep_dir)

    def shutdown(self, grace: float) -> None:
        """An orderly power-off: SIGTERM to the node's services (its agent deregisters),
        up to `grace` seconds for them to exit, then stop()."""
        anchor = self.anchor_pid()
        pids = [int(p) for p in run("ip", "netns", "pids", self.netns, check=False).stdout.split()
                if p.isdigit() and int(p) != anchor]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop()


def leftover(instance_id: str, root: Path) -> bool:
    """Anything of a node with this id (its directory, namespace or veth), read from the file
    system: starting 64 new nodes should not cost 64 x 3 `ip` processes for nothing."""
    return any(Path(p).exists() for p in (Path(root) / instance_id,
                                          f"/run/netns/{netns_name(instance_id)}",
                                          f"/sys/class/net/{veth_name(instance_id)}"))


def destroy(instance_id: str, root: Path, keep_dir: bool = False) -> None:
    """Tear a node down by id; safe on half-made or stale nodes."""
    netns = netns_name(instance_id)
    try:
        anchor = {int((Path(root) / instance_id / "anchor.pid").read_text())}
    except (OSError, ValueError):
        anchor = set()
    killed: set[int] = set()
    for _ in range(5):  # again, for anything forked meanwhile (sshd children, the watch loop)
        res = run("ip", "netns", "pids", netns, check=False)
        pids = {int(p) for p in res.stdout.split() if p.isdigit()} | (anchor - killed)
        if not pids - killed:
            break
        for pid in pids - killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= pids
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
    # Delete the veth ourselves: a namespace the kernel still holds (sockets) would keep it.
    run("ip", "link", "del", veth_name(instance_id), check=False)
    if not keep_dir:
        shutil.rmtree(Path(root) / instance_id, ignore_errors=True)
    run("ip", "netns", "del", netns, check=False)  # last: its name is what says the node exists


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False
