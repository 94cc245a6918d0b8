"""The fidelity layer's IAM evaluator and request-context builders (pure; no server).

The worker and master policies below are the shape of the per-cluster node roles: each case
is an attack or a legitimate call, decided as AWS would decide it."""
import pytest

from ec2mpi.localcloud.policy import (
    Request,
    Verdict,
    dynamodb_requests,
    ec2_requests,
    evaluate,
    s3_requests,
)

REGION, ACCOUNT = "us-east-1", "123456789012"
TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/ec2mpi-registry"
SCHEMA = {"ec2mpi-registry": ("pk", "sk")}
ME = "AROAEXAMPLE:i-0abc"
PRINCIPAL = {
    "aws:userid": ME,
    "aws:PrincipalAccount": ACCOUNT,
    "ec2:SourceInstanceARN": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0abc",
    "aws:SecureTransport": "true",
}

WORKER = {"Version": "2012-10-17", "Statement": [
    {"Sid": "ReadClusterItems", "Effect": "Allow", "Action": "dynamodb:GetItem",
     "Resource": TABLE,
     "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["demo", "demo#epoch"]}}},
    {"Sid": "OwnNodeItem", "Effect": "Allow",
     "Action": ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem",
                "dynamodb:DeleteItem"],
     "Resource": TABLE,
     "Condition": {"ForAllValues:StringEquals": {
         "dynamodb:LeadingKeys": ["demo#node#${aws:userid}"]}}},
    {"Sid": "BumpEpoch", "Effect": "Allow", "Action": "dynamodb:UpdateItem", "Resource": TABLE,
     "Condition": {"ForAllValues:StringEquals": {
         "dynamodb:LeadingKeys": ["demo#epoch"], "dynamodb:Attributes": ["pk", "sk", "epoch"]}}},
    {"Sid": "ReadOwnObjects", "Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::b/clusters/demo/*"},
]}

MASTER = {"Version": "2012-10-17", "Statement": [
    {"Sid": "TerminateOwn", "Effect": "Allow", "Action": "ec2:TerminateInstances",
     "Resource": "arn:aws:ec2:*:*:instance/*",
     "Condition": {"StringEquals": {"ec2:ResourceTag/ec2mpi:cluster": "demo"}}},
    {"Sid": "LaunchTagged", "Effect": "Allow", "Action": "ec2:RunInstances",
     "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*",
                  "arn:aws:ec2:*:*:network-interface/*"],
     "Condition": {"StringEquals": {"aws:RequestTag/ec2mpi:cluster": "demo"},
                   "ArnLike": {"ec2:LaunchTemplate": "arn:aws:ec2:*:*:launch-template/lt-demo"}}},
    {"Sid": "LaunchFrom", "Effect": "Allow", "Action": "ec2:RunInstances",
     "Resource": ["arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:security-group/*",
                  "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:launch-template/lt-demo"]},
    {"Sid": "TagOnLaunch", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
     "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateFleet"],
                                    "aws:RequestTag/ec2mpi:cluster": "demo"}}},
    {"Sid": "Describe", "Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
]}


def ddb(operation, body):
    return evaluate([WORKER], dynamodb_requests(operation, body, REGION, ACCOUNT, SCHEMA),
                    PRINCIPAL)


def S(value):
    return {"S": value}


def key(pk, sk="x"):
    return {"pk": S(pk), "sk": S(sk)}


EPOCH_ADD = {"TableName": "ec2mpi-registry", "Key": key("demo#epoch", "epoch"),
             "UpdateExpression": "ADD #e :one", "ConditionExpression": "attribute_exists(pk)",
             "ExpressionAttributeNames": {"#e": "epoch"},
             "ExpressionAttributeValues": {":one": {"N": "1"}}}


# --- worker: DynamoDB ------------------------------------------------------------------------

def test_worker_writes_its_own_node_item():
    item = {**key(f"demo#node#{ME}", "node"), "state": S("ready")}
    assert ddb("PutItem", {"TableName": "ec2mpi-registry", "Item": item}).allowed


