"""The local cloud's one daemon: moto's control plane and the metadata emulator on the
bridge gateway, and the node runner that turns every running instance into a namespace
node (nodes.py) and tears it down when the instance goes. Started by control.ensure_up().
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from ..aws.images import TAG_BAKE, TAG_BUILDER
from . import firewall, nodes
from .control import REGION, LocalCloudInfo, session
from .credentials import CredentialStore
from .image import image_dir, register_images, wheelhouse
from .names import NameServer
from .pkgindex import PackageIndex, write_package_stubs

POLL = 0.25            # how often the node runner looks at moto's instances (s)
TERM_GRACE = 3.0       # SIGTERM -> SIGKILL on instance termination, like a shutdown
log = logging.getLogger("ec2mpi.localcloud")

# The local cloud's shared storage for a node, run by the agent as HOOK KIND ID PATH (the
# agent then gives the mount's root to the cluster user). EFS is emulated by one host
# directory per file system (this kernel has no NFS): a shell script, as every node of a
# cluster runs it while booting. s3fs is real s3fs-fuse against the control plane's S3, over
# TLS, with the node's own role credentials (MOUNT_HOOK_S3FS).
MOUNT_HOOK = """#!/bin/bash
set -eu
kind="$1" storage_id="$2" path="$3"
case "$kind" in
  efs) src={efs_root}/"$storage_id"
       mkdir -p "$src" "$path"
       exec mount --bind "$src" "$path" ;;
  s3fs) exec /usr/bin/python3 {s3fs_hook} "$@" ;;
  *) echo "unknown storage kind $kind" >&2; exit 2 ;;
esac
"""

MOUNT_HOOK_S3FS = """#!/usr/bin/python3
# ec2mpi local cloud: s3fs for a node (see MOUNT_HOOK in ec2mpi/localcloud/daemon.py).
import json, os, pwd, subprocess, sys
import urllib.request
kind, storage_id, path = sys.argv[1:4]
cfg = json.load(open("/etc/ec2mpi/agent.json"))
user = pwd.getpwnam(cfg.get("user", "ec2mpi"))
os.makedirs(path, exist_ok=True)
# The node's own role credentials, from the metadata service like s3fs's iam_role
# option would (which only knows the link-local address), handed over in s3fs's env.
imds = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/") + "/latest/"
def get(path, token=None, method="GET"):
    headers = {{"X-aws-ec2-metadata-token": token}} if token else {{
        "X-aws-ec2-metadata-token-ttl-seconds": "300"}}
    req = urllib.request.Request(imds + path, method=method, headers=headers)
    return urllib.request.urlopen(req, timeout=5).read().decode()
token = get("api/token", method="PUT")
role = get("meta-data/iam/security-credentials/", token).split()[0]
creds = json.loads(get("meta-data/iam/security-credentials/" + role, token))
env = dict(os.environ, AWSACCESSKEYID=creds["AccessKeyId"],
           AWSSECRETACCESSKEY=creds["SecretAccessKey"], AWSSESSIONTOKEN=creds["Token"])
remote = "%s:/clusters/%s/shared" % (cfg["bucket"], cfg["cluster"])
subprocess.run(["s3fs", remote, path, "-o", ",".join([
    "url=" + {endpoint!r}, "use_path_request_style", "endpoint=" + cfg["region"],
    "allow_other", "nonempty", "uid=%d" % user.pw_uid, "gid=%d" % user.pw_gid, "umask=0022",
    "mp_umask=0022", "dbglevel=warn", "retries=3"])], check=True, env=env)
