"""The cluster spec and the names derived from it: the one source of truth for both.

Everything ec2mpi creates is named and tagged from here, so `destroy` can find it all
and nothing else has to invent a name.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass

from .errors import UserError

TAG_CLUSTER = "ec2mpi:cluster"   # on every resource: the sweep key for destroy
TAG_ROLE = "ec2mpi:role"         # master | worker, on instances
TAG_LAUNCH = "ec2mpi:launch"     # idempotency token of the launch that made an instance
REGISTRY_TABLE = "ec2mpi-registry"
CLUSTER_USER = "ec2mpi"
SHARED_PATH = "/shared"
NODE_PREFIX = "/opt/ec2mpi"      # node venv lives at NODE_PREFIX/venv on every node
STORAGE_KINDS = ("efs", "s3fs", "none")
DEFAULT_INSTANCE_TYPES = ("c6i.large", "c6a.large", "c5.large")
DEFAULT_IMAGE_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
# the default image per architecture of the instance types (Graviton types are arm64)
DEFAULT_IMAGE_PARAMETERS = {
    "x86_64": DEFAULT_IMAGE_PARAMETER,
    "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}
SPOT_FALLBACKS = ("none", "on-demand")   # what a launch does when spot capacity runs out
MAX_NODES = 1000

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
# What the spec lets through to ssh_config, user-data and command lines: plain words only.
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
_SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_IMAGE_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
_POLICY_ARN_RE = re.compile(r"^arn:aws(-[a-z]+)*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")


def validate_name(name: str) -> str:
    """Cluster names end up in IAM, EC2 and S3 names: keep them short and plain."""
    if not isinstance(name, str) or not name:
        raise UserError(
            "cluster name is empty",
            "give a name like 'demo' (a-z, 0-9, '-', at most 32 characters)",
        )
    if len(name) > 32:
        raise UserError(
            f"cluster name {name!r} is too long ({len(name)} > 32 characters)", "use a shorter name"
        )
    if not _NAME_RE.match(name):
        raise UserError(
            f"invalid cluster name {name!r}",
            "use lower-case letters, digits and '-', starting with a letter and not ending "
            "with '-'",
        )
    return name


DEFAULT_AUTOSTOP = 3600     # s: clusters with shared storage stop after an idle hour
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smh]?)$")


def parse_duration(value) -> int:
    """Seconds from '90s', '45m', '2h' or plain minutes ('30'); 'off' (or 0) is 0."""
    text = str(value).strip().lower()
    if text in ("off", "0", "none", "no"):
        return 0
    match = _DURATION_RE.match(text)
    if not match:
        raise UserError(f"duration {value!r} is not understood",
                        "give minutes (30), or a number with a unit: 90s, 45m, 2h; or off")
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "": 60}[match.group(2)]
    if not 10 <= seconds <= 7 * 24 * 3600:
        raise UserError(f"duration {value!r} is out of range", "use 10s to 7 days, or off")
    return int(seconds)


def format_duration(seconds: float) -> str:
    """'90s', '45m', '2h', '1h30m': the shortest honest form."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    hours, rest = divmod(minutes, 60)
    return f"{hours}h{rest:02d}m".replace("h00m", "h") if hours else f"{minutes}m"


def parse_count(value, what: str = "node count") -> int:
    """A positive whole number of nodes, from an int or the user's text."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        raise UserError(
            f"{what} {value!r} is not a number", "give a whole number such as 4"
        ) from None
    if n < 1:
        raise UserError(f"{what} must be at least 1 (got {n})", "give a whole number such as 4")
    if n > MAX_NODES:
        raise UserError(
            f"{what} {n} is more than {MAX_NODES}", "split the work over several clusters"
        )
    return n


def parse_instance_types(value) -> tuple[str, ...]:
    """'c6i.large,c5.large' or a list -> a tuple of syntactically valid type names."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    types = tuple(t.strip() for t in items if t and t.strip())
    if not types:
        raise UserError(
            "no instance type given", "give one or more, e.g. --instance-type c6i.large,c5.large"
        )
    for t in types:
        if not _TYPE_RE.match(t):
            raise UserError(f"unknown instance type {t!r}", "use EC2 type names such as c6i.large")
    return types


def parse_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise UserError(
            f"invalid --ssh-cidr {value!r}", "give your address as a CIDR, e.g. 203.0.113.7/32"
        ) from None