def test_worker_cannot_write_another_nodes_item_even_claiming_its_identity():
    item = {**key("demo#node#AROAEXAMPLE:i-0other"), "state": S("ready")}
    reqs = dynamodb_requests("PutItem", {"TableName": "ec2mpi-registry", "Item": item},
                             REGION, ACCOUNT, SCHEMA)
    spoofed = [Request(r.action, r.resource, {**r.context, "aws:userid": "AROAEXAMPLE:i-0other"})
               for r in reqs]
    for attempt in (reqs, spoofed):  # identity keys come from the principal, never the request
        d = evaluate([WORKER], attempt, PRINCIPAL)
        assert d.verdict is Verdict.IMPLICIT_DENY
        assert "dynamodb:PutItem" in d.reason and TABLE in d.reason


def test_worker_cannot_update_the_client_item():
    d = ddb("UpdateItem", {"TableName": "ec2mpi-registry", "Key": key("demo", "cluster"),
                           "UpdateExpression": "SET #s = :s",
                           "ExpressionAttributeNames": {"#s": "status"},
                           "ExpressionAttributeValues": {":s": S("deleting")}})
    assert d.verdict is Verdict.IMPLICIT_DENY


def test_worker_reads_cluster_items_but_not_other_clusters():
    assert ddb("GetItem", {"TableName": "ec2mpi-registry", "Key": key("demo", "cluster")}).allowed
    assert ddb("GetItem", {"TableName": "ec2mpi-registry", "Key": key("demo#epoch", "epoch"),
                           "ProjectionExpression": "epoch"}).allowed
    assert not ddb("GetItem", {"TableName": "ec2mpi-registry", "Key": key("other")}).allowed


def test_epoch_add_is_allowed_but_not_together_with_another_attribute():
    assert ddb("UpdateItem", EPOCH_ADD).allowed
    sneaky = {**EPOCH_ADD, "UpdateExpression": "ADD #e :one SET #s = :s",
              "ExpressionAttributeNames": {"#e": "epoch", "#s": "status"},
              "ExpressionAttributeValues": {":one": {"N": "1"}, ":s": S("deleting")}}
    assert ddb("UpdateItem", sneaky).verdict is Verdict.IMPLICIT_DENY
    legacy = {"TableName": "ec2mpi-registry", "Key": key("demo#epoch", "epoch"),
              "AttributeUpdates": {"status": {"Action": "PUT", "Value": S("x")}}}
    assert not ddb("UpdateItem", legacy).allowed  # the legacy API is no way around it


def test_transaction_needs_every_item_allowed():
    own = {"Put": {"TableName": "ec2mpi-registry",
                   "Item": {**key(f"demo#node#{ME}", "node"), "state": S("ready")}}}
    client = {"Update": {"TableName": "ec2mpi-registry", "Key": key("demo", "cluster"),
                         "UpdateExpression": "SET #s = :s",
                         "ExpressionAttributeNames": {"#s": "status"},
                         "ExpressionAttributeValues": {":s": S("x")}}}
    assert ddb("TransactWriteItems", {"TransactItems": [own, {"Update": EPOCH_ADD}]}).allowed
    d = ddb("TransactWriteItems", {"TransactItems": [own, client]})
    assert d.verdict is Verdict.IMPLICIT_DENY and d.request.context["dynamodb:LeadingKeys"] == [
        "demo"]


# --- worker: S3 ------------------------------------------------------------------------------

def s3(method, key_, query=None, headers=None):
    return evaluate([WORKER], s3_requests(method, "b", key_, query or {}, headers or {}),
                    PRINCIPAL)


def test_worker_reads_only_its_clusters_objects():
    assert s3("GET", "clusters/demo/id_ed25519").allowed
    assert s3("HEAD", "clusters/demo/id_ed25519").allowed
    assert not s3("GET", "clusters/other/id_ed25519").allowed
    assert not s3("GET", "clusters/demo/x", {"versionId": "v1"}).allowed  # GetObjectVersion


def test_worker_cannot_write_its_prefix():
    assert s3("PUT", "clusters/demo/id_ed25519").verdict is Verdict.IMPLICIT_DENY


def test_copy_reads_its_source():
    reqs = s3_requests("PUT", "b", "clusters/demo/stolen", {},
                       {"X-Amz-Copy-Source": "/b/clusters/other/id_ed25519"})
    assert [(r.action, r.resource) for r in reqs] == [
        ("s3:PutObject", "arn:aws:s3:::b/clusters/demo/stolen"),
        ("s3:GetObject", "arn:aws:s3:::b/clusters/other/id_ed25519")]


# --- master: EC2 -----------------------------------------------------------------------------

TAGS = {"i-demo": {"ec2mpi:cluster": "demo"}, "i-other": {"ec2mpi:cluster": "other"}}


