"""EC2 for one cluster: security group, launch template, one-call launches, sweep by tag.

Why one call per launch: client cost stays O(1) in the node count. Why our own launch
token on top of ClientToken: an emulator (moto) ignores ClientToken, and a resumed
create must not double the nodes on any endpoint, so we also tag every instance with
the token and only launch what is missing.
"""
from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass

from botocore.parsers import ResponseParserError

from ..config import TAG_CLUSTER, TAG_LAUNCH, TAG_ROLE, ResourceNames, cluster_tags
from ..errors import UserError, explain_client_error
from .session import AwsSession, BotoCoreError, ClientError, error_code

log = logging.getLogger(__name__)
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
PLACEMENT_UNSUPPORTED = "placement group not supported by this endpoint; launching without"


@dataclass
class Instance:
    instance_id: str
    instance_type: str
    state: str
    lifecycle: str          # spot | on-demand
    private_ip: str
    public_ip: str
    launch_time: float
    tags: dict

    @classmethod
    def from_api(cls, d: dict) -> "Instance":
        lt = d.get("LaunchTime")
        return cls(d["InstanceId"], d.get("InstanceType", ""), d.get("State", {}).get("Name", ""),
                   "spot" if d.get("InstanceLifecycle") == "spot" else "on-demand",
                   d.get("PrivateIpAddress", ""), d.get("PublicIpAddress", ""),
                   lt.timestamp() if hasattr(lt, "timestamp") else 0.0,
                   {t["Key"]: t["Value"] for t in d.get("Tags", [])})


def _ip_key(ip: str) -> tuple:
    """Numeric order for addresses: 172.31.0.9 before 172.31.0.10."""
    return tuple(int(x) for x in ip.split(".") if x.isdigit())


PROFILE_RETRIES = 6   # IAM is eventually consistent: a fresh instance profile may be unknown to EC2 for seconds


def _profile_not_ready(code: str, message: str) -> bool:
    return code == "InvalidParameterValue" and "iam instance profile" in message.lower()


class _Refusal:
    """Lets explain_client_error word a fleet's per-launch errors like any ClientError."""

    def __init__(self, code: str, message: str):
        self.response = {"Error": {"Code": code, "Message": message}}


