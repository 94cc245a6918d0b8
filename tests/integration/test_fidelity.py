"""The emulator is faithful where ec2mpi depends on AWS semantics (over HTTP, moto's server)."""
import json
import ssl
import threading
import urllib.request
import uuid


def test_transact_write_items_is_idempotent_per_client_request_token(aws):
    ddb = aws.client("dynamodb")
    table = "f" + uuid.uuid4().hex[:8]
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    bump = [
        {
            "Update": {
                "TableName": table,
                "Key": {"pk": {"S": "counter"}},
                "UpdateExpression": "ADD epoch :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        }
    ]
    token = uuid.uuid4().hex
    for _ in range(3):  # a retried request: applied once, as on DynamoDB
        ddb.transact_write_items(TransactItems=bump, ClientRequestToken=token)
    ddb.transact_write_items(TransactItems=bump)  # a new request (botocore makes a new token)
    item = ddb.get_item(TableName=table, Key={"pk": {"S": "counter"}}, ConsistentRead=True)
    assert item["Item"]["epoch"]["N"] == "2"


def _template_with_profile(aws, **data):
    """A launch template (named like its role and profile) that names an instance profile;
    returns (name, profile arn, a subnet id)."""
    iam, ec2 = aws.client("iam"), aws.client("ec2")
    name = "f" + uuid.uuid4().hex[:8]
    iam.create_role(
        RoleName=name, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}'
    )
    arn = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": "ami-12c6146b", "IamInstanceProfile": {"Arn": arn}, **data})
    return name, arn, ec2.describe_subnets()["Subnets"][0]["SubnetId"]


def test_fleet_instances_carry_the_launch_templates_instance_profile(aws):
    ec2 = aws.client("ec2")
    name, arn, subnet = _template_with_profile(aws)
    for capacity in ("spot", "on-demand"):
        fleet = ec2.create_fleet(
            Type="instant",
            LaunchTemplateConfigs=[
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateName": name,
                        "Version": "$Latest",
                    },
                    "Overrides": [{"InstanceType": "c6i.large", "SubnetId": subnet}],
                }
            ],
            TargetCapacitySpecification={
                "TotalTargetCapacity": 2,
                "DefaultTargetCapacityType": capacity,
            },
        )
        ids = [i for group in fleet["Instances"] for i in group["InstanceIds"]]
        described = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        profiles = [
            i.get("IamInstanceProfile", {}).get("Arn") for r in described for i in r["Instances"]
        ]
        assert profiles == [arn, arn], capacity
        ec2.terminate_instances(InstanceIds=ids)


def test_a_fleets_instances_are_whole_to_every_reader_while_it_launches(aws):
    """No DescribeInstances sees a fleet's instance before its profile and tags: the local
    cloud's node runner describes an instance once, and a bare one booted without a role."""
    ec2 = aws.client("ec2")
    mark = uuid.uuid4().hex
    name, arn, subnet = _template_with_profile(aws, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "fleet", "Value": mark}]}])
    live = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]

    def listed():
        return [i for r in ec2.describe_instances(Filters=live)["Reservations"]
                for i in r["Instances"]]

    before = {i["InstanceId"] for i in listed()}
    seen, bare, done = set(), [], threading.Event()

    def read():
        while not done.is_set():
            for i in listed():
                if i["InstanceId"] in before:
                    continue
                seen.add(i["InstanceId"])
                tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                if i.get("IamInstanceProfile", {}).get("Arn") != arn or tags.get("fleet") != mark:
                    bare.append(i["InstanceId"])

    readers = [threading.Thread(target=read, daemon=True) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        fleet = ec2.create_fleet(
            Type="instant",
            LaunchTemplateConfigs=[{
                "LaunchTemplateSpecification": {"LaunchTemplateName": name, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "c6i.large", "SubnetId": subnet}]}],
            TargetCapacitySpecification={"TotalTargetCapacity": 60,
                                         "DefaultTargetCapacityType": "spot"})
    finally:
        done.set()
        for r in readers:
            r.join(30)
    ids = [i for group in fleet["Instances"] for i in group["InstanceIds"]]
    ec2.terminate_instances(InstanceIds=ids)
    assert len(ids) == 60 and seen <= set(ids)
    assert not bare, f"{len(set(bare))} instance(s) seen without their profile or tags"


def test_the_node_runners_poll_lists_exactly_the_live_instances(aws, controlplane):
    """The local cloud's node runner polls /_ec2mpi/ec2/live-instances (not EC2's XML API):
    it must list what DescribeInstanceStatus would, pending and running, no more."""
    ec2 = aws.client("ec2")
    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=3, MaxCount=3, InstanceType="c6i.large")["Instances"]]
    ec2.terminate_instances(InstanceIds=ids[:1])

    def polled(region="us-east-1"):
        with urllib.request.urlopen(
                f"{controlplane.endpoint}/_ec2mpi/ec2/live-instances?region={region}",
                context=ssl.create_default_context(cafile=controlplane.ca_path)) as answer:
            return json.load(answer)["instances"]

    live = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    described = {s["InstanceId"]: s["InstanceState"]["Name"] for s in ec2.describe_instance_status(
        IncludeAllInstances=True, Filters=live)["InstanceStatuses"]}
    assert polled() == described
    assert ids[0] not in described and set(ids[1:]) <= set(described)
    assert polled("eu-west-1") == {}
    ec2.terminate_instances(InstanceIds=ids[1:])
