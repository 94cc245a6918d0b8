"""The node policies, the bucket policy and the EFS file-system policy, linted with parliament
(duo-labs' IAM linter, with AWS's own action/resource/condition-key data), and the master's
launch rights checked against the launches ec2mpi really makes (the local IAM evaluator).

A parliament finding is either fixed in the policy or, if it is a false positive for a
documented AWS pattern, accepted here by a narrow rule that proves the pattern is what it
claims (see `_explained`), never by ignoring a finding type wholesale."""
from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import botocore.session
import pytest
from botocore import serialize
from parliament import analyze_policy_string, is_arn_strictly_valid

from ec2mpi.aws.iam import PolicyScope, master_policy, worker_policy
from ec2mpi.aws.instances import Instances, LaunchRequest
from ec2mpi.aws.keystore import tls_only_policy
from ec2mpi.aws.storage import file_system_policy
from ec2mpi.aws.templates import encrypted_root, launch_template_data
from ec2mpi.localcloud.policy import ec2_requests, evaluate

REGION, ACCOUNT = "us-east-1", "123456789012"
BUCKET = f"ec2mpi-{ACCOUNT}-{REGION}"
LT = "lt-0123456789abcdef0"
WORKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ec2mpi-demo-{REGION}-worker"
MASTER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ec2mpi-demo-{REGION}-master"
FS_ARN = f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/fs-0123456789abcdef0"


def scope(storage: str, **more) -> PolicyScope:
    return PolicyScope("demo", BUCKET, REGION, ACCOUNT, storage,
                       **{"launch_template_id": LT, "worker_role_arn": WORKER_ROLE, **more})


NODE_POLICIES = [pytest.param(fn, storage, id=f"{fn.__name__}-{storage}")
                 for storage in ("efs", "s3fs") for fn in (worker_policy, master_policy)]


def findings(policy: dict, community: bool = False) -> list:
    # indented, so that a finding's location names the statement's line
    return analyze_policy_string(json.dumps(policy, indent=1),
                                 include_community_auditors=community).findings


def _resource_type(arn_format: str) -> str:
    return arn_format.split(":", 5)[5].split("/", 1)[0]


def _explained(finding, policy: dict) -> bool:
    """RESOURCE_MISMATCH says a statement lacks a resource type its action requires. For
    ec2:RunInstances and ec2:CreateFleet that is the documented AWS pattern ("Launch
    instances (RunInstances)" in the EC2 User Guide's example policies): the resources a
    launch CREATES are allowed under tag conditions, the EXISTING ones it uses are not
    (they carry no request tags), so one launch is allowed by several statements. Accepted
    only for those two actions, and only if every required resource type parliament names
    is allowed for that action by some Allow statement of the same policy."""
    if finding.issue != "RESOURCE_MISMATCH":
        return False
    allows = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    for missing in finding.detail:
        action, fmt = missing["action"], missing["required_format"]
        if action not in ("ec2:RunInstances", "ec2:CreateFleet"):
            return False
        if not any(action in s["Action"] and any(
                is_arn_strictly_valid(_resource_type(fmt), fmt, r) for r in s["Resource"])
                for s in allows):
            return False
    return True


@pytest.mark.parametrize("policy_fn, storage", NODE_POLICIES)
def test_node_policies_have_no_parliament_findings(policy_fn, storage):
    policy = policy_fn(scope(storage))
    left = [f for f in findings(policy) if not _explained(f, policy)]
    assert left == []


def test_the_split_launch_statements_really_cover_every_required_resource():
    """The rule above is not vacuous: drop the statement with the existing resources and
    the same findings are no longer explained."""
    policy = master_policy(scope("efs"))
    assert any(f.issue == "RESOURCE_MISMATCH" for f in findings(policy))
    cut = {**policy, "Statement": [s for s in policy["Statement"]
                                   if s["Sid"] != "UseTheClusterResources"]}
    assert [f for f in findings(cut) if not _explained(f, cut)]


def test_no_condition_key_the_action_does_not_have():
    """ec2:LaunchTemplate does not exist for ec2:CreateFleet (AWS's Service Authorization
    Reference): a condition on it never matched, so CreateFleet was never allowed."""
    policy = master_policy(scope("efs"))
    assert not [f for f in findings(policy) if f.issue == "UNKNOWN_CONDITION_FOR_ACTION"]
    for stmt in policy["Statement"]:
        if "ec2:CreateFleet" in stmt["Action"]:
            assert "ec2:LaunchTemplate" not in json.dumps(stmt.get("Condition", {}))


