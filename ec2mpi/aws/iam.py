"""The per-cluster instance role and profile: the ONLY AWS access a node has.

Why least privilege: a compromised node must not reach another cluster's keys or
registry items. So S3 access is scoped to clusters/NAME/, DynamoDB access to items
whose partition key is NAME (dynamodb:LeadingKeys), and EC2 to two read calls, which
cannot be resource-scoped (the documented exception for Describe*).
"""
from __future__ import annotations

import json
import time

from ..config import REGISTRY_TABLE, ResourceNames, cluster_tags
from ..errors import explain_client_error
from .session import AwsSession, ClientError, error_code

POLICY_NAME = "ec2mpi-node"
TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
# Transactions are authorised per item action; ConditionCheckItem covers ConditionCheck.
REGISTRY_ACTIONS = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
]
EC2_READ_ACTIONS = ["ec2:DescribeInstances", "ec2:DescribeInstanceTypes"]


def node_policy(cluster: str, bucket: str, region: str, account: str, storage: str,
                partition: str = "aws") -> dict:
    """The inline policy document for one cluster's nodes."""
    prefix = ResourceNames(cluster).key_prefix
    table_arn = f"arn:{partition}:dynamodb:{region}:{account}:table/{REGISTRY_TABLE}"
    statements = [
        {
            "Sid": "ReadOwnClusterObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:{partition}:s3:::{bucket}/{prefix}*"],
        },
        {
            "Sid": "OwnRegistryItems",
            "Effect": "Allow",
            "Action": REGISTRY_ACTIONS,
            "Resource": [table_arn],
            "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [cluster]}},
        },
        {
            "Sid": "DescribeRegistryTable",
            "Effect": "Allow",
            "Action": ["dynamodb:DescribeTable"],
            "Resource": [table_arn],
        },
        {"Sid": "Ec2ReadOnly", "Effect": "Allow", "Action": EC2_READ_ACTIONS, "Resource": ["*"]},
    ]
    if storage == "s3fs":
        shared = f"{prefix}shared/"
        statements += [
            {
                "Sid": "ListOwnSharedPrefix",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:{partition}:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [shared, f"{shared}*"]}},
            },
            {
                "Sid": "WriteOwnSharedPrefix",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"arn:{partition}:s3:::{bucket}/{shared}*"],
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


class NodeRole:
    def __init__(self, session: AwsSession, cluster: str):
        self.iam = session.client("iam")
        self.cluster = cluster
        self.names = ResourceNames(cluster)

    def ensure(self, policy: dict) -> str:
        """Role + inline policy + instance profile, idempotently. Returns the profile ARN."""
        n = self.names
        tags = cluster_tags(self.cluster)
        try:
            self.iam.create_role(RoleName=n.role, AssumeRolePolicyDocument=json.dumps(TRUST),
                                 Description=f"ec2mpi nodes of cluster {self.cluster}", Tags=tags)
        except ClientError as err:
            if error_code(err) != "EntityAlreadyExists":
                raise explain_client_error("iam:CreateRole", err) from err
        try:
            self.iam.put_role_policy(
                RoleName=n.role, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy)
            )
        except ClientError as err:
            raise explain_client_error("iam:PutRolePolicy", err) from err
        try:
            arn = self.iam.create_instance_profile(InstanceProfileName=n.instance_profile,
                                                   Tags=tags)["InstanceProfile"]["Arn"]
        except ClientError as err:
            if error_code(err) != "EntityAlreadyExists":
                raise explain_client_error("iam:CreateInstanceProfile", err) from err
            arn = None
        profile = self.iam.get_instance_profile(InstanceProfileName=n.instance_profile)[
            "InstanceProfile"
        ]
        if not any(r["RoleName"] == n.role for r in profile.get("Roles", [])):
            try:
                self.iam.add_role_to_instance_profile(
                    InstanceProfileName=n.instance_profile, RoleName=n.role
                )
            except ClientError as err:
                if error_code(err) != "LimitExceeded":  # already has a role (a racing resume)
                    raise explain_client_error("iam:AddRoleToInstanceProfile", err) from err
        return arn or profile["Arn"]

    def wait_usable(self, timeout: float = 60.0) -> None:
        """IAM is eventually consistent: wait until the profile shows its role (bounded)."""
        waiter = self.iam.get_waiter("instance_profile_exists")
        waiter.wait(InstanceProfileName=self.names.instance_profile,
                    WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(timeout))})

    def policy(self) -> dict | None:
        try:
            doc = self.iam.get_role_policy(RoleName=self.names.role, PolicyName=POLICY_NAME)[
                "PolicyDocument"
            ]
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise explain_client_error("iam:GetRolePolicy", err) from err
        return json.loads(doc) if isinstance(doc, str) else doc

    def exists(self) -> dict:
        """Which of role / profile exist (for destroy's verification and tests)."""
        out = {}
        for kind, call in (("role", lambda: self.iam.get_role(RoleName=self.names.role)),
                           ("instance_profile", lambda: self.iam.get_instance_profile(
                               InstanceProfileName=self.names.instance_profile))):
            try:
                call()
                out[kind] = True
            except ClientError as err:
                if error_code(err) != "NoSuchEntity":
                    raise explain_client_error(
                        f"iam:Get{kind.title().replace('_', '')}", err
                    ) from err
                out[kind] = False
        return out

    def delete(self) -> list[str]:
        """Profile (after detaching the role), inline policies, role. Missing parts are fine."""
        n, removed = self.names, []
        try:
            profile = self.iam.get_instance_profile(InstanceProfileName=n.instance_profile)[
                "InstanceProfile"
            ]
            for role in profile.get("Roles", []):
                self.iam.remove_role_from_instance_profile(InstanceProfileName=n.instance_profile,
                                                           RoleName=role["RoleName"])
            self.iam.delete_instance_profile(InstanceProfileName=n.instance_profile)
            removed.append(f"instance-profile/{n.instance_profile}")
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise explain_client_error("iam:DeleteInstanceProfile", err) from err
        try:
            for pname in self.iam.list_role_policies(RoleName=n.role)["PolicyNames"]:
                self.iam.delete_role_policy(RoleName=n.role, PolicyName=pname)
            for att in self.iam.list_attached_role_policies(RoleName=n.role)["AttachedPolicies"]:
                self.iam.detach_role_policy(RoleName=n.role, PolicyArn=att["PolicyArn"])
            for attempt in range(5):
                try:
                    self.iam.delete_role(RoleName=n.role)
                    break
                except ClientError as err:
                    if error_code(err) != "DeleteConflict" or attempt == 4:
                        raise
                    time.sleep(0.5 * 2 ** attempt)
            removed.append(f"role/{n.role}")
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise explain_client_error("iam:DeleteRole", err) from err
        return removed