def ec2(action, params):
    return evaluate([MASTER], ec2_requests(action, params, REGION, ACCOUNT,
                                           lambda rid: TAGS.get(rid, {})), PRINCIPAL)


def test_master_terminates_only_its_clusters_instances():
    assert ec2("TerminateInstances", {"InstanceId.1": ["i-demo"]}).allowed
    assert not ec2("TerminateInstances", {"InstanceId.1": ["i-other"]}).allowed
    assert not ec2("TerminateInstances", {"InstanceId.1": ["i-demo"],
                                          "InstanceId.2": ["i-other"]}).allowed
    assert ec2("DescribeInstances", {"Filter.1.Name": ["tag:x"]}).allowed


def test_master_cannot_adopt_a_stranger_by_tagging_it():
    adopt = {"ResourceId.1": ["i-other"], "Tag.1.Key": ["ec2mpi:cluster"],
             "Tag.1.Value": ["demo"]}
    reqs = ec2_requests("CreateTags", adopt, REGION, ACCOUNT, lambda rid: TAGS.get(rid, {}))
    assert reqs[0].context["ec2:ResourceTag/ec2mpi:cluster"] == "other"
    assert "ec2:CreateAction" not in reqs[0].context
    assert ec2("CreateTags", adopt).verdict is Verdict.IMPLICIT_DENY
    assert not ec2("TerminateInstances", {"InstanceId.1": ["i-other"]}).allowed


def tag_specs(*types, value="demo"):
    params = {}
    for n, rtype in enumerate(types, 1):
        params[f"TagSpecification.{n}.ResourceType"] = [rtype]
        params[f"TagSpecification.{n}.Tag.1.Key"] = ["ec2mpi:cluster"]
        params[f"TagSpecification.{n}.Tag.1.Value"] = [value]
    return params


def run_params(lt="lt-demo", tagged=("instance", "volume", "network-interface"), value="demo"):
    return {"MinCount": ["1"], "MaxCount": ["1"], "LaunchTemplate.LaunchTemplateId": [lt],
            "SubnetId": ["subnet-1"], "SecurityGroupId.1": ["sg-1"], "ImageId": ["ami-1"],
            **tag_specs(*tagged, value=value)}