@pytest.mark.parametrize("storage", ["efs", "s3fs"])
def test_master_policy_passes_only_a_role_with_less_than_its_own_rights(storage):
    """parliament's community auditors flag iam:PassRole (PERMISSIONS_MANAGEMENT_ACTIONS) and
    PassRole + RunInstances (PRIVILEGE_ESCALATION "CreateEC2WithExistingIP"). The master
    must pass a role to the workers it launches; it is no escalation because the only
    role it may pass is the worker's, to EC2 only, and every worker statement is also a
    master statement. Those two findings are accepted on exactly that proof."""
    policy = master_policy(scope(storage))
    passes = [s for s in policy["Statement"] if "iam:PassRole" in s["Action"]]
    assert [(s["Action"], s["Resource"], s["Condition"]) for s in passes] == [
        (["iam:PassRole"], [WORKER_ROLE],
         {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})]
    assert all(s in policy["Statement"] for s in worker_policy(scope(storage))["Statement"])
    left = []
    for f in findings(policy, community=True):
        actions = sorted(f.location.get("actions", []))     # these auditors put them there
        if f.issue == "PERMISSIONS_MANAGEMENT_ACTIONS" and actions == ["iam:passrole"]:
            continue
        if (f.issue == "PRIVILEGE_ESCALATION" and actions == ["ec2:runinstances", "iam:passrole"]
                and f.location.get("type") == "CreateEC2WithExistingIP"):
            continue
        if not _explained(f, policy):
            left.append(f)
    assert left == []
    assert findings(worker_policy(scope(storage)), community=True) == []


def test_bucket_policy_has_no_parliament_findings():
    assert findings(tls_only_policy(BUCKET)) == []
    assert findings(tls_only_policy(BUCKET), community=True) == []


def test_efs_file_system_policy_has_no_parliament_findings():
    policy = file_system_policy(FS_ARN, [MASTER_ROLE, WORKER_ROLE])
    assert findings(policy) == []


def test_efs_file_system_policy_allows_the_node_roles_over_tls_only():
    policy = file_system_policy(FS_ARN, [WORKER_ROLE, MASTER_ROLE, WORKER_ROLE])
    allow, insecure = policy["Statement"]
    assert allow["Effect"] == "Allow" and allow["Principal"] == {"AWS": [MASTER_ROLE, WORKER_ROLE]}
    assert set(allow["Action"]) == {"elasticfilesystem:ClientMount",
                                    "elasticfilesystem:ClientWrite",
                                    "elasticfilesystem:ClientRootAccess"}
    assert allow["Resource"] == FS_ARN
    assert allow["Condition"] == {"Bool": {"aws:SecureTransport": "true"}}
    assert insecure["Effect"] == "Deny" and insecure["Principal"] == {"AWS": "*"}
    assert insecure["Action"] == "*" and insecure["Resource"] == FS_ARN
    assert insecure["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # only condition keys EFS evaluates for NFS clients (a Deny on another key, e.g.
    # aws:PrincipalArn, would find it absent and lock out the node roles as well)
    efs_keys = {"aws:SecureTransport", "aws:SourceIp", "elasticfilesystem:AccessPointArn",
                "elasticfilesystem:AccessedViaMountTarget"}
    assert {k for s in policy["Statement"] for op in s.get("Condition", {}).values()
            for k in op} <= efs_keys
    with pytest.raises(ValueError):
        file_system_policy(FS_ARN, [])


# --- the master's launches, as the local IAM evaluator decides them -----------------------

PRINCIPAL = {"aws:userid": "AROAMASTER:i-0master", "aws:PrincipalAccount": ACCOUNT,
             "aws:SecureTransport": "true"}
IMAGE = {"ImageId": "ami-0123456789abcdef0", "RootDeviceName": "/dev/xvda",
         "RootDeviceType": "ebs", "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
             "SnapshotId": "snap-0123", "VolumeSize": 8, "VolumeType": "gp3", "Iops": 3000,
             "Throughput": 125, "DeleteOnTermination": True, "Encrypted": False}}]}
SUBNETS = ({"SubnetId": "subnet-0aaaaaaaaaaaaaaa1", "AvailabilityZone": "us-east-1a"},
           {"SubnetId": "subnet-0aaaaaaaaaaaaaaa2", "AvailabilityZone": "us-east-1b"})
_EC2 = botocore.session.get_session().get_service_model("ec2")
_SERIALIZER = serialize.create_serializer("ec2")


def query_params(operation: str, kwargs: dict) -> dict:
    """What the EC2 Query API receives for this boto3 call (as parse_qs gives it)."""
    body = _SERIALIZER.serialize_to_request(kwargs, _EC2.operation_model(operation))["body"]
    return {k: [str(v)] for k, v in body.items()}


def template(kinds=None) -> dict:
    data = launch_template_data("demo", IMAGE["ImageId"], "arn:aws:iam::1:instance-profile/p",
                                "sg-0123456789abcdef0", "#!/bin/sh\n", encrypted_root(IMAGE))
    if kinds is not None:   # what an older template tagged
        data["TagSpecifications"] = [t for t in data["TagSpecifications"]
                                     if t["ResourceType"] in kinds]
    return data


def template_params(data: dict) -> dict:
    """The template's contents that count for authorization, as RunInstances-style params."""
    return query_params("RunInstances", {
        "MinCount": 1, "MaxCount": 1, "ImageId": data["ImageId"],
        "SecurityGroupIds": data["SecurityGroupIds"],
        "TagSpecifications": data["TagSpecifications"]})


class _NoAws:
    def client(self, *args, **kwargs):
        return None


