"""EC2 networking of one cluster: the subnets it launches into and its security group
(SSH from the user's address only; everything between members)."""
from __future__ import annotations

import time

from ..config import TAG_CLUSTER, ResourceNames, cluster_tags
from ..errors import UserError, explain_client_error
from .session import AwsSession, ClientError, error_code


class Network:
    """Subnets, VPC and the security group of one cluster."""

    def __init__(self, session: AwsSession, cluster: str):
        self.session = session
        self.ec2 = session.client("ec2")
        self.cluster = cluster
        self.names = ResourceNames(cluster)

    def subnets(self, subnet_ids=()) -> list[dict]:
        """The given subnets, or the default-for-AZ subnets of the default VPC."""
        try:
            if subnet_ids:
                subs = self.ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
            else:
                subs = self.ec2.describe_subnets(
                    Filters=[{"Name": "default-for-az", "Values": ["true"]}]
                )["Subnets"]
        except ClientError as err:
            raise explain_client_error("ec2:DescribeSubnets", err) from err
        if not subs:
            raise UserError(
                f"no default subnets in region {self.session.region}",
                "create a default VPC ('aws ec2 create-default-vpc') or pass --subnet IDs",
            )
        return sorted(subs, key=lambda s: s["AvailabilityZone"])

    def default_vpc(self, subnets: list[dict]) -> str:
        return subnets[0]["VpcId"]

    def find_security_group(self) -> str | None:
        resp = self.ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
        )
        groups = resp["SecurityGroups"]
        return groups[0]["GroupId"] if groups else None

    def ensure_security_group(self, vpc_id: str, ssh_cidr: str) -> str:
        """SSH from the user's CIDR only; all traffic between members of the group."""
        sg = self.find_security_group()
        if sg is None:
            try:
                sg = self.ec2.create_security_group(
                    GroupName=self.names.security_group,
                    VpcId=vpc_id,
                    Description=f"ec2mpi cluster {self.cluster}",
                    TagSpecifications=[
                        {"ResourceType": "security-group", "Tags": cluster_tags(self.cluster)}
                    ],
                )["GroupId"]
            except ClientError as err:
                raise explain_client_error("ec2:CreateSecurityGroup", err) from err
        self.authorize(
            sg,
            [
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": ssh_cidr, "Description": "ssh from the ec2mpi user"}],
                },
                {
                    "IpProtocol": "-1",
                    "UserIdGroupPairs": [{"GroupId": sg, "Description": "cluster members"}],
                },
            ],
        )
        return sg

    def authorize(self, sg: str, permissions: list[dict]) -> None:
        """Add ingress rules; rules that already exist are fine (resume)."""
        try:
            self.ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=permissions)
        except ClientError as err:
            if error_code(err) != "InvalidPermission.Duplicate":
                raise explain_client_error("ec2:AuthorizeSecurityGroupIngress", err) from err
            if len(permissions) > 1:   # one was a duplicate: add the others one by one
                for perm in permissions:
                    self.authorize(sg, [perm])

    def security_group_rules(self, sg: str) -> list[dict]:
        return self.ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0][
            "IpPermissions"
        ]

    def delete_security_group(self, attempts: int = 8) -> list[str]:
        """After the instances are gone; DependencyViolation means ENIs linger: back off,
        bounded."""
        sg = self.find_security_group()
        if sg is None:
            return []
        for attempt in range(attempts):
            try:
                self.ec2.delete_security_group(GroupId=sg)
                return [sg]
            except ClientError as err:
                if error_code(err) == "InvalidGroup.NotFound":
                    return [sg]
                if error_code(err) != "DependencyViolation" or attempt == attempts - 1:
                    raise explain_client_error("ec2:DeleteSecurityGroup", err) from err
                time.sleep(min(15.0, 0.5 * 2 ** attempt))
        return []
