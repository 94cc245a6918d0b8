"""What a node knows about itself: the user-data parameters (AgentParams), where it reads
and writes (AgentPaths: every path hangs off a root, so tests run in a sandbox), and its
identity from the instance metadata service."""
from __future__ import annotations

import json
import os
import pwd
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # annotations only: the job commands need neither boto3 nor urllib
    from ..aws.node_session import NodeSession
    from .imds import Imds


@dataclass(frozen=True)
class AgentParams:
    """The user-data parameters, as the stub writes them to /etc/ec2mpi/agent.json."""
    cluster: str
    region: str
    bucket: str
    table: str
    version: str
    wheel_key: str
    storage: str
    storage_id: str
    shared_path: str
    user: str
    prefix: str
    role: str = "worker"      # master | worker (which template and instance role launched it)
    account: str = ""         # the account that must own the bucket

    @classmethod
    def load(cls, path) -> AgentParams:
        data = json.loads(Path(path).read_text())
        return cls(**{f.name: str(data[f.name]) for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent reads and writes; root='/' on a node, a tmp dir in tests."""
    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return Path(self.root) / path.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.at("/etc/ec2mpi")

    @property
    def agent_json(self) -> Path:
        return self.etc / "agent.json"

    @property
    def known_hosts(self) -> Path:
        return self.etc / "ssh_known_hosts"

    @property
    def host_key(self) -> Path:
        return self.etc / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.etc / "sshd_config"

    @property
    def sshd_dropin(self) -> Path:
        return self.at("/etc/ssh/sshd_config.d/00-ec2mpi.conf")

    @property
    def log_dir(self) -> Path:
        return self.at("/var/log/ec2mpi")

    @property
    def state(self) -> Path:
        return self.at("/var/lib/ec2mpi/node.json")

    @property
    def run(self) -> Path:
        return self.at("/run/ec2mpi")

    def shared(self, params: AgentParams) -> Path:
        return self.at(params.shared_path)

    def home(self, user: str) -> Path:
        """The real home on a node; a sandboxed one under a test root."""
        if Path(self.root) == Path("/"):
            return Path(pwd.getpwnam(user).pw_dir)
        return self.at("/home/" + user)

    def hostfile_dirs(self, params: AgentParams) -> list[Path]:
        """/etc/ec2mpi, plus a copy on shared storage when there is any (never on the root disk)."""
        if params.storage == "none":
            return [self.etc]
        return [self.etc, self.shared(params) / ".ec2mpi"]


@dataclass
class Identity:
    instance_id: str
    private_ip: str
    hostname: str
    instance_type: str
    lifecycle: str
    image: str = ""


def identity(imds: Imds) -> Identity:
    life = (imds.get("meta-data/instance-life-cycle") or "on-demand").strip()
    return Identity(imds.meta("instance-id"), imds.meta("local-ipv4"),
                    imds.meta("local-hostname").split(".")[0], imds.meta("instance-type"),
                    "spot" if life == "spot" else "on-demand",
                    (imds.get("meta-data/ami-id") or "").strip())


def session_for(params: AgentParams, wait: float = 0.0) -> NodeSession:
    """Instance-role credentials (via IMDS); endpoint and CA only when the local cloud sets
    them. With `wait`, until the role's credentials are there (at most that many seconds):
    right after launch they can be missing for a while (a new instance profile propagating,
    a metadata service slow to answer). The session speaks DynamoDB and S3 itself (see
    aws/node_session.py: a booting node imports no boto3)."""
    import logging
    import random
    import time

    from ..aws.node_session import NodeSession
    deadline = time.monotonic() + wait
    tries = 0
    while True:
        aws = NodeSession(region=params.region,
                         endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                         ca_bundle=os.environ.get("AWS_CA_BUNDLE") or None)
        tries += 1
        if wait <= 0 or aws.has_credentials():
            return aws
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no instance-role credentials from the metadata service after "
                               f"{tries} tries in {wait:.0f} s (does the instance have the "
                               "cluster's instance profile?)")
        logging.getLogger("ec2mpi.agent").warning(
            "no instance-role credentials yet (try %d); asking the metadata service again", tries)
        time.sleep(min(10.0, 0.5 * 2 ** tries) * (0.5 + random.random()))
