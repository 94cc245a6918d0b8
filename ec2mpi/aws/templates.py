"""What every node of a cluster starts from: instance types, the image, the launch template
(IMDSv2, instance profile, user-data stub, encrypted root volume, tags) and the optional
placement group."""
from __future__ import annotations

import base64
import logging

from botocore.parsers import ResponseParserError

from ..config import TAG_CLUSTER, ResourceNames, cluster_tags
from ..errors import CloudError, UserError, explain_client_error
from .session import AwsSession, BotoCoreError, ClientError, error_code

log = logging.getLogger(__name__)


PLACEMENT_UNSUPPORTED = "placement group not supported by this endpoint; launching without"
# What a launch from the template creates: each carries the cluster tag, because the master's
# role may launch only resources tagged with its cluster (aws:RequestTag on each type).
TAGGED_AT_LAUNCH = ("instance", "volume", "network-interface")
_IOPS_TYPES, _THROUGHPUT_TYPES = ("gp3", "io1", "io2"), ("gp3",)


def encrypted_root(image: dict) -> list[dict]:
    """The BlockDeviceMappings entry that encrypts the image's root EBS volume explicitly
    (the account's EBS-encryption default may be off): its size and type as the image maps
    them, deleted with the instance. [] for an instance-store root (nothing to encrypt)."""
    root = image.get("RootDeviceName")
    if not root or image.get("RootDeviceType", "ebs") != "ebs":
        return []
    ebs = next((m.get("Ebs") or {} for m in image.get("BlockDeviceMappings") or []
                if m.get("DeviceName") == root), {})
    vtype = ebs.get("VolumeType")
    keep = {"VolumeSize": ebs.get("VolumeSize"), "VolumeType": vtype,
            "Iops": ebs.get("Iops") if vtype in _IOPS_TYPES else None,
            "Throughput": ebs.get("Throughput") if vtype in _THROUGHPUT_TYPES else None}
    return [{"DeviceName": root, "Ebs": {**{k: v for k, v in keep.items() if v},
                                         "Encrypted": True, "DeleteOnTermination": True}}]