"""


class Daemon:
    """Control plane + IMDS + node runner, until SIGTERM."""

    def __init__(self, state: Path):
        self.state = state
        self.nodes_root = state / "nodes"
        self.views: dict[str, object] = {}        # private ip -> InstanceView (for the IMDS)
        self.running: dict[str, nodes.Node] = {}  # instance id -> node
        self.failed: set[str] = set()
        self.due_terminations: dict[str, float] = {}
        self.releasing: set[str] = set()          # addresses of nodes being torn down
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="node")
        # a new instance's user data and role, asked in parallel (API calls, mostly waiting)
        self.lookups = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lookup")
        self.described: dict[str, dict] = {}      # instance id -> its DescribeInstances entry
        self.builders: set[str] = set()           # running nodes of bake-image builders

    def run(self) -> None:
        from .controlplane import start as start_controlplane
        from .imds import ImdsServer
        try:
            nodes.ensure_bridge()
        except RuntimeError as err:
            log.error("%s", err)
            sys.exit(2)
        self.credentials = CredentialStore(self.state / "controlplane")
        self.credentials.client()      # before the control plane, which accepts only these
        self.cp = start_controlplane(self.state / "controlplane", host=nodes.GATEWAY,
                                     enforce=True, consoles=self.nodes_root)
        self.imds = ImdsServer(nodes.GATEWAY, 0, self.views.get).start()
        self.index = PackageIndex(nodes.GATEWAY, wheelhouse()).start()
        firewall.close(nodes.GATEWAY, [self.cp.endpoint, self.cp.http_endpoint, self.imds.url,
                                       self.index.url])
        self.names = NameServer(nodes.RESOLVER, 53, self.views.__contains__, REGION).start()
        info = LocalCloudInfo(endpoint=self.cp.endpoint, ca_path=self.cp.ca_path, region=REGION,
                              ssh_cidr=nodes.SUBNET, state_dir=str(self.state), pid=os.getpid(),
                              imds=self.imds.url, started=time.time())
        self.aws = session(info)
        self.ec2 = self.aws.client("ec2")
        self.images = register_images(self.ec2)     # kind -> image id
        self._write_hook(info)
        stubs = write_package_stubs(self.state / "package-stubs")
        self.node_env = {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds.url,
            "AWS_ENDPOINT_URL": self.cp.endpoint,
            # the local cloud's CA alone (nodes.py; the system bundle trusts it too, for s3fs)
            "AWS_CA_BUNDLE": f"{nodes.PRIVATE_DIRS['etc']}/{nodes.LOCAL_CA_NAME}",
            "AWS_DEFAULT_REGION": REGION,
            "EC2MPI_MOUNT_HOOK": str(self.state / "mount-hook"),
            "EC2MPI_SSHD_PIDFILE": "/run/ec2mpi/sshd.pid",
            "EC2MPI_LOCAL": "1",
            # no package manager of a node touches the host; pip installs from the bridge
            "PATH": f"{stubs}:{nodes.NODE_PATH}",
            **self.index.env_for(),
            # the agent's and the job supervisor's intervals, when tests shorten them
            **{k: v for k, v in os.environ.items()
               if k.startswith(("EC2MPI_WATCH_", "EC2MPI_JOB_"))},
        }
        tmp = self.state / "daemon.json.tmp"
        tmp.write_text(json.dumps(asdict(info)))
        tmp.rename(self.state / "daemon.json")
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        log.info("local cloud up: %s", info)
        last_gc = 0.0
        while not self.stopping.is_set():
            if not nodes.bridge_ready():  # never talk to the gateway address off the bridge
                log.error("bridge %s is gone; shutting down", nodes.BRIDGE)
                break
            try:
                self.reconcile()
                self.handle_faults()
                if time.monotonic() - last_gc > 5:
                    self.gc_storage()
                    last_gc = time.monotonic()
            except Exception:  # the daemon must outlive a bad poll
                log.exception("reconcile failed")
            self.stopping.wait(POLL)
        self.shutdown()

    def _write_hook(self, info: LocalCloudInfo) -> None:
        s3fs = self.state / "mount-hook-s3fs"
        s3fs.write_text(MOUNT_HOOK_S3FS.format(endpoint=info.endpoint))
        hook = self.state / "mount-hook"
        hook.write_text(MOUNT_HOOK.format(efs_root=shlex.quote(str(self.state / "efs")),
                                          s3fs_hook=shlex.quote(str(s3fs))))
        for path in (s3fs, hook):
            path.chmod(0o755)

    # -- the node runner --------------------------------------------------------
    def instances(self) -> list[dict]:
        """Pending and running instances only: terminated ones pile up and would make every poll
        heavier. The poll lists ids and states from the control plane's own endpoint (a
        hypervisor does not read EC2's API: DescribeInstanceStatus cost the emulator ~40 ms of
        XML at 32 instances, four times a second); an instance is described in full once,
        through the EC2 API, when it shows up."""
        url = f"{self.cp.http_endpoint}/_ec2mpi/ec2/live-instances?region={REGION}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            ids = list(json.load(answer)["instances"])
        new = [iid for iid in ids if iid not in self.described]
        live = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        for at in range(0, len(new), 200):
            pages = self.ec2.get_paginator("describe_instances").paginate(
                InstanceIds=new[at:at + 200], Filters=live)
            for page in pages:
                for res in page["Reservations"]:
                    for inst in res["Instances"]:
                        self.described[inst["InstanceId"]] = inst
        self.described = {iid: self.described[iid] for iid in ids if iid in self.described}
        return list(self.described.values())

    def reconcile(self) -> None:
        subnet = ipaddress.ip_network(nodes.SUBNET)
        live = {}
        for inst in self.instances():
            ip = inst.get("PrivateIpAddress")
            if (
                inst["State"]["Name"] in ("pending", "running")
                and ip
                and ipaddress.ip_address(ip) in subnet
            ):
                live[inst["InstanceId"]] = inst
        if self.builders:
            self.capture_images()   # before a terminated builder's node (and prefix) goes
        new = [inst for iid, inst in live.items()
               if iid not in self.running and iid not in self.failed]
        if new:
            self.start_nodes(new)
        for iid in [i for i in self.running if i not in live]:
            self.stop_node(iid, graceful=True)
        now = time.monotonic()
        due = [i for i, t in self.due_terminations.items() if t <= now]
        if due:
            self.ec2.terminate_instances(InstanceIds=due)
            for iid in due:
                self.due_terminations.pop(iid)

    def start_nodes(self, insts: list[dict]) -> None:
        """What the new instances need (user data, role) is asked in parallel, and a role once
        per profile (a fleet's instances share two): one instance at a time, 64 new instances
        kept the last one waiting for seconds. An instance whose questions fail is left for
        the next poll."""
        roles = {}
        for inst in insts:
            arn = inst.get("IamInstanceProfile", {}).get("Arn", "")
            if arn not in roles:
                roles[arn] = self.lookups.submit(self.role_of, inst)
        asked = [(inst, self.lookups.submit(self.user_data_of, inst["InstanceId"]))
                 for inst in insts]
        for inst, user_data in asked:
            try:
                self.start_node(inst, user_data.result(), roles[
                    inst.get("IamInstanceProfile", {}).get("Arn", "")].result())
            except Exception:  # asked again at the next poll
                log.exception("instance %s: could not prepare its node", inst["InstanceId"])

    def user_data_of(self, iid: str) -> bytes:
        attr = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        return base64.b64decode(attr.get("UserData", {}).get("Value", "") or b"")

    def start_node(self, inst: dict, user_data: bytes, role_and_id: tuple[str, str]) -> None:
        from .imds import InstanceView
        iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
        node = nodes.Node(self.nodes_root, iid, ip, prefix=self.prefix_for(inst),
                          resolver=nodes.RESOLVER, region=REGION)
        role, role_id = role_and_id
        key = self.credentials.issue(iid, role, role_id) if role else None
        self.views[ip] = InstanceView(
            instance_id=iid,
            private_ip=ip,
            instance_type=inst.get("InstanceType", ""),
            lifecycle="spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand",
            availability_zone=inst.get("Placement", {}).get("AvailabilityZone", REGION + "a"),
            region=REGION,
            hostname=node.hostname,
            role=role,
            credentials=(key.access_key_id, key.secret, key.token) if key else (),
            image_id=inst.get("ImageId", ""),
            tags={t["Key"]: t["Value"] for t in inst.get("Tags", [])},
            user_data=user_data,
        )
        self.running[iid] = node
        if self._is_builder(inst):
            self.builders.add(iid)
        log.info("starting node %s at %s", iid, ip)
        self.pool.submit(self._start, node, user_data)

    def prefix_for(self, inst: dict) -> Path:
        """What the node sees at the node prefix: an empty directory of its own for the stock
        image (user-data installs everything) and for a bake-image builder (whatever its
        base: the bake installs everything, and its prefix becomes the image); a captured
        image's directory for nodes of that image; the baked image's otherwise."""
        if inst.get("ImageId") == self.images.get("stock") or self._is_builder(inst):
            return self.nodes_root / inst["InstanceId"] / "prefix"
        captured = self.captured_dir(inst.get("ImageId", ""))
        if (captured / ".captured").exists():
            return captured
        return image_dir(self.state)

    @staticmethod
    def _is_builder(inst: dict) -> bool:
        return any(t["Key"] == TAG_BAKE for t in inst.get("Tags", []))

    def captured_dir(self, image_id: str) -> Path:
        return self.state / "images" / image_id

    def capture_images(self) -> None:
        """CreateImage from a builder (the image is tagged with it): copy the builder's
        prefix to STATE/images/AMI, which nodes of that AMI bind-mount. Runs in the pass that
        sees the builder terminated, before its node and prefix are torn down: the client
        makes the image before it terminates the builder, so the image is visible then."""
        images = self.ec2.describe_images(Owners=["self"], Filters=[
            {"Name": "tag-key", "Values": [TAG_BUILDER]}])["Images"]
        for image in images:
            dest = self.captured_dir(image["ImageId"])
            builder = {t["Key"]: t["Value"] for t in image.get("Tags", [])}.get(TAG_BUILDER)
            node = self.running.get(builder or "")
            if (dest / ".captured").exists() or node is None or node.prefix is None:
                continue
            started = time.monotonic()
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            res = subprocess.run(["cp", "-a", "--reflink=auto", str(node.prefix), str(tmp)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                log.error("image %s: capturing %s failed: %s", image["ImageId"], node.prefix,
                          res.stderr.strip()[-300:])
                continue
            (tmp / ".captured").write_text(builder or "")
            tmp.chmod(0o755)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            log.info("image %s captured from %s in %.2f s", image["ImageId"], builder,
                     time.monotonic() - started)

    def _start(self, node: nodes.Node, user_data: bytes) -> None:
        deadline = time.monotonic() + 2 * TERM_GRACE
        while node.ip in self.releasing and time.monotonic() < deadline:
            time.sleep(0.05)  # moto recycles addresses: let the old node give it up first
        try:
            started = time.monotonic()
            node.start(user_data, self.node_env, ca_bundle=self.cp.ca_path)
            log.info("node %s up in %.2f s (namespace and sshd; user-data started)",
                     node.instance_id, time.monotonic() - started)
        except Exception:
            log.exception("node %s failed to start", node.instance_id)
            self.failed.add(node.instance_id)

    def role_of(self, inst: dict) -> tuple[str, str]:
        """(role name, role id) of the instance's profile; ("", "") without one. Asked
        every time: a profile's role can change between launches (a resumed create)."""
        arn = inst.get("IamInstanceProfile", {}).get("Arn", "")
        if not arn:
            return "", ""
        try:
            profile = self.aws.client("iam").get_instance_profile(
                InstanceProfileName=arn.rsplit("/", 1)[-1])["InstanceProfile"]
            role = profile["Roles"][0]
            return role["RoleName"], role["RoleId"]
        except Exception:  # noqa: BLE001 - no role behind the profile: no credentials
            log.warning("instance %s: profile %s has no role", inst["InstanceId"], arn)
            return "", ""

    def stop_node(self, iid: str, graceful: bool) -> None:
        node = self.running.pop(iid)
        self.builders.discard(iid)
        self.imds.clear(iid)
        self.credentials.revoke(iid)     # a terminated instance's credentials stop working
        self.views.pop(node.ip, None)
        self.releasing.add(node.ip)
        log.info("stopping node %s (%s)", iid, "shutdown" if graceful else "killed")
        if graceful:
            self.pool.submit(self._stop, node, True)
        else:
            self._stop(node, False)

    def _stop(self, node: nodes.Node, graceful: bool) -> None:
        try:
            if graceful:  # like an EC2 shutdown: services get SIGTERM first (the agent deregisters)
                node.shutdown(TERM_GRACE)
            else:
                node.stop()
        finally:
            self.releasing.discard(node.ip)

    # -- faults -----------------------------------------------------------------
    def handle_faults(self) -> None:
        faults = self.state / "faults"
        for req in sorted(faults.glob("*.json")) if faults.exists() else []:
            iid = req.stem
            try:
                fault = json.loads(req.read_text())
            except ValueError:
                continue
            error = ""
            if iid not in self.running:
                error = f"no running local instance {iid}"
            elif fault["kind"] == "interrupt":
                grace = float(fault.get("grace", 20.0))
                at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=grace)
                self.imds.inject_interruption(iid, "terminate", at)
                self.due_terminations[iid] = time.monotonic() + grace
                log.info("spot interruption for %s in %.0f s", iid, grace)
            elif fault["kind"] == "kill":
                self.failed.add(iid)      # never restarted
                self.stop_node(iid, graceful=False)
                self.ec2.terminate_instances(InstanceIds=[iid])
            elif fault["kind"] == "slow":
                nodes.slow_link(iid, on=not fault.get("off"))
                log.info("link of %s: %s", iid, "full" if fault.get("off") else "slowed")
            (faults / f"{iid}.result").write_text(error)
            req.unlink()

    def gc_storage(self) -> None:
        """Drop emulated EFS directories whose file system no longer exists, and captured
        images that were deregistered."""
        images = self.state / "images"
        if images.exists():
            alive = {i["ImageId"] for i in self.ec2.describe_images(Owners=["self"])["Images"]}
            for path in images.iterdir():
                if path.name.split(".")[0] not in alive:
                    shutil.rmtree(path, ignore_errors=True)
        root = self.state / "efs"
        if not root.exists():
            return
        alive = {
            fs["FileSystemId"]
            for fs in self.aws.client("efs").describe_file_systems()["FileSystems"]
        }
        for path in root.iterdir():
            if path.name not in alive:
                shutil.rmtree(path, ignore_errors=True)

    def shutdown(self) -> None:
        self.lookups.shutdown(wait=True)
        self.pool.shutdown(wait=True)
        for iid in list(self.running):
            self.stop_node(iid, graceful=False)
        self.imds.stop()
        self.names.stop()
        self.cp.stop()
        firewall.open_again()
        nodes.delete_bridge()
        (self.state / "daemon.json").unlink(missing_ok=True)
        log.info("local cloud down")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="the ec2mpi local cloud daemon (started by ensure_up)")
    ap.add_argument("--state-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    Daemon(args.state_dir).run()


if __name__ == "__main__":
    main()
