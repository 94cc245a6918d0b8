"""EC2 capacity pools in the control plane (fidelity.py item 6), against moto over HTTPS.

Pools are set through the control plane's own endpoint, `/_ec2mpi/capacity`; every test
puts all pools back to unlimited (the default) when it ends.
"""
import json
import ssl
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


class Capacity:
    def __init__(self, cp):
        self.url = cp.endpoint + "/_ec2mpi/capacity"
        self.ctx = ssl.create_default_context(cafile=cp.ca_path)

    def call(self, method, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.load(r)["pools"]

    def set(self, itype, az, count, lifecycle="spot"):
        return self.call("POST", {"type": itype, "az": az, "lifecycle": lifecycle,
                                  "count": count})

    def count(self, itype, az, lifecycle="spot"):
        for pool in self.call("GET"):
            if (pool["type"], pool["az"], pool["lifecycle"]) == (itype, az, lifecycle):
                return pool["count"]
        return None


@pytest.fixture
def capacity(controlplane):
    cap = Capacity(controlplane)
    cap.call("DELETE")
    yield cap
    cap.call("DELETE")


@pytest.fixture
def ec2(controlplane):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=controlplane.endpoint,
                        verify=controlplane.ca_path, config=NO_RETRIES)


@pytest.fixture
def subnets(ec2):
    """The default VPC's subnet in us-east-1a and us-east-1b."""
    found = {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]}
    return found["us-east-1a"], found["us-east-1b"]


@pytest.fixture
def template(ec2):
    name = "cap" + uuid.uuid4().hex[:8]
    return ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": "ami-12c6146b"})["LaunchTemplate"]["LaunchTemplateId"]


def _fleet(ec2, template, overrides, count, lifecycle="spot"):
    return ec2.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[{
            "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
            "Overrides": overrides}],
        TargetCapacitySpecification={"TotalTargetCapacity": count,
                                     "DefaultTargetCapacityType": lifecycle})


def _launched(ec2, fleet):
    ids = [i for group in fleet.get("Instances", []) for i in group["InstanceIds"]]
    if not ids:
        return ids, []
    described = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                 for i in r["Instances"]]
    return ids, sorted((i["InstanceType"], i["Placement"]["AvailabilityZone"]) for i in described)


def test_fleet_launches_across_the_pools_left(ec2, capacity, subnets, template):
    a, b = subnets
    capacity.set("c6i.large", "us-east-1a", 2)
    fleet = _fleet(ec2, template, [{"InstanceType": "c6i.large", "SubnetId": a},
                                   {"InstanceType": "c6i.large", "SubnetId": b},
                                   {"InstanceType": "c5.large", "SubnetId": a}], 4)
    ids, placed = _launched(ec2, fleet)
    assert placed == [("c6i.large", "us-east-1a")] * 2 + [("c6i.large", "us-east-1b")] * 2
    assert fleet["Errors"] == [{
        "LaunchTemplateAndOverrides": {
            "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "1"},
            "Overrides": {"InstanceType": "c6i.large", "SubnetId": a,
                          "AvailabilityZone": "us-east-1a"}},
        "Lifecycle": "spot",
        "ErrorCode": "InsufficientInstanceCapacity",
        "ErrorMessage": "There is no Spot capacity available that matches your request."}]
    assert all(group["Lifecycle"] == "spot" for group in fleet["Instances"])
    assert capacity.count("c6i.large", "us-east-1a") == 0
    ec2.terminate_instances(InstanceIds=ids)  # capacity comes back
    assert capacity.count("c6i.large", "us-east-1a") == 2


def test_fleet_launches_what_is_left_and_lists_each_exhausted_pool(ec2, capacity, subnets,
                                                                   template):
    a, b = subnets
    capacity.set("c6i.large", "us-east-1a", 0)
    capacity.set("c6i.large", "us-east-1b", 1)
    capacity.set("c5.large", "us-east-1a", 0)
    capacity.set("c5.large", "us-east-1a", 5, lifecycle="on-demand")  # not the spot pool
    overrides = [{"InstanceType": "c6i.large", "SubnetId": a},
                 {"InstanceType": "c6i.large", "SubnetId": b},
                 {"InstanceType": "c5.large", "SubnetId": a}]
    fleet = _fleet(ec2, template, overrides, 4)
    ids, placed = _launched(ec2, fleet)
    assert placed == [("c6i.large", "us-east-1b")]
    errors = sorted((e["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"],
                     e["LaunchTemplateAndOverrides"]["Overrides"]["AvailabilityZone"],
                     e["LaunchTemplateAndOverrides"]["Overrides"]["SubnetId"],
                     e["Lifecycle"], e["ErrorCode"]) for e in fleet["Errors"])
    assert errors == [("c5.large", "us-east-1a", a, "spot", "InsufficientInstanceCapacity"),
                      ("c6i.large", "us-east-1a", a, "spot", "InsufficientInstanceCapacity"),
                      ("c6i.large", "us-east-1b", b, "spot", "InsufficientInstanceCapacity")]
    for e in fleet["Errors"]:
        assert e["LaunchTemplateAndOverrides"]["LaunchTemplateSpecification"] == {
            "LaunchTemplateId": template, "Version": "1"}

    # nothing left at all: an empty fleet, errors only (as AWS answers an instant fleet)
    empty = _fleet(ec2, template, overrides, 2)
    assert _launched(ec2, empty)[0] == [] and len(empty["Errors"]) == 3
    ec2.terminate_instances(InstanceIds=ids)
    assert capacity.count("c6i.large", "us-east-1b") == 1