def cpu_architecture(type_info: dict) -> str:
    """A DescribeInstanceTypes entry's architecture: x86_64 for types that also run i386."""
    archs = (type_info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ["x86_64"]
    return "x86_64" if "x86_64" in archs else archs[0]


def launch_template_data(cluster: str, image_id: str, profile_arn: str, sg: str, user_data: str,
                         block_devices: list[dict]) -> dict:
    """The LaunchTemplateData of a node's template (pure: unit tests check it against the
    master's policy)."""
    tags = cluster_tags(cluster)
    data = {
        "ImageId": image_id,
        "IamInstanceProfile": {"Arn": profile_arn},
        "SecurityGroupIds": [sg],
        "UserData": base64.b64encode(user_data.encode()).decode(),
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled"},
        "TagSpecifications": [{"ResourceType": kind, "Tags": tags} for kind in TAGGED_AT_LAUNCH],
    }
    if block_devices:
        data["BlockDeviceMappings"] = block_devices
    return data


class Templates:
    """Instance types, image, launch template and placement group of one cluster."""

    def __init__(self, session: AwsSession, cluster: str):
        self.session = session
        self.ec2 = session.client("ec2")
        self.cluster = cluster
        self.names = ResourceNames(cluster)

    def check_instance_types(self, types) -> dict:
        """Unknown types are the user's mistake: say which. Returns type -> vCPUs."""
        return {t: info.get("VCpuInfo", {}).get("DefaultVCpus", 1)
                for t, info in self.describe_types(types).items()}

    def architecture(self, types) -> str:
        """The one CPU architecture of these types (x86_64, arm64, ...), from
        DescribeInstanceTypes: one image boots them all. A list that mixes architectures
        is the user's mistake (UserError)."""
        info = self.describe_types(types)
        archs = {t: cpu_architecture(info[t]) for t in types if t in info}
        if len(set(archs.values())) > 1:
            raise UserError(
                "instance types mix CPU architectures: " + ", ".join(
                    f"{t} ({a})" for t, a in archs.items()) + "; one image cannot boot them all",
                "use types of one architecture, e.g. c7g.large,c6g.large (Graviton, arm64) "
                "or c6i.large,c6a.large (x86_64)")
        return next(iter(archs.values()), "x86_64")

    def describe_types(self, types) -> dict:
        """type -> its DescribeInstanceTypes entry (asked once per set of types)."""
        key = tuple(sorted(set(types)))
        cache = self.__dict__.setdefault("_types", {})
        if key not in cache:
            cache[key] = self._describe_types(list(key))
        return cache[key]

    def _describe_types(self, types) -> dict:
        try:
            resp = self.ec2.describe_instance_types(InstanceTypes=list(types))
        except ClientError as err:
            if error_code(err) in ("InvalidInstanceType", "InvalidParameterValue"):
                bad = [t for t in types if t in err.response["Error"].get("Message", "")] or list(
                    types
                )
                raise UserError(
                    f"unknown instance type {', '.join(bad)!s} in region {self.session.region}",
                    "use EC2 type names available there, e.g. c6i.large",
                ) from None
            raise explain_client_error("ec2:DescribeInstanceTypes", err) from err
        return {t["InstanceType"]: t for t in resp["InstanceTypes"]}

    def resolve_image(self, image_id: str | None, parameter: str) -> str:
        if image_id:
            return image_id
        try:
            return self.session.client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as err:
            raise explain_client_error("ssm:GetParameter", err) from err

    def describe_image(self, image_id: str) -> dict:
        try:
            images = self.ec2.describe_images(ImageIds=[image_id])["Images"]
        except ClientError as err:
            if not error_code(err).startswith("InvalidAMIID"):
                raise explain_client_error("ec2:DescribeImages", err) from err
            images = []
        if not images:
            raise CloudError(f"image {image_id} does not exist in region {self.session.region}",
                             f"destroy the half-made cluster (ec2mpi destroy {self.cluster}), "
                             "then create it with an AMI id of that region, or without "
                             "--image-id for the default Amazon Linux image")
        return images[0]

    def find_launch_template(self, kind: str = "worker") -> str | None:
        try:
            lts = self.ec2.describe_launch_templates(
                LaunchTemplateNames=[self.names.launch_template(kind)])
        except ClientError as err:
            if error_code(err) in ("InvalidLaunchTemplateName.NotFoundException",
                                   "InvalidLaunchTemplateId.NotFound"):
                return None
            raise explain_client_error("ec2:DescribeLaunchTemplates", err) from err
        items = lts["LaunchTemplates"]
        return items[0]["LaunchTemplateId"] if items else None

    def ensure_launch_template(self, kind: str, image_id: str, profile_arn: str, sg: str,
                               user_data: str) -> str:
        """One template per kind of node (its own role): IMDSv2 required with a hop limit of
        1 (no container on the node reaches it), metadata tags on, the user-data stub, the
        image's root volume encrypted explicitly, and the cluster tag on the instance, its
        volumes and its network interface (the master's role launches only tagged ones)."""
        lt = self.find_launch_template(kind)
        if lt:
            return lt
        data = launch_template_data(self.cluster, image_id, profile_arn, sg, user_data,
                                    encrypted_root(self.describe_image(image_id)))
        tags = cluster_tags(self.cluster)
        try:
            return self.ec2.create_launch_template(
                LaunchTemplateName=self.names.launch_template(kind), LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
            )["LaunchTemplate"]["LaunchTemplateId"]
        except ClientError as err:
            if error_code(err) == "InvalidLaunchTemplateName.AlreadyExistsException":
                return self.find_launch_template(kind)
            raise explain_client_error("ec2:CreateLaunchTemplate", err) from err

    def launch_template_data(self, kind: str = "worker") -> dict:
        lt = self.find_launch_template(kind)
        resp = self.ec2.describe_launch_template_versions(LaunchTemplateId=lt,
                                                          Versions=["$Latest"])
        return resp["LaunchTemplateVersions"][0]["LaunchTemplateData"]

    def delete_launch_templates(self) -> list[str]:
        removed = []
        for kind in ("master", "worker"):
            lt = self.find_launch_template(kind)
            if lt is None:
                continue
            try:
                self.ec2.delete_launch_template(LaunchTemplateId=lt)
            except ClientError as err:
                if error_code(err) not in ("InvalidLaunchTemplateId.NotFound",):
                    raise explain_client_error("ec2:DeleteLaunchTemplate", err) from err
            removed.append(lt)
        return removed

    def ensure_placement_group(self) -> str | None:
        """A cluster placement group, or None (with a warning) where the endpoint lacks them."""
        name = self.names.placement_group
        try:
            self.session.client("ec2", max_attempts=1).create_placement_group(
                GroupName=name,
                Strategy="cluster",
                TagSpecifications=[
                    {"ResourceType": "placement-group", "Tags": cluster_tags(self.cluster)}
                ],
            )
            return name
        except ClientError as err:
            code = error_code(err)
            if code == "InvalidPlacementGroup.Duplicate":
                return name
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NotImplemented", "InternalError", "500", "501") or status >= 500:
                log.warning(PLACEMENT_UNSUPPORTED)
                return None
            raise explain_client_error("ec2:CreatePlacementGroup", err) from err
        except (BotoCoreError, ResponseParserError):  # an emulator answering with an HTML 500 page
            log.warning(PLACEMENT_UNSUPPORTED)
            return None

    def delete_placement_group(self) -> list[str]:
        try:
            groups = self.session.client("ec2", max_attempts=1).describe_placement_groups(
                Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
            )["PlacementGroups"]
        except (ClientError, BotoCoreError, ResponseParserError):
            return []  # the endpoint has no placement groups, so we made none
        for g in groups:
            self.ec2.delete_placement_group(GroupName=g["GroupName"])
        return [g["GroupName"] for g in groups]
