"""Shared storage for a cluster: an EFS file system, or an s3fs prefix in the key-store bucket.

EFS: encrypted, tagged, found again by its creation token (so a resumed create reuses
it), one mount target per subnet the fleet may launch into, reachable over NFS from the
cluster group. Its file-system policy lets only the cluster's two node roles mount it, and
only over TLS (see `file_system_policy`). s3fs: nothing to create; nodes mount
clusters/NAME/shared/ with their role.
"""
from __future__ import annotations

import json
import time

from ..config import ResourceNames, cluster_tags
from ..errors import CloudError, explain_client_error
from .session import AwsSession, ClientError, error_code

NFS_PORT = 2049
CLIENT_ACTIONS = ("elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite",
                  "elasticfilesystem:ClientRootAccess")


def file_system_policy(fs_arn: str, role_arns) -> dict:
    """Only the cluster's node roles may mount, write and act as root, and only over TLS;
    any connection without TLS is denied, whoever makes it.

    Once a file-system policy exists, EFS no longer admits anonymous clients (the default
    policy's full access ends), so a plain NFS mount is refused: a node must mount with the
    EFS mount helper and `-o tls,iam` (IAM authorization with its instance role). Why
    ClientRootAccess: without it EFS squashes root to nobody, and the node agent (root)
    owns the shared directory out to the cluster user on first mount. Not denied here:
    principals of the same account whose IDENTITY policies grant elasticfilesystem:Client*
    (an allow in either policy suffices); a Deny naming everyone else would need a
    condition key such as aws:PrincipalArn, which EFS does not evaluate for NFS clients
    (only aws:SecureTransport, aws:SourceIp and two elasticfilesystem: keys), so it would
    lock out the node roles too."""
    roles = sorted(set(role_arns))
    if not roles:
        raise ValueError("no node role to allow")
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "NodeRolesOverTls", "Effect": "Allow", "Principal": {"AWS": roles},
         "Action": list(CLIENT_ACTIONS), "Resource": fs_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "true"}}},
        {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": {"AWS": "*"},
         "Action": "*", "Resource": fs_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}


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

    def apply_policy(self, role_arns, fs_id: str | None = None, timeout: float = 60.0) -> dict:
        """Put `file_system_policy` for these node role ARNs on the cluster's file system
        (idempotent: an identical policy is left as it is). Returns the policy.

        A role made moments ago may not be a valid principal yet (IAM is eventually
        consistent): EFS then answers InvalidPolicyException, retried until `timeout`."""
        fs = self.find() if fs_id is None else {"FileSystemId": fs_id}
        if fs is None:
            raise CloudError(f"cluster {self.cluster} has no EFS file system",
                             "re-run create; it resumes")
        fs_id = fs["FileSystemId"]
        arn = fs.get("FileSystemArn") or self._describe(fs_id)["FileSystemArn"]
        wanted = file_system_policy(arn, role_arns)
        if self.policy(fs_id) == wanted:
            return wanted
        deadline, attempt = time.monotonic() + timeout, 0
        while True:
            try:
                self.efs.put_file_system_policy(FileSystemId=fs_id, Policy=json.dumps(wanted))
                return wanted
            except ClientError as err:
                if error_code(err) != "InvalidPolicyException" or time.monotonic() > deadline:
                    raise explain_client_error("efs:PutFileSystemPolicy", err) from err
            time.sleep(min(5.0, 0.5 * 2 ** attempt))
            attempt += 1

    def policy(self, fs_id: str) -> dict | None:
        """The file system's policy, or None while the default (open to any client that
        reaches a mount target) is in force."""
        try:
            doc = self.efs.describe_file_system_policy(FileSystemId=fs_id)["Policy"]
        except ClientError as err:
            if error_code(err) == "PolicyNotFound":
                return None
            raise explain_client_error("efs:DescribeFileSystemPolicy", err) from err
        return json.loads(doc) if isinstance(doc, str) else doc

    def _describe(self, fs_id: str) -> dict:
        try:
            return self.efs.describe_file_systems(FileSystemId=fs_id)["FileSystems"][0]
        except ClientError as err:
            raise explain_client_error("efs:DescribeFileSystems", err) from err

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