@dataclass(frozen=True)
class ClusterSpec:
    """What the user asked for. Stored (as JSON) in the registry's cluster item."""

    name: str
    nodes: int = 2
    instance_types: tuple[str, ...] = DEFAULT_INSTANCE_TYPES
    spot: bool = True
    storage: str = "efs"
    region: str | None = None
    ssh_cidr: str | None = None
    image_id: str | None = None
    placement_group: bool = False
    subnet_ids: tuple[str, ...] = ()
    shared_path: str = SHARED_PATH
    user: str = CLUSTER_USER
    master_spot: bool = False         # the master runs healing and jobs: on-demand by default
    keep_size: bool | None = None     # replace lost nodes; None = on for spot clusters
    job_policy_arns: tuple[str, ...] = ()  # what jobs may do in AWS (a job role); () = nothing
    spot_fallback: str = "none"       # spot ran out in every pool: "on-demand" launches the rest
    autostop: int | None = None       # idle seconds before the cluster stops; 0 off, None default

    def __post_init__(self):
        validate_name(self.name)
        object.__setattr__(self, "nodes", parse_count(self.nodes))
        object.__setattr__(self, "instance_types", parse_instance_types(self.instance_types))
        object.__setattr__(self, "subnet_ids", tuple(self.subnet_ids or ()))
        if self.storage not in STORAGE_KINDS:
            raise UserError(
                f"unknown storage {self.storage!r}", f"choose one of {', '.join(STORAGE_KINDS)}"
            )
        if self.ssh_cidr:
            object.__setattr__(self, "ssh_cidr", parse_cidr(self.ssh_cidr))
        if not _PATH_RE.match(self.shared_path) or "/../" in self.shared_path + "/":
            raise UserError(f"shared path {self.shared_path!r} is not a plain absolute path",
                            "use e.g. /shared")
        if not _USER_RE.match(self.user):
            raise UserError(f"cluster user {self.user!r} is not a plain user name",
                            "use lower-case letters, digits, '_' and '-', e.g. ec2mpi")
        if any(not _SUBNET_RE.match(s) for s in self.subnet_ids):
            raise UserError(f"malformed subnet id in {', '.join(self.subnet_ids)}",
                            "use ids such as subnet-0123456789abcdef0")
        object.__setattr__(self, "job_policy_arns", parse_policy_arns(self.job_policy_arns))
        if self.spot_fallback not in SPOT_FALLBACKS:
            raise UserError(f"unknown spot fallback {self.spot_fallback!r}",
                            f"choose one of {', '.join(SPOT_FALLBACKS)}")
        if self.autostop is not None:
            object.__setattr__(self, "autostop", parse_duration(self.autostop)
                               if isinstance(self.autostop, str) else int(self.autostop))
        if self.image_id and not _IMAGE_RE.match(self.image_id):
            raise UserError(f"malformed image id {self.image_id!r}",
                            "use an AMI id such as ami-0123456789abcdef0")

    @property
    def autostop_seconds(self) -> int:
        """None means the default: an idle hour with shared storage, never without (job
        output would live on the master's disk, which stopping throws away)."""
        if self.autostop is None:
            return DEFAULT_AUTOSTOP if self.storage != "none" else 0
        return self.autostop

    @property
    def keeps_size(self) -> bool:
        """Replace lost nodes? On by default for spot clusters (capacity comes and goes)."""
        return self.spot if self.keep_size is None else self.keep_size

    @classmethod
    def from_mapping(cls, data: dict) -> ClusterSpec:
        """Build from a template or the registry; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown cluster setting(s): {', '.join(unknown)}",
                            f"known settings: {', '.join(sorted(known))}")
        return cls(**data)

    def to_mapping(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes) -> ClusterSpec:
        return dataclasses.replace(self, **changes)


def parse_policy_arns(value) -> tuple[str, ...]:
    """IAM managed policy ARNs, comma-separated or a list (job roles attach them)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    arns = tuple(dict.fromkeys(a.strip() for a in items if a.strip()))
    bad = [a for a in arns if not _POLICY_ARN_RE.match(a)]
    if bad:
        raise UserError(f"not an IAM policy ARN: {', '.join(bad)}",
                        "use e.g. arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess or "
                        "arn:aws:iam::123456789012:policy/my-job-policy")
    if len(arns) > 10:
        raise UserError(f"{len(arns)} job policies; IAM attaches at most 10 to a role",
                        "combine them into one customer-managed policy")
    return arns


@dataclass(frozen=True)
class ResourceNames:
    """Every per-cluster AWS name, derived from the cluster name alone (IAM names, which
    also need the region, come from aws.iam.role_name)."""

    cluster: str

    @property
    def base(self) -> str:
        return f"ec2mpi-{self.cluster}"

    @property
    def security_group(self) -> str:
        return self.base

    def launch_template(self, kind: str) -> str:
        """master | worker: each kind of node has its own template (its own role)."""
        return f"{self.base}-{kind}"

    @property
    def placement_group(self) -> str:
        return self.base

    @property
    def efs_token(self) -> str:
        return self.base

    @property
    def key_prefix(self) -> str:
        return f"clusters/{self.cluster}/"


def bucket_name(account_id: str, region: str) -> str:
    """One private key-store bucket per account and region."""
    return f"ec2mpi-{account_id}-{region}"


def cluster_tags(name: str, **extra: str) -> list[dict]:
    tags = {TAG_CLUSTER: name, **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]
