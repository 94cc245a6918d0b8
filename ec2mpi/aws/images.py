"""The EC2 side of `ec2mpi bake-image`: one builder instance, its least-privilege policy,
and the image made from it.

Why a builder of its own (not a launch template or a fleet): one on-demand instance, run
once, whose user-data bakes the node environment. Its role may read exactly one object
(the client's wheel) and write exactly one (the bake's status, which the client polls:
S3 works the same on AWS and on the local cloud, and needs no rights on EC2).
"""
from __future__ import annotations

import time

from ..config import TAG_CLUSTER, cluster_tags
from ..errors import CloudError, explain_client_error
from .session import AwsSession, ClientError, error_code
from .templates import encrypted_root

TAG_BAKE = "ec2mpi:bake"         # the bake id, on the builder, its volume and the image
TAG_BUILDER = "ec2mpi:builder"   # on the image: the instance it was made from (local capture)
TAG_VERSION = "ec2mpi:version"   # on the image: the ec2mpi it holds


def builder_policy(bucket: str, wheel_key: str, status_key: str,
                   partition: str = "aws") -> dict:
    """Read the wheel, write the status: one object each, nothing else."""
    obj = f"arn:{partition}:s3:::{bucket}/"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadTheWheel", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [obj + wheel_key]},
        {"Sid": "WriteTheBakeStatus", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": [obj + status_key]},
    ]}


class Images:
    """Launch the builder of bake `bake_id`, make and find images."""

    def __init__(self, session: AwsSession, bake_id: str):
        self.session, self.bake_id = session, bake_id
        self.ec2 = session.client("ec2")

    def image(self, image_id: str) -> dict | None:
        try:
            images = self.ec2.describe_images(ImageIds=[image_id])["Images"]
        except ClientError as err:
            if error_code(err).startswith("InvalidAMIID"):
                return None
            raise explain_client_error("ec2:DescribeImages", err) from err
        return images[0] if images else None

    def launch_builder(self, image: dict, instance_type: str, subnet_id: str,
                       profile_arn: str, user_data: str, attempts: int = 8) -> str:
        """One on-demand instance (idempotent: the bake id is the client token), IMDSv2,
        encrypted root, tagged; retried while IAM propagates the new instance profile."""
        tags = cluster_tags(self.bake_id, **{TAG_BAKE: self.bake_id})
        kwargs = {
            "ImageId": image["ImageId"], "InstanceType": instance_type, "MinCount": 1,
            "MaxCount": 1, "SubnetId": subnet_id, "IamInstanceProfile": {"Arn": profile_arn},
            "UserData": user_data, "ClientToken": self.bake_id,
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 1},
            "TagSpecifications": [{"ResourceType": kind, "Tags": tags}
                                  for kind in ("instance", "volume")]}
        devices = encrypted_root(image)
        if devices:
            kwargs["BlockDeviceMappings"] = devices
        for attempt in range(attempts):
            try:
                return self.ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"]
            except ClientError as err:
                message = err.response.get("Error", {}).get("Message", "").lower()
                if (error_code(err) != "InvalidParameterValue" or "instance profile" not in
                        message or attempt == attempts - 1):
                    raise explain_client_error("ec2:RunInstances", err) from err
                time.sleep(min(8.0, 2.0 ** attempt))
        raise AssertionError("unreachable")

    def state(self, instance_id: str) -> str:
        try:
            res = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as err:
            if error_code(err) == "InvalidInstanceID.NotFound":
                return "pending"      # EC2 is eventually consistent right after the launch
            raise explain_client_error("ec2:DescribeInstances", err) from err
        insts = [i for r in res for i in r["Instances"]]
        return insts[0]["State"]["Name"] if insts else "pending"

    def create_image(self, instance_id: str, name: str, version: str) -> str:
        try:
            return self.ec2.create_image(
                InstanceId=instance_id, Name=name,
                Description=f"ec2mpi {version} node image (ec2mpi bake-image)",
                TagSpecifications=[{"ResourceType": "image",
                                    "Tags": self.image_tags(instance_id, version)}])["ImageId"]
        except ClientError as err:
            raise explain_client_error("ec2:CreateImage", err) from err

    def image_tags(self, instance_id: str, version: str) -> list[dict]:
        return [{"Key": TAG_VERSION, "Value": version}, {"Key": TAG_BAKE, "Value": self.bake_id},
                {"Key": TAG_BUILDER, "Value": instance_id}]

    def tag_snapshots(self, image_id: str, tags: list[dict]) -> None:
        """The image's snapshots carry its tags (tagged once the image is available: moto
        has no snapshot TagSpecifications in CreateImage, and the ids are known then)."""
        snaps = _snapshots(self.image(image_id) or {})
        if snaps:
            try:
                self.ec2.create_tags(Resources=snaps, Tags=tags)
            except ClientError as err:
                raise explain_client_error("ec2:CreateTags", err) from err

    def wait_available(self, image_id: str, timeout: float, progress, poll: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            image = self.image(image_id) or {}
            state = image.get("State", "pending")
            if state == "available":
                return
            if state in ("failed", "invalid", "deregistered", "error"):
                reason = (image.get("StateReason") or {}).get("Message", "")
                raise CloudError(f"image {image_id} is {state}: {reason or 'no reason given'}",
                                 "run bake-image again")
            if time.monotonic() > deadline:
                raise CloudError(f"image {image_id} still {state} after {timeout:.0f} s",
                                 "check it in the EC2 console; deregister it if it stays")
            progress(f"image {image_id} {state}")
            time.sleep(poll)

    def deregister(self, image_id: str) -> None:
        """Undo a half-made image (and its snapshots) after a failure."""
        snaps = _snapshots(self.image(image_id) or {})
        try:
            self.ec2.deregister_image(ImageId=image_id)
            for snap in snaps:
                self.ec2.delete_snapshot(SnapshotId=snap)
        except ClientError as err:
            raise explain_client_error("ec2:DeregisterImage", err) from err

    def tagged_bake(self) -> list[str]:
        """Instances of this bake that are not terminated (the cleanup check)."""
        res = self.ec2.describe_instances(Filters=[
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.bake_id]},
            {"Name": "instance-state-name",
             "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}])
        return [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]]


def _snapshots(image: dict) -> list[str]:
    """The snapshot ids behind an image's EBS block devices."""
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
            if (m.get("Ebs") or {}).get("SnapshotId")]
