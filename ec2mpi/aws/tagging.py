"""Find everything tagged with a cluster, across services: destroy's final proof of no leaks."""
from __future__ import annotations

from ..config import TAG_CLUSTER
from ..errors import explain_client_error
from .session import AwsSession, ClientError

# The services whose resources ec2mpi tags (IAM and S3 objects are checked directly).
SERVICES = ["ec2", "elasticfilesystem"]


def tagged_resources(session: AwsSession, cluster: str, services=SERVICES) -> list[str]:
    """ARNs of resources tagged ec2mpi:cluster=NAME (as the tagging API sees them)."""
    client = session.client("resourcegroupstaggingapi")
    arns, kwargs = [], {"ResourceTypeFilters": list(services)} if services else {}
    while True:
        try:
            resp = client.get_resources(
                TagFilters=[{"Key": TAG_CLUSTER, "Values": [cluster]}], **kwargs
            )
        except ClientError as err:
            raise explain_client_error("tag:GetResources", err) from err
        arns += [r["ResourceARN"] for r in resp.get("ResourceTagMappingList", [])]
        token = resp.get("PaginationToken")
        if not token:
            return arns
        kwargs["PaginationToken"] = token
