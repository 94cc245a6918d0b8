"""The cluster's job role: what the cluster user's jobs may do in AWS, and nothing more.

Node role credentials are root's (user-data firewalls the metadata service), so jobs get
none by default. With `create --job-policy-arn ARN`, this role carries the user's policies,
only the cluster's node roles may assume it, and the agent serves its credentials on
loopback to the cluster user (agent/jobcreds.py), the way ECS serves a task role.
"""
from __future__ import annotations

import json

from ..config import cluster_tags
from ..errors import explain_client_error
from .iam import TAG_REGION, NodeRole, role_name
from .session import AwsSession, ClientError, error_code

KIND = "job"
MAX_SESSION = 3600      # seconds; the agent refreshes well before


def job_role_arn(account: str, cluster: str, region: str, partition: str = "aws") -> str:
    """Known before the role exists, so the node policies can name it first."""
    return f"arn:{partition}:iam::{account}:role/{role_name(cluster, region, KIND)}"


def trust_policy(node_role_arns: list[str]) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": sorted(node_role_arns)},
        "Action": "sts:AssumeRole"}]}


class JobRole(NodeRole):
    """A role without an instance profile, trusted by the node roles, with managed policies
    attached (the user's own: we never write a job policy ourselves)."""

    def __init__(self, session: AwsSession, cluster: str):
        self.iam = session.client("iam")
        self.cluster, self.kind, self.region = cluster, KIND, session.region
        self.name = role_name(cluster, self.region, KIND)

    def ensure_job(self, node_role_arns: list[str], policy_arns: tuple[str, ...]) -> str:
        """Role, trust and exactly these attached policies, idempotently; returns its ARN."""
        trust = json.dumps(trust_policy(node_role_arns))
        try:
            role = self.iam.create_role(
                RoleName=self.name, AssumeRolePolicyDocument=trust,
                MaxSessionDuration=MAX_SESSION,
                Tags=cluster_tags(self.cluster, **{TAG_REGION: self.region}),
                Description=f"ec2mpi jobs of cluster {self.cluster} in {self.region}")["Role"]
        except ClientError as err:
            if error_code(err) != "EntityAlreadyExists":
                raise explain_client_error("iam:CreateRole", err) from err
            role = self.iam.get_role(RoleName=self.name)["Role"]
            self._check_ours(role)
            self.iam.update_assume_role_policy(RoleName=self.name, PolicyDocument=trust)
        try:
            attached = {a["PolicyArn"] for a in self.iam.list_attached_role_policies(
                RoleName=self.name)["AttachedPolicies"]}
            for arn in sorted(set(policy_arns) - attached):
                self.iam.attach_role_policy(RoleName=self.name, PolicyArn=arn)
            for arn in sorted(attached - set(policy_arns)):
                self.iam.detach_role_policy(RoleName=self.name, PolicyArn=arn)
        except ClientError as err:
            raise explain_client_error("iam:AttachRolePolicy", err) from err
        return role["Arn"]

    def exists(self) -> dict:
        return {"role": super().exists()["role"]}

