"""Render the user-data stub from bootstrap/. It carries only non-secret parameters."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "bootstrap" / "userdata.sh.tmpl"
MAX_BYTES = 16 * 1024  # EC2's limit on raw user-data


@dataclass(frozen=True)
class UserDataParams:
    cluster: str
    region: str
    bucket: str
    table: str
    version: str          # the client's ec2mpi version, installed on the node
    wheel_key: str        # S3 key of the client's own ec2mpi wheel, under clusters/NAME/
    storage: str          # efs | s3fs | none
    storage_id: str       # EFS file-system id, or "" ; for s3fs the bucket prefix is derived
    shared_path: str
    user: str
    prefix: str           # node install prefix, e.g. /opt/ec2mpi
    role: str = "worker"  # master | worker: which launch template (and instance role) this is
    account: str = ""     # the account that must own the bucket (ExpectedBucketOwner)


def render(params: UserDataParams) -> str:
    """The stub, with the parameters twice: as shell variables for its own steps, and as the
    agent's agent.json (so that no interpreter starts just to write a file)."""
    return _fill(TEMPLATE.read_text(), params,
                 agent_json=shlex.quote(json.dumps(asdict(params), indent=1)))


def _fill(text: str, params, **verbatim: str) -> str:
    """Substitute @NAME@ placeholders with shell-quoted values, then `verbatim` ones as
    they are (an embedded script keeps its own @...@); within EC2's size limit."""
    for key, value in asdict(params).items():
        text = text.replace(f"@{key.upper()}@", shlex.quote(str(value)))
    for key, value in verbatim.items():
        text = text.replace(f"@{key.upper()}@", value)
    if len(text.encode()) > MAX_BYTES:
        raise ValueError(f"user-data is {len(text.encode())} bytes, over EC2's {MAX_BYTES}")
    return text


BAKE_TEMPLATE = TEMPLATE.parent / "bake-userdata.sh.tmpl"
BAKE_SCRIPT = TEMPLATE.parent / "bake-ami.sh"


@dataclass(frozen=True)
class BakeParams:
    """The builder's user-data (`ec2mpi bake-image`): where its wheel is, where it reports."""
    region: str
    bucket: str
    account: str
    wheel_key: str
    status_key: str
    version: str
    prefix: str


def render_bake(params: BakeParams) -> str:
    """The builder stub with bake-ami.sh embedded (one script, run by user-data)."""
    return _fill(BAKE_TEMPLATE.read_text(), params,
                 bake_script=BAKE_SCRIPT.read_text().rstrip("\n"))