def test_on_demand_fleet_and_a_pool_for_every_zone(ec2, capacity, subnets, template):
    a, b = subnets
    capacity.set("m5.xlarge", None, 3, lifecycle="on-demand")  # one pool, whatever the AZ
    fleet = _fleet(ec2, template, [{"InstanceType": "m5.xlarge", "SubnetId": a},
                                   {"InstanceType": "m5.xlarge", "SubnetId": b}], 5, "on-demand")
    ids, placed = _launched(ec2, fleet)
    assert placed == [("m5.xlarge", "us-east-1a")] * 3
    assert sorted((e["LaunchTemplateAndOverrides"]["Overrides"]["AvailabilityZone"],
                   e["Lifecycle"]) for e in fleet["Errors"]) == [
        ("us-east-1a", "on-demand"), ("us-east-1b", "on-demand")]
    message = next(e["ErrorMessage"] for e in fleet["Errors"]
                   if e["LaunchTemplateAndOverrides"]["Overrides"]["AvailabilityZone"]
                   == "us-east-1a")
    assert message.startswith("We currently do not have sufficient m5.xlarge capacity in the "
                              "Availability Zone you requested (us-east-1a).")
    ec2.terminate_instances(InstanceIds=ids)
    assert capacity.count("m5.xlarge", None, "on-demand") == 3


def test_run_instances_on_an_exhausted_pool(ec2, capacity, subnets):
    a, _ = subnets
    capacity.set("m5.large", "us-east-1a", 1, lifecycle="on-demand")
    first = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="m5.large", SubnetId=a,
                              MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId="ami-12c6146b", InstanceType="m5.large", SubnetId=a,
                          MinCount=1, MaxCount=1)
    err = e.value.response
    assert err["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert err["Error"]["Message"].startswith(
        "We currently do not have sufficient m5.large capacity in the Availability Zone you "
        "requested (us-east-1a). Our system will be working on provisioning additional "
        "capacity. You can currently get m5.large capacity by not specifying an Availability "
        "Zone in your request or choosing us-east-1b")
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 500  # a server error on AWS
    with pytest.raises(ClientError) as e:  # by Placement, no subnet: the same pool
        ec2.run_instances(ImageId="ami-12c6146b", InstanceType="m5.large", MinCount=1,
                          MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"})
    assert e.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    spot = ec2.run_instances(  # the spot pool of the same type and AZ is another pool
        ImageId="ami-12c6146b", InstanceType="m5.large", SubnetId=a, MinCount=1, MaxCount=1,
        InstanceMarketOptions={"MarketType": "spot"})["Instances"][0]["InstanceId"]

    ec2.terminate_instances(InstanceIds=[first])
    ec2.terminate_instances(InstanceIds=[first])  # twice: given back once
    assert capacity.count("m5.large", "us-east-1a", "on-demand") == 1
    again = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="m5.large", SubnetId=a,
                              MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[again, spot])


def test_unlimited_by_default_and_the_endpoint(ec2, capacity, subnets, template):
    a, _ = subnets
    assert capacity.call("GET") == []
    fleet = _fleet(ec2, template, [{"InstanceType": "c6i.large", "SubnetId": a}], 6)
    ids, placed = _launched(ec2, fleet)
    assert len(placed) == 6 and not fleet.get("Errors")
    ec2.terminate_instances(InstanceIds=ids)

    assert capacity.set("c6i.large", "us-east-1a", 3) == [
        {"type": "c6i.large", "az": "us-east-1a", "lifecycle": "spot", "count": 3}]
    assert capacity.set("c6i.large", "us-east-1a", None) == []  # null: unlimited again
    for bad in ({"type": "", "count": 1}, {"type": "c6i.large", "count": -1},
                {"type": "c6i.large", "lifecycle": "reserved", "count": 1},
                {"type": "c6i.large", "count": "3"}):
        with pytest.raises(urllib.error.HTTPError) as e:
            capacity.call("POST", bad)
        assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        capacity.call("PUT", {})
    assert e.value.code == 405


def test_control_endpoint_answers_only_this_host():
    from ec2mpi.localcloud.fidelity import _from_this_host
    assert _from_this_host({"REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "172.31.0.1"})
    assert _from_this_host({"REMOTE_ADDR": "::1", "SERVER_NAME": "127.0.0.1"})
    assert _from_this_host({"REMOTE_ADDR": "172.31.0.1", "SERVER_NAME": "172.31.0.1"})
    assert not _from_this_host({"REMOTE_ADDR": "172.31.0.5", "SERVER_NAME": "172.31.0.1"})
    assert not _from_this_host({"REMOTE_ADDR": "", "SERVER_NAME": "172.31.0.1"})
