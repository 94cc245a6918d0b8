"""Run ON a local node (its venv's python): what may this process do with AWS?

`probe.py user [JOB_BUCKET KEYS_BUCKET CLUSTER]`: which credentials does this (non-root)
process get, and what do they allow?
`probe.py root CLUSTER OTHER_CLUSTER`: with the instance role's credentials (the
metadata service, as the agent gets them), try what a compromised node would, and print
one JSON object {attempt: "ok" | error code}.
"""
import json
import sys
import urllib.request


def user(job_bucket: str = "", keys_bucket: str = "", cluster: str = "") -> dict:
    """As the cluster user: the metadata service, and whatever credentials the SDK finds
    (with a job role: only the job role's), tried on the job's input and the cluster keys."""
    import os
    with open("/etc/ec2mpi/agent.env") as env:
        url = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or next((
            line.split("=", 1)[1].strip() for line in env
            if line.startswith("AWS_EC2_METADATA_SERVICE_ENDPOINT=")), "")
    if not url:   # only the local cloud's emulator: never the real metadata address
        sys.exit("node_probe: AWS_EC2_METADATA_SERVICE_ENDPOINT is not set")
    out = {"static_credentials": any(k in os.environ for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))}
    req = urllib.request.Request(url.rstrip("/") + "/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    try:
        urllib.request.urlopen(req, timeout=3).read()
        out["imds"] = "ok"
    except OSError as err:
        out["imds"] = type(err).__name__
    import boto3
    from botocore.exceptions import ClientError
    creds = boto3.Session().get_credentials()
    out["credentials"] = creds.method if creds else "none"
    if creds and job_bucket:
        s3 = boto3.client("s3")
        for name, bucket, key in (("job_input", job_bucket, "input.txt"),
                                  ("cluster_keys", keys_bucket, f"clusters/{cluster}/keys.json")):
            try:
                s3.get_object(Bucket=bucket, Key=key)
                out[name] = "ok"
            except ClientError as err:
                out[name] = err.response["Error"]["Code"]
    return out


def root(cluster: str, other: str) -> dict:
    import boto3
    from botocore.exceptions import ClientError

    from ec2mpi.agent.imds import Imds
    from ec2mpi.aws.registry import node_pk
    from ec2mpi.config import REGISTRY_TABLE
    with open("/etc/ec2mpi/agent.json") as fh:
        cfg = json.load(fh)
    me = Imds().meta("instance-id")
    ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")
    owner = {"ExpectedBucketOwner": cfg["account"]}
    item = ddb.get_item(TableName=REGISTRY_TABLE,
                        Key={"pk": {"S": cluster}, "sk": {"S": "cluster"}})["Item"]
    roles = {k: v["S"] for k, v in item["roles"]["M"].items()}
    mine = node_pk(cluster, roles[cfg["role"]], me)
    nodes = ddb.query(TableName=REGISTRY_TABLE, IndexName="members",
                      KeyConditionExpression="member_of = :c",
                      ExpressionAttributeValues={":c": {"S": cluster}}) \
        if cfg["role"] == "master" else {"Items": []}
    others = [i["pk"]["S"] for i in nodes["Items"] if i["pk"]["S"] != mine] or [
        node_pk(cluster, roles["master"], "i-0123456789abcdef0")]

    def key(pk, sk):
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def touch(pk, sk, attr="heartbeat"):
        return lambda: ddb.update_item(
            TableName=REGISTRY_TABLE, Key=key(pk, sk), UpdateExpression="SET #a = :v",
            ConditionExpression="attribute_exists(pk)", ExpressionAttributeNames={"#a": attr},
            ExpressionAttributeValues={":v": {"N": "1"}})
    attempts = {
        "own_node_item": touch(mine, "node"),
        "client_state": touch(cluster, "cluster", "status"),
        "another_node_item": touch(others[0], "node"),
        "master_state": touch(f"{cluster}#master", "state", "target"),
        "other_cluster_item": touch(other, "cluster", "status"),
        "own_keys": lambda: s3.get_object(Bucket=cfg["bucket"], Key=f"clusters/{cluster}/"
                                          "keys.json", **owner),
        "other_cluster_keys": lambda: s3.get_object(Bucket=cfg["bucket"], Key=f"clusters/"
                                                    f"{other}/keys.json", **owner),
        "replace_wheel": lambda: s3.put_object(Bucket=cfg["bucket"], Key=cfg["wheel_key"],
                                               Body=b"evil", **owner),
        "list_members": lambda: ddb.query(
            TableName=REGISTRY_TABLE, IndexName="members",
            KeyConditionExpression="member_of = :c",
            ExpressionAttributeValues={":c": {"S": cluster}}),
        "list_other_members": lambda: ddb.query(
            TableName=REGISTRY_TABLE, IndexName="members",
            KeyConditionExpression="member_of = :c",
            ExpressionAttributeValues={":c": {"S": other}}),
        "describe_instances": lambda: boto3.client("ec2").describe_instances(),
    }
    out = {}
    for name, call in attempts.items():
        try:
            call()
            out[name] = "ok"
        except ClientError as err:
            out[name] = err.response["Error"]["Code"]
    return out


if __name__ == "__main__":
    result = user(*sys.argv[2:5]) if sys.argv[1] == "user" else root(*sys.argv[2:4])
    print(json.dumps(result))