def test_run_instances_from_the_clusters_template_with_its_tag():
    reqs = ec2_requests("RunInstances", run_params(), REGION, ACCOUNT, lambda rid: {})
    lt_arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-demo"
    assert all(r.context["ec2:LaunchTemplate"] == lt_arn for r in reqs)
    assert {r.resource for r in reqs if r.action == "ec2:RunInstances"} >= {
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-1", f"arn:aws:ec2:{REGION}::image/ami-1",
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*", lt_arn}
    assert {r.context["ec2:CreateAction"] for r in reqs if r.action == "ec2:CreateTags"} == {
        "RunInstances"}
    assert ec2("RunInstances", run_params()).allowed


def test_run_instances_denied_without_the_tag_or_from_another_template():
    assert not ec2("RunInstances", run_params(tagged=())).allowed
    assert not ec2("RunInstances", run_params(value="other")).allowed
    assert not ec2("RunInstances", run_params(lt="lt-other")).allowed
    # AWS checks each new resource type's own tags: tagging only the instances fails on volumes
    d = ec2("RunInstances", run_params(tagged=("instance",)))
    assert not d.allowed and d.request.resource.endswith(":volume/*")


def test_create_fleet_is_a_launch_per_template_config():
    params = {"Type": ["instant"],
              "LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId": ["lt-demo"],
              "LaunchTemplateConfigs.1.Overrides.1.SubnetId": ["subnet-1"],
              "LaunchTemplateConfigs.1.Overrides.2.SubnetId": ["subnet-2"],
              "LaunchTemplateConfigs.1.Overrides.2.Placement.GroupName": ["pg-demo"],
              **tag_specs("instance", "volume", "network-interface", "fleet")}
    reqs = ec2_requests("CreateFleet", params, REGION, ACCOUNT, lambda rid: {})
    resources = {(r.action, r.resource.split(":", 5)[5]) for r in reqs}
    assert {("ec2:RunInstances", "subnet/subnet-1"), ("ec2:RunInstances", "subnet/subnet-2"),
            ("ec2:RunInstances", "placement-group/pg-demo"), ("ec2:CreateFleet", "fleet/*"),
            ("ec2:CreateTags", "fleet/*")} <= resources
    fleet = {"Sid": "Fleet", "Effect": "Allow", "Action": "ec2:CreateFleet", "Resource": "*"}
    pgs = {"Sid": "Pg", "Effect": "Allow", "Action": "ec2:RunInstances",
           "Resource": "arn:aws:ec2:*:*:placement-group/pg-demo"}
    policy = {**MASTER, "Statement": MASTER["Statement"] + [fleet, pgs]}
    assert evaluate([policy], reqs, PRINCIPAL).allowed
    assert not evaluate([MASTER], reqs, PRINCIPAL).allowed  # no ec2:CreateFleet, no PG


def test_launch_template_contents_count_when_the_caller_supplies_them():
    template = {"ImageId": ["ami-lt"], "SecurityGroupId.1": ["sg-lt"],
                **tag_specs("volume", "network-interface")}
    params = {**run_params(tagged=("instance",))}
    del params["ImageId"]
    reqs = ec2_requests("RunInstances", params, REGION, ACCOUNT, lambda rid: {},
                        template_params={"lt-demo": template}.get)
    resources = {r.resource.split(":", 5)[5] for r in reqs if r.action == "ec2:RunInstances"}
    assert {"image/ami-lt", "security-group/sg-1", "subnet/subnet-1"} <= resources  # request wins
    assert "security-group/sg-lt" not in resources
    assert {r.resource.split(":", 5)[5] for r in reqs if r.action == "ec2:CreateTags"} == {
        "instance/*", "volume/*", "network-interface/*"}
    assert evaluate([MASTER], reqs, PRINCIPAL).allowed
    untagged_eni = {"ImageId": ["ami-lt"], **tag_specs("volume")}
    reqs = ec2_requests("RunInstances", params, REGION, ACCOUNT, lambda rid: {},
                        template_params={"lt-demo": untagged_eni}.get)
    assert evaluate([MASTER], reqs, PRINCIPAL).request.resource.endswith(":network-interface/*")


# --- evaluation semantics --------------------------------------------------------------------

def stmt(effect="Allow", action="s3:GetObject", resource="*", condition=None, **extra):
    s = {"Effect": effect, "Action": action, "Resource": resource, **extra}
    return {**s, "Condition": condition} if condition else s


def decide(statements, action="s3:GetObject", resource="arn:aws:s3:::b/k", context=None,
           principal=PRINCIPAL, version="2012-10-17"):
    policy = {"Version": version, "Statement": statements}
    return evaluate([policy], [Request(action, resource, context or {})], principal)


TLS_ONLY = {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Action": "*", "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def test_explicit_deny_beats_allow():
    allow = stmt()
    assert decide([allow, TLS_ONLY]).allowed
    d = decide([allow, TLS_ONLY], principal={**PRINCIPAL, "aws:SecureTransport": "false"})
    assert d.verdict is Verdict.EXPLICIT_DENY and d.sid == "DenyInsecureTransport"
    assert "explicit deny" in d.reason
    # one denied request of several denies the whole call
    reqs = [Request("s3:GetObject", "arn:aws:s3:::b/k"), Request("s3:PutObject", "arn:aws:s3:::c")]
    deny_c = stmt("Deny", "s3:*", "arn:aws:s3:::c", Sid="NoC")
    assert evaluate([{"Version": "2012-10-17", "Statement": [stmt("Allow", "s3:*"), deny_c]}],
                    reqs, PRINCIPAL).sid == "NoC"


def test_action_and_resource_matching():
    assert decide([stmt(action="S3:get*")]).allowed  # actions: case-insensitive wildcards
    assert decide([stmt(action="s3:GetObjec?")]).allowed
    assert not decide([stmt(resource="arn:aws:s3:::B/*")]).allowed  # resources: case-sensitive
    assert decide([stmt(resource=["arn:aws:s3:::x", "arn:aws:s3:::b/?"])]).allowed
    inst = "arn:aws:ec2:us-east-1:1:instance/i-1"
    assert decide([stmt(action="ec2:*", resource="arn:aws:ec2:*:*:instance/*")],
                  "ec2:StopInstances", inst).allowed
    # a wildcard stays within its ARN segment
    assert not decide([stmt(action="ec2:*", resource="arn:aws:ec2:*:instance/*")],
                      "ec2:StopInstances", inst).allowed
    assert not decide([stmt(resource="arn:aws:s3:::b/*")], resource="*").allowed


def test_not_action_and_not_resource():
    everything_but_put = stmt(action=None, NotAction=["s3:Put*"])
    del everything_but_put["Action"]
    assert decide([everything_but_put]).allowed
    assert not decide([everything_but_put], action="s3:PutObject").allowed
    deny_outside = {"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::b/*"}
    assert decide([stmt(), deny_outside]).allowed
    assert decide([stmt(), deny_outside], resource="arn:aws:s3:::c/k").verdict is \
        Verdict.EXPLICIT_DENY


def test_policy_variables_escapes_and_defaults():
    own = stmt(resource="arn:aws:s3:::b/${aws:userid}/*")
    assert decide([own], resource=f"arn:aws:s3:::b/{ME}/f").allowed
    assert not decide([own], resource="arn:aws:s3:::b/someone/f").allowed
    star = stmt(resource="arn:aws:s3:::b/${*}")  # a literal asterisk, not a wildcard
    assert decide([star], resource="arn:aws:s3:::b/*").allowed
    assert not decide([star], resource="arn:aws:s3:::b/k").allowed
    team = stmt(resource="arn:aws:s3:::b/${aws:PrincipalTag/team, 'shared'}/*")
    assert decide([team], resource="arn:aws:s3:::b/shared/x").allowed
    assert decide([team], resource="arn:aws:s3:::b/hpc/x",
                  principal={**PRINCIPAL, "aws:PrincipalTag/team": "hpc"}).allowed
    missing = stmt(resource="arn:aws:s3:::b/${aws:PrincipalTag/team}/*")
    assert not decide([missing], resource="arn:aws:s3:::b//x").allowed  # no value: no match
    cond = stmt(condition={"StringNotEquals": {"s3:prefix": "${aws:PrincipalTag/team}"}})
    assert decide([cond], context={"s3:prefix": "x"}).allowed  # matches nothing: Not... holds
    # 2008-10-17 policies have no variables: the text is literal
    assert decide([own], resource="arn:aws:s3:::b/${aws:userid}/f", version="2008-10-17").allowed


def test_missing_keys_if_exists_and_null():
    eq = stmt(condition={"StringEquals": {"s3:prefix": "a/"}})
    assert not decide([eq]).allowed  # missing key fails a positive operator
    assert decide([stmt(condition={"StringNotEquals": {"s3:prefix": "a/"}})]).allowed
    if_exists = stmt(condition={"StringEqualsIfExists": {"S3:Prefix": "a/"}})
    assert decide([if_exists]).allowed
    assert decide([if_exists], context={"s3:prefix": "a/"}).allowed  # key names: any case
    assert not decide([if_exists], context={"s3:prefix": "b/"}).allowed
    needs_tag = stmt(condition={"Null": {"aws:RequestTag/team": "false"}})
    assert not decide([needs_tag]).allowed
    assert decide([needs_tag], context={"aws:RequestTag/team": "x"}).allowed
    deny_untagged = stmt("Deny", condition={"Null": {"aws:RequestTag/team": "true"}})
    assert decide([stmt(), deny_untagged]).verdict is Verdict.EXPLICIT_DENY


def test_set_qualifiers():
    only_ab = stmt(condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]}})
    assert decide([only_ab], context={"aws:TagKeys": ["a"]}).allowed
    assert not decide([only_ab], context={"aws:TagKeys": ["a", "c"]}).allowed
    assert decide([only_ab]).allowed  # ForAllValues over an absent key is true
    assert decide([only_ab], context={"aws:TagKeys": []}).allowed
    any_a = stmt(condition={"ForAnyValue:StringLike": {"aws:TagKeys": "a*"}})
    assert decide([any_a], context={"aws:TagKeys": ["x", "ab"]}).allowed
    assert not decide([any_a], context={"aws:TagKeys": ["x"]}).allowed
    assert not decide([any_a]).allowed  # ForAnyValue over an absent key is false
    deny_other = stmt("Deny", condition={"ForAnyValue:StringNotEquals": {"aws:TagKeys": ["a"]}})
    assert decide([stmt(), deny_other], context={"aws:TagKeys": ["a"]}).allowed
    assert not decide([stmt(), deny_other], context={"aws:TagKeys": ["a", "z"]}).allowed