def fleet_params(lt: str = LT, spot: bool = True, placement_group: str | None = None) -> dict:
    """The CreateFleet ec2mpi's healing master sends (Instances._fleet_request)."""
    req = LaunchRequest(lt, 2, "heal-1", ("c6i.large", "c5.large"), SUBNETS, spot=spot,
                        placement_group=placement_group)
    return query_params("CreateFleet", Instances(_NoAws(), "demo")._fleet_request(req, 2, "t"))


def master_decides(params: dict, data: dict | None = None, action: str = "CreateFleet",
                   lt: str = LT, policy: dict | None = None):
    lts = {lt: template_params(data or template())}
    reqs = ec2_requests(action, params, REGION, ACCOUNT, lambda rid: {}, None, lts.get)
    return evaluate([policy or master_policy(scope("efs"))], reqs, PRINCIPAL)


@pytest.mark.parametrize("spot", [True, False])
def test_the_healing_masters_fleet_is_allowed(spot):
    decision = master_decides(fleet_params(spot=spot))
    assert decision.allowed, decision.reason


def test_the_launch_needs_the_network_interface_tagged_by_the_template():
    """Before: the worker template tagged only instance and volume, and CreateFleet can tag
    only instance and fleet: the new network interface had no cluster tag, so the
    tag-conditioned RunInstances statement denied it (as AWS would)."""
    decision = master_decides(fleet_params(), template(kinds=("instance", "volume")))
    assert not decision.allowed
    assert decision.request.resource.endswith(":network-interface/*")
    kinds = {t["ResourceType"] for t in template()["TagSpecifications"]}
    assert kinds == {"instance", "volume", "network-interface"}


def test_the_master_launches_into_its_own_placement_group_only():
    assert master_decides(fleet_params(placement_group="ec2mpi-demo")).allowed
    other = master_decides(fleet_params(placement_group="ec2mpi-other"))
    assert not other.allowed and other.request.resource.endswith(":placement-group/ec2mpi-other")
    before = {**master_policy(scope("efs")), "Statement": [
        {**s, "Resource": [r for r in s["Resource"] if ":placement-group/" not in r]}
        for s in master_policy(scope("efs"))["Statement"]]}
    assert not master_decides(fleet_params(placement_group="ec2mpi-demo"), policy=before).allowed


def test_the_master_cannot_launch_from_another_template_or_untagged():
    other = master_decides(fleet_params(lt="lt-0ffffffffffffffff"), lt="lt-0ffffffffffffffff")
    assert not other.allowed
    params = fleet_params()
    untagged = {k: v for k, v in params.items() if not k.startswith("TagSpecification")}
    assert not master_decides(untagged, template(kinds=())).allowed
    foreign = template()
    foreign["TagSpecifications"] = [{"ResourceType": t["ResourceType"],
                                     "Tags": [{"Key": "ec2mpi:cluster", "Value": "other"}]}
                                    for t in foreign["TagSpecifications"]]
    assert not master_decides(untagged, foreign).allowed


def test_run_instances_from_the_worker_template_is_allowed_too():
    params = query_params("RunInstances", {
        "MinCount": 1, "MaxCount": 1, "LaunchTemplate": {"LaunchTemplateId": LT},
        "SubnetId": SUBNETS[0]["SubnetId"], "Placement": {"GroupName": "ec2mpi-demo"},
        "InstanceMarketOptions": {"MarketType": "spot"}})
    decision = master_decides(params, action="RunInstances")
    assert decision.allowed, decision.reason


# --- the launch template's root volume ----------------------------------------------------

def test_the_root_volume_is_encrypted_with_the_images_size_and_type():
    (root,) = template()["BlockDeviceMappings"]
    assert root == {"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeSize": 8, "VolumeType": "gp3", "Iops": 3000, "Throughput": 125,
        "Encrypted": True, "DeleteOnTermination": True}}
    gp2 = {**IMAGE, "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeSize": 30, "VolumeType": "gp2", "Iops": 100, "DeleteOnTermination": False}}]}
    assert encrypted_root(gp2) == [{"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeSize": 30, "VolumeType": "gp2", "Encrypted": True, "DeleteOnTermination": True}}]
    unmapped = {**IMAGE, "RootDeviceName": "/dev/sda1"}
    assert encrypted_root(unmapped) == [{"DeviceName": "/dev/sda1", "Ebs": {
        "Encrypted": True, "DeleteOnTermination": True}}]
    assert encrypted_root({**IMAGE, "RootDeviceType": "instance-store"}) == []
    data = launch_template_data("demo", "ami-1", "arn:p", "sg-1", "x", [])
    assert "BlockDeviceMappings" not in data and base64.b64decode(data["UserData"]) == b"x"


def test_query_params_are_what_the_evaluator_expects():
    params = fleet_params(placement_group="ec2mpi-demo")
    assert params["LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId"] == [LT]
    assert params["LaunchTemplateConfigs.1.Overrides.1.Placement.GroupName"] == ["ec2mpi-demo"]
    assert {params[k][0] for k in params if k.endswith("ResourceType")} == {"instance", "fleet"}
    assert parse_qs("a=1") == {"a": ["1"]}
