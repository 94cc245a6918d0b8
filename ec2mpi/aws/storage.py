"""Shared storage for a cluster: an EFS file system, or an s3fs prefix in the key-store bucket.

EFS: encrypted, tagged, found again by its creation token (so a resumed create reuses
it), one mount target per subnet the fleet may launch into, reachable over NFS from the
cluster group. s3fs: nothing to create; nodes mount clusters/NAME/shared/ with their role.
"""
from __future__ import annotations

import time

from ..config import ResourceNames, cluster_tags
from ..errors import CloudError, explain_client_error
from .session import AwsSession, ClientError, error_code

NFS_PORT = 2049


class Efs:
    def __init__(self, session: AwsSession, cluster: str):
        self.efs = session.client("efs")
        self.cluster = cluster
        self.token = ResourceNames(cluster).efs_token

    def find(self) -> dict | None:
        try:
            fss = self.efs.describe_file_systems(CreationToken=self.token)["FileSystems"]
        except ClientError as err:
            if error_code(err) == "FileSystemNotFound":
                return None
            raise explain_client_error("efs:DescribeFileSystems", err) from err
        return fss[0] if fss else None

    def ensure(self, subnet_ids, security_group: str, timeout: float = 300.0) -> str:
        """File system + a mount target in each subnet. Returns the file-system id."""
        fs = self.find()
        if fs is None:
            try:
                fs = self.efs.create_file_system(
                    CreationToken=self.token, Encrypted=True, PerformanceMode="generalPurpose",
                    ThroughputMode="elastic", Tags=cluster_tags(self.cluster) + [
                        {"Key": "Name", "Value": f"ec2mpi-{self.cluster}"}])
            except ClientError as err:
                if error_code(err) != "FileSystemAlreadyExists":
                    raise explain_client_error("efs:CreateFileSystem", err) from err
                fs = self.find()
        fs_id = fs["FileSystemId"]
        self._wait_available(fs_id, timeout)
        have = {mt["SubnetId"] for mt in self.mount_targets(fs_id)}
        for subnet in subnet_ids:
            if subnet in have:
                continue
            try:
                self.efs.create_mount_target(
                    FileSystemId=fs_id, SubnetId=subnet, SecurityGroups=[security_group]
                )
            except ClientError as err:
                if error_code(err) != "MountTargetConflict":
                    raise explain_client_error("efs:CreateMountTarget", err) from err
        return fs_id

    def _wait_available(self, fs_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.efs.describe_file_systems(FileSystemId=fs_id)["FileSystems"][0][
                "LifeCycleState"
            ]
            if state == "available":
                return
            if time.monotonic() > deadline:
                raise CloudError(
                    f"EFS {fs_id} is still {state} after {timeout:.0f}s", "retry create; it resumes"
                )
            time.sleep(2)

    def mount_targets(self, fs_id: str) -> list[dict]:
        try:
            return self.efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
        except ClientError as err:
            if error_code(err) == "FileSystemNotFound":
                return []
            raise explain_client_error("efs:DescribeMountTargets", err) from err

    def delete(self, timeout: float = 300.0) -> list[str]:
        """Mount targets first, wait until they are gone, then the file system."""
        fs = self.find()
        if fs is None:
            return []
        fs_id = fs["FileSystemId"]
        for mt in self.mount_targets(fs_id):
            try:
                self.efs.delete_mount_target(MountTargetId=mt["MountTargetId"])
            except ClientError as err:
                if error_code(err) != "MountTargetNotFound":
                    raise explain_client_error("efs:DeleteMountTarget", err) from err
        deadline = time.monotonic() + timeout
        while self.mount_targets(fs_id):
            if time.monotonic() > deadline:
                raise CloudError(f"EFS mount targets of {fs_id} still exist after {timeout:.0f}s",
                                 "re-run destroy; it resumes")
            time.sleep(2)
        for attempt in range(6):
            try:
                self.efs.delete_file_system(FileSystemId=fs_id)
                break
            except ClientError as err:
                if error_code(err) == "FileSystemNotFound":
                    break
                if error_code(err) != "FileSystemInUse" or attempt == 5:
                    raise explain_client_error("efs:DeleteFileSystem", err) from err
                time.sleep(min(10.0, 0.5 * 2 ** attempt))
        return [fs_id]