def test_operators():
    def ok(op, expected, actual):
        return decide([stmt(condition={op: {"k": expected}})], context={"k": actual}).allowed
    assert ok("StringEqualsIgnoreCase", "DEMO", "demo")
    assert not ok("StringNotEqualsIgnoreCase", "DEMO", "demo")
    assert ok("StringLike", "clusters/*/id_?", "clusters/demo/id_x")
    assert not ok("StringNotLike", ["a*", "clusters/*"], "clusters/x")
    assert ok("StringEquals", "a*", "a*") and not ok("StringEquals", "a*", "ab")
    assert ok("ArnLike", "arn:aws:iam::*:role/ec2mpi-*", "arn:aws:iam::1:role/ec2mpi-demo")
    assert ok("ArnEquals", "arn:aws:ec2:*:*:instance/i-1", "arn:aws:ec2:r:1:instance/i-1")
    assert not ok("ArnNotLike", "arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:r:1:instance/i-1")
    assert ok("Bool", "true", "TRUE") and ok("Bool", True, "true")
    assert ok("NumericLessThan", "10", "9.5") and not ok("NumericGreaterThanEquals", "10", "9")
    assert ok("NumericNotEquals", "1", "2") and not ok("NumericEquals", "1", "x")
    assert ok("IpAddress", "10.0.0.0/8", "10.1.2.3") and ok("NotIpAddress", "10.0.0.0/8", "1.1.1.1")
    assert ok("ArnEquals", "arn:aws:ec2:${aws:x, 'r'}:*:instance/*", "arn:aws:ec2:r:1:instance/i")
    # keys AND together; operators AND together
    both = stmt(condition={"StringEquals": {"a": "1", "b": "2"}, "Bool": {"c": "true"}})
    assert decide([both], context={"a": "1", "b": "2", "c": "true"}).allowed
    assert not decide([both], context={"a": "1", "b": "2", "c": "false"}).allowed