class Fleet:
    def __init__(self, session: AwsSession, cluster: str):
        self.session = session
        self.ec2 = session.client("ec2")
        self.cluster = cluster
        self.names = ResourceNames(cluster)

    # -- checks and lookups -----------------------------------------------------
    def check_instance_types(self, types) -> dict:
        """Unknown types are the user's mistake: say which. Returns type -> vCPUs."""
        try:
            resp = self.ec2.describe_instance_types(InstanceTypes=list(types))
        except ClientError as err:
            if error_code(err) in ("InvalidInstanceType", "InvalidParameterValue"):
                bad = [t for t in types if t in err.response["Error"].get("Message", "")] or list(types)
                raise UserError(f"unknown instance type {', '.join(bad)!s} in region {self.session.region}",
                                "use EC2 type names available there, e.g. c6i.large") from None
            raise explain_client_error("ec2:DescribeInstanceTypes", err) from None
        return {t["InstanceType"]: t.get("VCpuInfo", {}).get("DefaultVCpus", 1) for t in resp["InstanceTypes"]}

    def subnets(self, subnet_ids=()) -> list[dict]:
        """The given subnets, or the default-for-AZ subnets of the default VPC."""
        try:
            if subnet_ids:
                subs = self.ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
            else:
                subs = self.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        except ClientError as err:
            raise explain_client_error("ec2:DescribeSubnets", err) from None
        if not subs:
            raise UserError(f"no default subnets in region {self.session.region}",
                            "create a default VPC ('aws ec2 create-default-vpc') or pass --subnet IDs")
        return sorted(subs, key=lambda s: s["AvailabilityZone"])

    def resolve_image(self, image_id: str | None, parameter: str) -> str:
        if image_id:
            return image_id
        try:
            return self.session.client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as err:
            raise explain_client_error("ssm:GetParameter", err) from None

    # -- security group ---------------------------------------------------------
    def find_security_group(self) -> str | None:
        resp = self.ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}])
        groups = resp["SecurityGroups"]
        return groups[0]["GroupId"] if groups else None

    def ensure_security_group(self, vpc_id: str, ssh_cidr: str) -> str:
        """SSH from the user's CIDR only; all traffic between members of the group."""
        sg = self.find_security_group()
        if sg is None:
            try:
                sg = self.ec2.create_security_group(
                    GroupName=self.names.security_group, VpcId=vpc_id,
                    Description=f"ec2mpi cluster {self.cluster}",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": cluster_tags(self.cluster)}],
                )["GroupId"]
            except ClientError as err:
                raise explain_client_error("ec2:CreateSecurityGroup", err) from None
        self.authorize(sg, [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": ssh_cidr, "Description": "ssh from the ec2mpi user"}]},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg, "Description": "cluster members"}]},
        ])
        return sg

    def authorize(self, sg: str, permissions: list[dict]) -> None:
        """Add ingress rules; rules that already exist are fine (resume)."""
        try:
            self.ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=permissions)
        except ClientError as err:
            if error_code(err) != "InvalidPermission.Duplicate":
                raise explain_client_error("ec2:AuthorizeSecurityGroupIngress", err) from None
            if len(permissions) > 1:   # one was a duplicate: add the others one by one
                for perm in permissions:
                    self.authorize(sg, [perm])

    def security_group_rules(self, sg: str) -> list[dict]:
        return self.ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]["IpPermissions"]

    def delete_security_group(self, attempts: int = 8) -> list[str]:
        """After the instances are gone; DependencyViolation means ENIs linger: back off, bounded."""
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
                    raise explain_client_error("ec2:DeleteSecurityGroup", err) from None
                time.sleep(min(15.0, 0.5 * 2 ** attempt))
        return []

    # -- launch template --------------------------------------------------------
    def find_launch_template(self) -> str | None:
        try:
            lts = self.ec2.describe_launch_templates(LaunchTemplateNames=[self.names.launch_template])
        except ClientError as err:
            if error_code(err) in ("InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound"):
                return None
            raise explain_client_error("ec2:DescribeLaunchTemplates", err) from None
        items = lts["LaunchTemplates"]
        return items[0]["LaunchTemplateId"] if items else None

    def ensure_launch_template(self, image_id: str, profile_arn: str, sg: str, user_data: str) -> str:
        """IMDSv2 required, metadata tags on, user-data stub, instance and volume tags."""
        lt = self.find_launch_template()
        if lt:
            return lt
        tags = cluster_tags(self.cluster)
        data = {
            "ImageId": image_id,
            "IamInstanceProfile": {"Arn": profile_arn},
            "SecurityGroupIds": [sg],
            "UserData": base64.b64encode(user_data.encode()).decode(),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 2, "InstanceMetadataTags": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        try:
            return self.ec2.create_launch_template(
                LaunchTemplateName=self.names.launch_template, LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
            )["LaunchTemplate"]["LaunchTemplateId"]
        except ClientError as err:
            if error_code(err) == "InvalidLaunchTemplateName.AlreadyExistsException":
                return self.find_launch_template()
            raise explain_client_error("ec2:CreateLaunchTemplate", err) from None

    def launch_template_data(self) -> dict:
        lt = self.find_launch_template()
        resp = self.ec2.describe_launch_template_versions(LaunchTemplateId=lt, Versions=["$Latest"])
        return resp["LaunchTemplateVersions"][0]["LaunchTemplateData"]

    def delete_launch_template(self) -> list[str]:
        lt = self.find_launch_template()
        if lt is None:
            return []
        try:
            self.ec2.delete_launch_template(LaunchTemplateId=lt)
        except ClientError as err:
            if error_code(err) not in ("InvalidLaunchTemplateId.NotFound",):
                raise explain_client_error("ec2:DeleteLaunchTemplate", err) from None
        return [lt]

    # -- placement group ----------------------------------------------------------
    def ensure_placement_group(self) -> str | None:
        """A cluster placement group, or None (with a warning) where the endpoint lacks them."""
        name = self.names.placement_group
        try:
            self.session.client("ec2", max_attempts=1).create_placement_group(GroupName=name, Strategy="cluster",
                                            TagSpecifications=[{"ResourceType": "placement-group",
                                                                "Tags": cluster_tags(self.cluster)}])
            return name
        except ClientError as err:
            code = error_code(err)
            if code == "InvalidPlacementGroup.Duplicate":
                return name
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NotImplemented", "InternalError", "500", "501") or status >= 500:
                log.warning(PLACEMENT_UNSUPPORTED)
                return None
            raise explain_client_error("ec2:CreatePlacementGroup", err) from None
        except (BotoCoreError, ResponseParserError):  # an emulator answering with an HTML 500 page
            log.warning(PLACEMENT_UNSUPPORTED)
            return None

    def delete_placement_group(self) -> list[str]:
        try:
            groups = self.session.client("ec2", max_attempts=1).describe_placement_groups(
                Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}])["PlacementGroups"]
        except (ClientError, BotoCoreError, ResponseParserError):
            return []  # the endpoint has no placement groups, so we made none
        for g in groups:
            self.ec2.delete_placement_group(GroupName=g["GroupName"])
        return [g["GroupName"] for g in groups]

    # -- instances --------------------------------------------------------------
    def instances(self, states=LIVE_STATES, launch_token: str | None = None, ids=None) -> list[Instance]:
        """This cluster's instances by tag (oldest first), optionally of one launch."""
        filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        if launch_token:
            filters.append({"Name": f"tag:{TAG_LAUNCH}", "Values": [launch_token]})
        kwargs = {"InstanceIds": list(ids)} if ids else {}
        out = []
        try:
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters, **kwargs):
                for res in page["Reservations"]:
                    out += [Instance.from_api(i) for i in res["Instances"]]
        except ClientError as err:
            if error_code(err) == "InvalidInstanceID.NotFound":
                return []
            raise explain_client_error("ec2:DescribeInstances", err) from None
        return sorted(out, key=lambda i: (i.launch_time, _ip_key(i.private_ip), i.instance_id))

    def launch(self, lt_id: str, count: int, token: str, instance_types, subnets: list[dict],
               spot: bool = True, role: str = "worker", placement_group: str | None = None) -> list[str]:
        """Make sure `count` instances of launch `token` exist, in ONE create_fleet call.

        Instances already tagged with the token count (a resumed launch); only the rest
        are launched. Returns all instance ids of the launch, in launch order.
        """
        have = self.instances(launch_token=token)
        missing = count - len(have)
        if missing <= 0:
            return [i.instance_id for i in have]
        if placement_group:
            subnets = subnets[:1]   # a cluster placement group lives in one AZ
        overrides = []
        for itype in instance_types:
            for sub in subnets:
                o = {"InstanceType": itype, "SubnetId": sub["SubnetId"]}
                if placement_group:
                    o["Placement"] = {"GroupName": placement_group}
                overrides.append(o)
        tags = cluster_tags(self.cluster, **{TAG_LAUNCH: token, TAG_ROLE: role})
        kwargs = {
            "Type": "instant",
            "ClientToken": f"{token}-{len(have)}"[:64],   # same retry -> same token on AWS
            "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {"LaunchTemplateId": lt_id,
                                                                       "Version": "$Latest"},
                                       "Overrides": overrides}],
            "TargetCapacitySpecification": {"TotalTargetCapacity": missing,
                                            "DefaultTargetCapacityType": "spot" if spot else "on-demand"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "fleet", "Tags": cluster_tags(self.cluster)}],
        }
        if spot:
            kwargs["SpotOptions"] = {"AllocationStrategy": "capacity-optimized"}
        else:
            kwargs["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
        for attempt in range(PROFILE_RETRIES):
            try:
                resp = self.ec2.create_fleet(**kwargs)
            except ClientError as err:
                if _profile_not_ready(error_code(err), err.response["Error"].get("Message", "")) \
                        and attempt < PROFILE_RETRIES - 1:
                    time.sleep(min(8.0, 1.0 * 2 ** attempt))
                    continue
                raise explain_client_error("ec2:CreateFleet", err) from None
            new = [iid for grp in resp.get("Instances", []) for iid in grp.get("InstanceIds", [])]
            errors = resp.get("Errors") or []
            if new or not any(_profile_not_ready(e.get("ErrorCode", ""), e.get("ErrorMessage", "")) for e in errors) \
                    or attempt == PROFILE_RETRIES - 1:
                break
            time.sleep(min(8.0, 1.0 * 2 ** attempt))   # IAM not yet visible to EC2: nothing launched
            kwargs["ClientToken"] = f"{token}-{len(have)}-{attempt + 1}"[:64]
        if len(new) < missing:
            errors = errors or [{"ErrorCode": "InsufficientInstanceCapacity",
                                 "ErrorMessage": f"launched {len(new)} of {missing}"}]
            e = errors[0]
            raise explain_client_error("ec2:CreateFleet", _Refusal(e.get("ErrorCode", "?"), e.get("ErrorMessage", "")))
        return [i.instance_id for i in have] + new

    def tag(self, ids, **tags: str) -> None:
        try:
            self.ec2.create_tags(Resources=list(ids), Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        except ClientError as err:
            raise explain_client_error("ec2:CreateTags", err) from None

    def terminate(self, ids) -> list[str]:
        ids = list(ids)
        if not ids:
            return []
        try:
            self.ec2.terminate_instances(InstanceIds=ids)
        except ClientError as err:
            raise explain_client_error("ec2:TerminateInstances", err) from None
        return ids

    def wait_terminated(self, ids, timeout: float = 600.0) -> None:
        if ids:
            self.ec2.get_waiter("instance_terminated").wait(
                InstanceIds=list(ids), WaiterConfig={"Delay": 2, "MaxAttempts": max(1, int(timeout / 2))})

    def volumes(self) -> list[dict]:
        resp = self.ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}])
        return resp["Volumes"]

    def volume_exists(self, volume_id: str) -> bool:
        return any(v["VolumeId"] == volume_id for v in self.volumes())

    def delete_volumes(self) -> list[str]:
        """Tagged volumes left detached (DeleteOnTermination off): they bill, so they go."""
        removed = []
        for vol in self.volumes():
            if vol.get("State") == "available":
                try:
                    self.ec2.delete_volume(VolumeId=vol["VolumeId"])
                    removed.append(vol["VolumeId"])
                except ClientError as err:
                    if error_code(err) != "InvalidVolume.NotFound":
                        raise explain_client_error("ec2:DeleteVolume", err) from None
        return removed

    def delete_fleets_and_spot_requests(self, instance_ids=()) -> list[str]:
        """Instant fleets and their spot requests outlive nothing, but sweep them anyway."""
        removed = []
        fleets = [f["FleetId"] for f in self.ec2.describe_fleets()["Fleets"]
                  if {"Key": TAG_CLUSTER, "Value": self.cluster} in f.get("Tags", [])
                  and f.get("FleetState") not in ("deleted", "deleted_running", "deleted_terminating")]
        for i in range(0, len(fleets), 25):
            self._delete_fleets(fleets[i:i + 25])
        removed += [f"fleet/{f}" for f in fleets]
        requests = self.spot_requests(instance_ids)
        if requests:
            try:
                self.ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=requests)
            except ClientError as err:
                raise explain_client_error("ec2:CancelSpotInstanceRequests", err) from None
            removed += [f"spot-request/{r}" for r in requests]
        return removed

    def _delete_fleets(self, fleet_ids: list[str]) -> None:
        """Instant fleets must be deleted with their instances. An emulator (moto) refuses
        that for a fleet whose instances are all gone already: then go one by one."""
        try:
            self.ec2.delete_fleets(FleetIds=fleet_ids, TerminateInstances=True)
            return
        except ClientError as err:
            if error_code(err) != "InvalidParameterCombination" or len(fleet_ids) == 1:
                if error_code(err) == "InvalidParameterCombination":
                    return
                raise explain_client_error("ec2:DeleteFleets", err) from None
        for fid in fleet_ids:
            self._delete_fleets([fid])

    def spot_requests(self, instance_ids=()) -> list[str]:
        """Open/active spot requests of this cluster: by tag, or by the instances they made."""
        found = set()
        queries = [[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]]
        if instance_ids:
            queries.append([{"Name": "instance-id", "Values": list(instance_ids)}])
        for filters in queries:
            filters = filters + [{"Name": "state", "Values": ["open", "active"]}]
            resp = self.ec2.describe_spot_instance_requests(Filters=filters)
            found |= {r["SpotInstanceRequestId"] for r in resp["SpotInstanceRequests"]}
        return sorted(found)

    # -- prices and diagnostics ---------------------------------------------------
    def console_output(self, instance_id: str) -> str:
        try:
            out = self.ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output", "")
        except ClientError as err:
            if error_code(err) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                raise UserError(f"no instance {instance_id!r}", "see 'ec2mpi status' for the cluster's nodes") from None
            raise explain_client_error("ec2:GetConsoleOutput", err) from None
        try:
            return base64.b64decode(out, validate=True).decode(errors="replace")
        except ValueError:
            return out

    def default_vpc(self, subnets: list[dict]) -> str:
        return subnets[0]["VpcId"]
