"""The local cloud daemon and its lifecycle: `ensure_up`, `down`, `status`, faults.

CONTRACT (used by the CLI): `ensure_up()` starts the local cloud if needed (root
required) and returns LocalCloudInfo; `session(info)` gives the AwsSession that talks
to it with dummy credentials. Implementation in progress.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LocalCloudInfo:
    endpoint: str         # https://GATEWAY:PORT (moto over TLS)
    ca_path: str          # CA bundle verifying `endpoint`
    region: str           # always us-east-1
    ssh_cidr: str         # the bridge subnet: the "user's own address" for the security group
    state_dir: str
    pid: int


def ensure_up(progress=None) -> LocalCloudInfo:
    raise NotImplementedError


def status() -> dict | None:
    """None when the local cloud is down; else a dict (pid, endpoint, nodes, uptime, ...)."""
    raise NotImplementedError


def down() -> None:
    raise NotImplementedError


def session(info: LocalCloudInfo):
    from ..aws.session import AwsSession
    return AwsSession(region=info.region, endpoint_url=info.endpoint, ca_bundle=info.ca_path,
                      credentials={"aws_access_key_id": "local", "aws_secret_access_key": "local"})


def interrupt(instance_id: str, grace: float = 10.0) -> None:
    """Serve a spot interruption notice to the node, terminate it after `grace` seconds."""
    raise NotImplementedError


def kill(instance_id: str) -> None:
    """Remove the node abruptly (no notice, no deregistration)."""
    raise NotImplementedError