def test_unknown_operators_fail_closed():
    weird = {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}
    assert not decide([stmt(condition=weird)]).allowed  # an Allow does not apply
    assert decide([stmt(), stmt("Deny", condition=weird)]).verdict is Verdict.EXPLICIT_DENY


def test_no_requests_and_no_statements_deny():
    assert evaluate([WORKER], [], PRINCIPAL).verdict is Verdict.IMPLICIT_DENY
    assert not decide([]).allowed


# --- request builders ------------------------------------------------------------------------

def test_query_leading_key_from_key_condition():
    body = {"TableName": "ec2mpi-registry",
            "KeyConditionExpression": "(#p = :p) AND begins_with(sk, :s)",
            "ExpressionAttributeNames": {"#p": "pk"},
            "ExpressionAttributeValues": {":p": S("demo"), ":s": S("node#")},
            "ProjectionExpression": "#p, sk, a.b[0]", "Select": "SPECIFIC_ATTRIBUTES"}
    [req] = dynamodb_requests("Query", body, REGION, ACCOUNT, SCHEMA)
    assert (req.action, req.resource) == ("dynamodb:Query", TABLE)
    assert req.context == {"dynamodb:LeadingKeys": ["demo"],
                           "dynamodb:Select": "SPECIFIC_ATTRIBUTES",
                           "dynamodb:Attributes": ["a", "pk", "sk"]}
    by_index = {"TableName": "ec2mpi-registry", "IndexName": "by-ip",
                "KeyConditionExpression": ":v = ip", "ExpressionAttributeValues": {":v": S("1")}}
    [req] = dynamodb_requests("Query", by_index, REGION, ACCOUNT, SCHEMA,
                              {("ec2mpi-registry", "by-ip"): "ip"})
    assert req.resource == TABLE + "/index/by-ip" and req.context["dynamodb:LeadingKeys"] == ["1"]
    with pytest.raises(ValueError):  # no partition-key equality: not authorizable
        dynamodb_requests("Query", {**body, "KeyConditionExpression": "sk = :s"}, REGION, ACCOUNT,
                          SCHEMA)
    with pytest.raises(ValueError):  # unknown table schema
        dynamodb_requests("GetItem", {"TableName": "t", "Key": key("a")}, REGION, ACCOUNT, SCHEMA)


