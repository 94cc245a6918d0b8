"""The cluster's node roles: the ONLY AWS access a node has, one role per kind of node.

Why two roles: any process on a node can read its role's credentials, so a worker role must
grant only what a worker needs (read the cluster's keys and state, write its own node item).
The master runs healing, so its role may also mark nodes lost, launch from the cluster's
worker launch template and terminate the cluster's own instances, all scoped by resource,
tag or launch-template conditions. docs/internals.md has the table of who writes what.

Names carry the region (IAM is global, clusters are per region) and fit IAM's 64
characters; a role (and its instance profile) is adopted only if it is tagged with this
cluster and region.

Why each statement exists (Sid: reason). Worker and master:
- ReadOwnClusterObjects: the key bundle and the wheel under clusters/NAME/ (nothing else).
- ReadClusterAndEpoch: the cluster item (spec, role ids) and the membership counter.
- OwnNodeItem: a node writes only the item whose key ends with its own aws:userid.
- BumpTheEpochOnly: UpdateItem on the epoch item touching only the `epoch` attribute.
- AssumeTheJobRole (with create --job-policy-arn): the agent (root) assumes the job role
  and serves its credentials to the cluster user's jobs (agent/jobcreds.py).
- ListOwnSharedPrefix, WriteOwnSharedPrefix (s3fs only): s3fs lists and writes
  clusters/NAME/shared/, and nothing else of the bucket.
- S3fsBucketCheck (s3fs only): s3fs before 1.92 (Debian 12, Ubuntu 22.04) checks the
  bucket at mount with a listing that has no prefix at all, and exits if it is refused. It
  reveals object NAMES of the key bucket (never contents); docs/internals.md counts it.
Master only (healing):
- Membership, ListMembers: mark nodes lost, write the master state, list the members index,
  all under this cluster's leading keys.
- SeeInstances: Describe* cannot be scoped by resource (AWS: Resource "*").
- LaunchTaggedFromTheWorkerTemplate: RunInstances creates an instance, its root volume and
  its network interface; each must carry this cluster's tag (aws:RequestTag, which counts
  the request's TagSpecifications and the launch template's) and come from the worker
  template (ec2:LaunchTemplate). The worker template tags all three types for that reason.
- SpotRequestsOfTheLaunch: a spot launch also creates a spot-instances-request (EC2 User
  Guide, "Tag Spot Instance requests"), which we do not tag (a template that tags
  spot-instances-request fails on-demand launches); it launches nothing by itself: the
  instance, volume and interface of the same call still need the tag and the template.
- CreateTheFleetTagged: CreateFleet authorizes ec2:CreateFleet on the fleet, instance and
  volume it creates, with aws:RequestTag but WITHOUT ec2:LaunchTemplate (the Service
  Authorization Reference lists no such key for CreateFleet: a condition on it would never
  match); the template is pinned by resource ARN in UseTheClusterResources instead. An
  instant fleet also authorizes ec2:RunInstances with the caller's rights (the statements
  above), so both must allow it.
- UseTheClusterResources: the existing resources a launch names: the worker launch template
  (by id: the only template the master may launch from), subnets, the security group, the
  image, and this cluster's own placement group (a launch into a placement group is
  authorized on placement-group/NAME; no other group).
- TagOnlyAtLaunch: CreateTags only as part of RunInstances/CreateFleet (ec2:CreateAction)
  and only with this cluster's tag: the master cannot tag (adopt) an existing instance.
- TerminateOwnInstances: only instances already tagged with this cluster.
- PassTheWorkerRole: the instances it launches get the worker role, never the master's.
RunInstances' created and existing resources sit in different statements (the documented
AWS pattern: tag conditions apply only where tags are requested); every resource type
RunInstances and CreateFleet require is allowed by one of them (tests/unit/test_policy_lint).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..config import REGISTRY_TABLE, TAG_CLUSTER, ResourceNames, cluster_tags
from ..errors import CloudError, explain_client_error
from .registry import MEMBERS_INDEX
from .session import AwsSession, ClientError, error_code

POLICY_NAME = "ec2mpi-node"
TAG_REGION = "ec2mpi:region"
TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
KINDS = ("master", "worker")
BUILDER = "builder"     # the instance of `ec2mpi bake-image` (aws/images.py builder_policy)


@dataclass(frozen=True)
class PolicyScope:
    """Everything a node policy names: the cluster and where its state lives."""
    cluster: str
    bucket: str
    region: str
    account: str
    storage: str
    partition: str = "aws"
    launch_template_id: str = "*"     # the worker launch template (the master launches from it)
    worker_role_arn: str = ""         # what the master may pass to the instances it launches
    job_role_arn: str = ""            # the job role the agent assumes for jobs (or none)

    def arn(self, service: str, resource: str, region: bool = True, account: bool = True) -> str:
        return (f"arn:{self.partition}:{service}:{self.region if region else ''}:"
                f"{self.account if account else ''}:{resource}")

    @property
    def table(self) -> str:
        return self.arn("dynamodb", f"table/{REGISTRY_TABLE}")


def _leading(*keys: str, like: bool = False) -> dict:
    op = "ForAllValues:StringLike" if like else "ForAllValues:StringEquals"
    return {op: {"dynamodb:LeadingKeys": list(keys)}}


def worker_policy(scope: PolicyScope) -> dict:
    """Read the cluster's keys, wheel and state; write its own node item and bump the epoch."""
    c, prefix = scope.cluster, ResourceNames(scope.cluster).key_prefix
    statements = [
        {"Sid": "ReadOwnClusterObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"arn:{scope.partition}:s3:::{scope.bucket}/{prefix}*"]},
        {"Sid": "ReadClusterAndEpoch", "Effect": "Allow", "Action": ["dynamodb:GetItem"],
         "Resource": [scope.table], "Condition": _leading(c, f"{c}#epoch")},
        {"Sid": "OwnNodeItem", "Effect": "Allow",
         "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem"],
         "Resource": [scope.table], "Condition": _leading(f"{c}#node#${{aws:userid}}")},
        {"Sid": "BumpTheEpochOnly", "Effect": "Allow", "Action": ["dynamodb:UpdateItem"],
         "Resource": [scope.table],
         "Condition": {"ForAllValues:StringEquals": {
             "dynamodb:LeadingKeys": [f"{c}#epoch"],
             "dynamodb:Attributes": ["pk", "sk", "epoch"]}}},
    ]
    if scope.job_role_arn:
        statements.append(
            {"Sid": "AssumeTheJobRole", "Effect": "Allow", "Action": ["sts:AssumeRole"],
             "Resource": [scope.job_role_arn]})
    if scope.storage == "s3fs":
        shared = f"{prefix}shared/"
        statements += [
            {"Sid": "ListOwnSharedPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [f"arn:{scope.partition}:s3:::{scope.bucket}"],
             "Condition": {"StringLike": {"s3:prefix": [shared, f"{shared}*"]}}},
            {"Sid": "S3fsBucketCheck", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [f"arn:{scope.partition}:s3:::{scope.bucket}"],
             "Condition": {"Null": {"s3:prefix": "true"}}},
            {"Sid": "WriteOwnSharedPrefix", "Effect": "Allow",
             "Action": ["s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"arn:{scope.partition}:s3:::{scope.bucket}/{shared}*"]},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def master_policy(scope: PolicyScope) -> dict:
    """A worker's rights, plus what healing needs: membership, the master state, launching
    from the worker template, terminating the cluster's own instances. The module docstring
    says why each statement exists."""
    c = scope.cluster
    ec2 = scope.arn

    def arns(*kinds: str) -> list[str]:
        return [ec2("ec2", f"{kind}/*") for kind in kinds]

    lt_arn = ec2("ec2", f"launch-template/{scope.launch_template_id}")
    own_tag = {f"aws:RequestTag/{TAG_CLUSTER}": c}
    statements = worker_policy(scope)["Statement"] + [
        {"Sid": "Membership", "Effect": "Allow",
         "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem"],
         "Resource": [scope.table],
         "Condition": _leading(f"{c}#node#*", f"{c}#master", f"{c}#epoch", like=True)},
        {"Sid": "ListMembers", "Effect": "Allow", "Action": ["dynamodb:Query"],
         "Resource": [f"{scope.table}/index/{MEMBERS_INDEX}"], "Condition": _leading(c)},
        {"Sid": "SeeInstances", "Effect": "Allow",
         "Action": ["ec2:DescribeInstances", "ec2:DescribeInstanceTypes",
                    "ec2:DescribeSubnets", "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeLaunchTemplateVersions"],
         "Resource": ["*"]},
        {"Sid": "LaunchTaggedFromTheWorkerTemplate", "Effect": "Allow",
         "Action": ["ec2:RunInstances"],
         "Resource": arns("instance", "volume", "network-interface"),
         "Condition": {"StringEquals": own_tag, "ArnLike": {"ec2:LaunchTemplate": lt_arn}}},
        {"Sid": "SpotRequestsOfTheLaunch", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": arns("spot-instances-request")},
        {"Sid": "CreateTheFleetTagged", "Effect": "Allow", "Action": ["ec2:CreateFleet"],
         "Resource": arns("fleet", "instance", "volume"), "Condition": {"StringEquals": own_tag}},
        {"Sid": "UseTheClusterResources", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [lt_arn, *arns("subnet", "security-group"),
                      ec2("ec2", "image/*", account=False),
                      ec2("ec2", f"placement-group/{ResourceNames(c).placement_group}")]},
        {"Sid": "TagOnlyAtLaunch", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": arns("instance", "volume", "network-interface", "fleet"),
         "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateFleet"],
                                        **own_tag}}},
        {"Sid": "TerminateOwnInstances", "Effect": "Allow", "Action": ["ec2:TerminateInstances"],
         "Resource": arns("instance"),
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{TAG_CLUSTER}": c}}},
    ]
    if scope.worker_role_arn:
        statements.append(
            {"Sid": "PassTheWorkerRole", "Effect": "Allow", "Action": ["iam:PassRole"],
             "Resource": [scope.worker_role_arn],
             "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}})
    return {"Version": "2012-10-17", "Statement": statements}


class NodeRole:
    """One kind (master or worker) of a cluster's node role and instance profile; or the
    builder's of one bake-image run (its "cluster" is the bake's id)."""

    def __init__(self, session: AwsSession, cluster: str, kind: str = "worker"):
        if kind not in (*KINDS, BUILDER):
            raise ValueError(kind)
        self.iam = session.client("iam")
        self.cluster, self.kind, self.region = cluster, kind, session.region
        self.name = role_name(cluster, self.region, kind)

    def ensure(self, policy: dict) -> tuple[str, str, str]:
        """Role + inline policy + instance profile, idempotently: (profile ARN, role ARN,
        role id). A role of the same name that is not this cluster's is never adopted."""
        tags = cluster_tags(self.cluster, **{TAG_REGION: self.region})
        try:
            role = self.iam.create_role(RoleName=self.name, Tags=tags,
                                        AssumeRolePolicyDocument=json.dumps(TRUST),
                                        Description=f"ec2mpi {self.kind}s of cluster "
                                                    f"{self.cluster} in {self.region}")["Role"]
        except ClientError as err:
            if error_code(err) != "EntityAlreadyExists":
                raise explain_client_error("iam:CreateRole", err) from err
            role = self.iam.get_role(RoleName=self.name)["Role"]
            self._check_ours(role)
        self.put_policy(policy)
        try:
            self.iam.create_instance_profile(InstanceProfileName=self.name, Tags=tags)
        except ClientError as err:
            if error_code(err) != "EntityAlreadyExists":
                raise explain_client_error("iam:CreateInstanceProfile", err) from err
        profile = self._profile()
        self._check_profile_ours(profile)
        if not any(r["RoleName"] == self.name for r in profile.get("Roles", [])):
            try:
                self.iam.add_role_to_instance_profile(InstanceProfileName=self.name,
                                                      RoleName=self.name)
            except ClientError as err:
                if error_code(err) != "LimitExceeded":  # already has a role (a racing resume)
                    raise explain_client_error("iam:AddRoleToInstanceProfile", err) from err
            self._check_profile_ours(self._profile(), role_inside=True)
        return profile["Arn"], role["Arn"], role["RoleId"]

    def _profile(self) -> dict:
        try:
            return self.iam.get_instance_profile(InstanceProfileName=self.name)["InstanceProfile"]
        except ClientError as err:
            raise explain_client_error("iam:GetInstanceProfile", err) from err

    def put_policy(self, policy: dict) -> None:
        try:
            self.iam.put_role_policy(RoleName=self.name, PolicyName=POLICY_NAME,
                                     PolicyDocument=json.dumps(policy))
        except ClientError as err:
            raise explain_client_error("iam:PutRolePolicy", err) from err

    def _check_ours(self, role: dict) -> None:
        tags = role.get("Tags") or self.iam.list_role_tags(RoleName=self.name).get("Tags", [])
        self._refuse_unless_ours("IAM role", tags)

    def _check_profile_ours(self, profile: dict, role_inside: bool = False) -> None:
        """The instance profile of our name must be tagged ours too, and hold no other role
        (nodes would run with it); `role_inside`: it must hold ours."""
        self._refuse_unless_ours("IAM instance profile", profile.get("Tags") or [])
        roles = [r["RoleName"] for r in profile.get("Roles", [])]
        if any(r != self.name for r in roles) or (role_inside and self.name not in roles):
            raise CloudError(f"IAM instance profile {self.name} holds role(s) "
                             f"{', '.join(roles) or 'none'}, not {self.name}",
                             "remove the other role from it, or delete the profile and "
                             "re-run the command")

    def _refuse_unless_ours(self, what: str, tag_list: list) -> None:
        tags = {t["Key"]: t["Value"] for t in tag_list}
        if tags.get(TAG_CLUSTER) != self.cluster or tags.get(TAG_REGION) != self.region:
            raise CloudError(f"{what} {self.name} exists but is not cluster {self.cluster}'s "
                             f"in {self.region} (tags {tags})",
                             "it was made by someone else: delete or rename it, or choose "
                             "another cluster name")

    def wait_usable(self, timeout: float = 60.0) -> None:
        """IAM is eventually consistent: wait until the profile shows its role (bounded)."""
        waiter = self.iam.get_waiter("instance_profile_exists")
        waiter.wait(InstanceProfileName=self.name,
                    WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(timeout))})

    def policy(self) -> dict | None:
        try:
            doc = self.iam.get_role_policy(RoleName=self.name,
                                           PolicyName=POLICY_NAME)["PolicyDocument"]
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise explain_client_error("iam:GetRolePolicy", err) from err
        return json.loads(doc) if isinstance(doc, str) else doc

    def exists(self) -> dict:
        """Which of role / profile exist (for destroy's verification and tests)."""
        out = {}
        for kind, call in (("role", lambda: self.iam.get_role(RoleName=self.name)),
                           ("instance_profile", lambda: self.iam.get_instance_profile(
                               InstanceProfileName=self.name))):
            try:
                call()
                out[kind] = True
            except ClientError as err:
                if error_code(err) != "NoSuchEntity":
                    raise explain_client_error(f"iam:Get{kind.title().replace('_', '')}",
                                               err) from err
                out[kind] = False
        return out

    def delete(self) -> list[str]:
        """Profile (after detaching the role), inline policies, role. Missing parts are fine;
        a role or profile that is not this cluster's is left alone (CloudError says so)."""
        removed = []
        try:
            self._check_ours(self.iam.get_role(RoleName=self.name)["Role"])
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise explain_client_error("iam:GetRole", err) from err
        try:
            profile = self.iam.get_instance_profile(
                InstanceProfileName=self.name)["InstanceProfile"]
            self._refuse_unless_ours("IAM instance profile", profile.get("Tags") or [])
            for role in profile.get("Roles", []):
                self.iam.remove_role_from_instance_profile(InstanceProfileName=self.name,
                                                           RoleName=role["RoleName"])
            self.iam.delete_instance_profile(InstanceProfileName=self.name)
            removed.append(f"instance-profile/{self.name}")
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise explain_client_error("iam:DeleteInstanceProfile", err) from err
        try:
            for pname in self.iam.list_role_policies(RoleName=self.name)["PolicyNames"]:
                self.iam.delete_role_policy(RoleName=self.name, PolicyName=pname)
            for att in self.iam.list_attached_role_policies(RoleName=self.name)["AttachedPolicies"]:
                self.iam.detach_role_policy(RoleName=self.name, PolicyArn=att["PolicyArn"])
            for attempt in range(5):
                try:
                    self.iam.delete_role(RoleName=self.name)
                    break
                except ClientError as err:
                    if error_code(err) != "DeleteConflict" or attempt == 4:
                        raise
                    time.sleep(0.5 * 2 ** attempt)
            removed.append(f"role/{self.name}")
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise explain_client_error("iam:DeleteRole", err) from err
        return removed


def role_name(cluster: str, region: str, kind: str) -> str:
    """ec2mpi-NAME-REGION-KIND: at most 7 + 32 + 1 + 15 + 1 + 6 = 62 characters."""
    return f"ec2mpi-{cluster}-{region}-{kind}"