def test_update_attributes_include_keys_update_and_condition_names():
    body = {**EPOCH_ADD, "UpdateExpression": "SET #a = if_not_exists(#a, :z) + :one, b.c = :z "
                                             "REMOVE d[1]", "ReturnValues": "UPDATED_NEW",
            "ConditionExpression": "attribute_exists(pk) AND size(#e) < :z",
            "ExpressionAttributeNames": {"#a": "count", "#e": "epoch"}}
    [req] = dynamodb_requests("UpdateItem", body, REGION, ACCOUNT, SCHEMA)
    assert req.context["dynamodb:Attributes"] == ["b", "count", "d", "epoch", "pk", "sk"]
    assert req.context["dynamodb:ReturnValues"] == "UPDATED_NEW"


def test_batches_are_authorized_per_table_with_all_leading_keys():
    body = {"RequestItems": {"ec2mpi-registry": [
        {"PutRequest": {"Item": {**key("demo#node#x"), "v": S("1")}}},
        {"DeleteRequest": {"Key": key("demo")}}]}}
    [req] = dynamodb_requests("BatchWriteItem", body, REGION, ACCOUNT, SCHEMA)
    assert (req.action, req.resource) == ("dynamodb:BatchWriteItem", TABLE)
    assert req.context["dynamodb:LeadingKeys"] == ["demo", "demo#node#x"]
    gets = dynamodb_requests("BatchGetItem", {"RequestItems": {"ec2mpi-registry": {
        "Keys": [key("demo")]}}}, REGION, ACCOUNT, SCHEMA)
    assert [r.action for r in gets] == ["dynamodb:BatchGetItem"]
    tx = dynamodb_requests("TransactGetItems", {"TransactItems": [
        {"Get": {"TableName": "ec2mpi-registry", "Key": key("demo")}}]}, REGION, ACCOUNT, SCHEMA)
    assert [r.action for r in tx] == ["dynamodb:GetItem"]
    assert dynamodb_requests("DescribeTable", {"TableName": "ec2mpi-registry"}, REGION,
                             ACCOUNT)[0].resource == TABLE
    assert dynamodb_requests("ListTables", {}, REGION, ACCOUNT)[0].resource == "*"


@pytest.mark.parametrize("method, key_, query, action", [
    ("GET", "k", {}, "s3:GetObject"), ("HEAD", "k", {}, "s3:GetObject"),
    ("PUT", "k", {}, "s3:PutObject"), ("DELETE", "k", {}, "s3:DeleteObject"),
    ("GET", "k", {"versionId": "1"}, "s3:GetObjectVersion"),
    ("PUT", "k", {"partNumber": "1", "uploadId": "u"}, "s3:PutObject"),
    ("POST", "k", {"uploads": ""}, "s3:PutObject"),
    ("POST", "k", {"uploadId": "u"}, "s3:PutObject"),
    ("DELETE", "k", {"uploadId": "u"}, "s3:AbortMultipartUpload"),
    ("GET", "k", {"tagging": ""}, "s3:GetObjectTagging"),
    ("GET", None, {}, "s3:ListBucket"), ("GET", None, {"list-type": "2"}, "s3:ListBucket"),
    ("HEAD", None, {}, "s3:ListBucket"), ("GET", None, {"policy": ""}, "s3:GetBucketPolicy"),
    ("PUT", None, {"policy": ""}, "s3:PutBucketPolicy"),
    ("DELETE", None, {"tagging": ""}, "s3:PutBucketTagging"),
    ("GET", None, {"encryption": ""}, "s3:GetEncryptionConfiguration"),
    ("GET", None, {"versions": ""}, "s3:ListBucketVersions"),
    ("PUT", None, {}, "s3:CreateBucket"), ("DELETE", None, {}, "s3:DeleteBucket"),
])
def test_s3_actions(method, key_, query, action):
    [req] = s3_requests(method, "b", key_, query, {})
    assert req.action == action
    assert req.resource == "arn:aws:s3:::b" + (f"/{key_}" if key_ else "")


def test_s3_context_keys_and_delete_objects():
    [req] = s3_requests("GET", "b", None, {"list-type": "2", "prefix": "clusters/demo/"},
                        {"x-amz-expected-bucket-owner": ACCOUNT})
    assert req.context == {"s3:prefix": "clusters/demo/", "s3:ResourceAccount": ACCOUNT}
    reqs = s3_requests("POST", "b", None, {"delete": ""}, {}, keys=["x", "y"])
    assert [(r.action, r.resource) for r in reqs] == [("s3:DeleteObject", "arn:aws:s3:::b/x"),
                                                      ("s3:DeleteObject", "arn:aws:s3:::b/y")]
    assert s3_requests("GET", "", None, {}, {})[0].action == "s3:ListAllMyBuckets"
