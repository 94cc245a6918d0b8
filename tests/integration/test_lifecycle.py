"""The cluster lifecycle against moto's server: create, grow, shrink, wait, resume, destroy.

Every assertion reads the state back from the control plane (EC2, S3, DynamoDB, IAM,
EFS) through plain API calls; the agents are played by a thread writing the registry.
"""
import json
import logging
import threading
import time

import pytest
from agents import master_node, play_agents

from ec2mpi.aws.iam import KINDS, NodeRole
from ec2mpi.aws.instances import Instances
from ec2mpi.aws.keystore import KeyStore
from ec2mpi.aws.network import Network
from ec2mpi.aws.registry import Node, Registry, node_pk
from ec2mpi.aws.storage import Efs
from ec2mpi.aws.templates import PLACEMENT_UNSUPPORTED, Templates
from ec2mpi.cluster import ClusterManager
from ec2mpi.config import TAG_CLUSTER, TAG_LAUNCH, TAG_ROLE, ClusterSpec
from ec2mpi.errors import BootFailed, UserError, WaitTimeout

CIDR = "203.0.113.7/32"


@pytest.fixture(scope="module")
def aws(controlplane):
    """One AwsSession for the module: loading botocore's service models per test is the slow
    part."""
    from ec2mpi.aws.session import AwsSession

    return AwsSession(
        region="us-east-1", endpoint_url=controlplane.endpoint, ca_bundle=controlplane.ca_path
    )


def manager(aws, progress=None):
    mgr = ClusterManager(aws, progress=progress)
    mgr.ops.poll_interval = 0.1
    mgr.ops.drain_wait = 3.0      # most tests run no master watcher: do not wait out 30 s
    return mgr


def live_ids(aws, name):
    return [i.instance_id for i in Instances(aws, name).instances()]


def state(aws, name):
    """What exists for the cluster, service by service."""
    ks, reg = KeyStore(aws), Registry(aws)
    fs = Efs(aws, name).find()
    return {
        "instances": live_ids(aws, name),
        "s3": sorted(k.rsplit("/", 1)[1] for k in ks.list(name)),
        "cluster_item": reg.get_cluster(name) if reg.table_exists() else None,
        "node_items": sorted(n.instance_id for n in reg.nodes(name)) if reg.table_exists() else [],
        "iam": {kind: NodeRole(aws, name, kind).exists() for kind in KINDS},
        "efs": fs["FileSystemId"] if fs else None,
        "mount_targets": len(Efs(aws, name).mount_targets(fs["FileSystemId"])) if fs else 0,
        "sg": Network(aws, name).find_security_group(),
        "lt": [Templates(aws, name).find_launch_template(kind) for kind in KINDS],
    }


def test_lifecycle_create_add_remove_destroy(aws, cluster_name, tmp_path, caplog):
    name = cluster_name
    mgr = manager(aws)
    st = mgr.create(ClusterSpec(name, nodes=3, ssh_cidr=CIDR, storage="efs"), wait=False)

    s = state(aws, name)
    assert len(s["instances"]) == 3
    assert (
        s["cluster_item"]["status"] == "ready" and s["cluster_item"]["master"] == s["instances"][0]
    )
    assert s["s3"] == ["ec2mpi-0.1.0-py3-none-any.whl", "keys.json"]   # one key bundle
    assert s["iam"] == {kind: {"role": True, "instance_profile": True} for kind in KINDS}
    assert s["efs"] and s["mount_targets"] == len(Network(aws, name).subnets())
    assert s["sg"] and all(s["lt"]) and s["node_items"] == []
    assert [n.state for n in st.nodes] == ["pending"] * 3 and st.nodes[0].role == "master"
    master = Instances(aws, name).instances(ids=[s["instances"][0]])[0]
    assert master.tags[TAG_ROLE] == "master" and master.lifecycle == "on-demand"
    workers = Instances(aws, name).instances(ids=s["instances"][1:])
    assert {w.lifecycle for w in workers} == {"spot"} and {w.tags[TAG_ROLE] for w in workers} == {
        "worker"}
    assert Registry(aws).master_state(name)["target"] == 3

    play_agents(aws, name, s["instances"])
    added = mgr.add_nodes(name, 2, wait=False)
    assert len(added) == 2 and set(added).isdisjoint(s["instances"])
    assert len(live_ids(aws, name)) == 5
    play_agents(aws, name, added)
    st = mgr.status(name)
    assert st.ready == 5 and st.nodes[0].instance_id == s["instances"][0]
    assert st.cost.per_hour > 0 and "spot" in st.cost.source
    lines = mgr.hostfile(name).splitlines()
    assert len(lines) == 5 and lines[0] == f"{master.private_ip} slots=2"
    epoch = Registry(aws).epoch(name)

    # remove-nodes drains, lets the master's hostfile drop the node, then terminates: run the
    # master's real watcher meanwhile, as the master node would.
    from ec2mpi.agent.watch import Watcher, WatchSettings
    stop, hostfiles = threading.Event(), tmp_path / "master-etc"
    watcher = Watcher(name, master_node(aws, name), Registry(aws), [hostfiles],
                      settings=WatchSettings(poll=0.1, master_heartbeat_every=600),
                      deregister=False)
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    with caplog.at_level(logging.WARNING, logger="ec2mpi.cluster"):
        removed = mgr.remove(mgr.plan_removal(name, 1))
    stop.set()
    thread.join(10)
    assert (
        "removing anyway" not in caplog.text
    )  # the master dropped it; no need to wait out the bound
    assert len((hostfiles / "hostfile").read_text().splitlines()) == 4
    assert removed == [added[-1]]
    assert sorted(live_ids(aws, name)) == sorted(s["instances"] + added[:1])
    assert state(aws, name)["node_items"] == sorted(s["instances"] + added[:1])
    assert Registry(aws).epoch(name) == epoch + 3   # target lowered, draining, then removed
    assert Registry(aws).master_state(name)["target"] == 4
    with pytest.raises(UserError, match="master"):
        mgr.remove(mgr.plan_removal(name, instance_ids=[s["instances"][0]]))

    report = mgr.destroy(name)
    assert report.leftovers == []
    s = state(aws, name)
    assert (
        s["instances"] == []
        and s["s3"] == []
        and s["cluster_item"] is None
        and s["node_items"] == []
    )
    assert s["iam"] == {kind: {"role": False, "instance_profile": False} for kind in KINDS}
    assert s["efs"] is None and s["sg"] is None and s["lt"] == [None, None]
    assert mgr.leftovers(name) == []


def test_wait_until_agents_report_ready_and_the_master_hostfile_lists_them(
    aws, cluster_name, tmp_path
):
    from ec2mpi.agent.watch import Watcher
    seen = []
    mgr = manager(aws, progress=lambda d, t, m: seen.append((d, t, m)))
    hostfile_written = []

    def agents():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ids = live_ids(aws, cluster_name)
            item = Registry(aws).get_cluster(cluster_name) if Registry(aws).table_exists() else None
            if len(ids) == 2 and item and item.get("master"):
                time.sleep(0.3)
                play_agents(aws, cluster_name, ids)
                time.sleep(1.0)   # all ready, but the master's watcher has not polled yet
                master = next(n for n in Registry(aws).nodes(cluster_name) if n.role == "master")
                Watcher(cluster_name, master, Registry(aws), [tmp_path]).check_membership()
                hostfile_written.append(time.monotonic())
                return
            time.sleep(0.05)

    t = threading.Thread(target=agents, daemon=True)
    t.start()
    st = mgr.create(
        ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=True, timeout=20
    )
    returned = time.monotonic()
    t.join()
    assert st.ready == 2 and st.master is not None
    assert (2, 2, "2/2 nodes ready") in seen
    assert (2, 2, "waiting for the master's hostfile") in seen
    assert (
        hostfile_written and returned >= hostfile_written[0]
    )  # mpirun right after create sees both
    assert len((tmp_path / "hostfile").read_text().splitlines()) == 2
    mgr.destroy(cluster_name)


def test_wait_timeout_names_missing_nodes(aws, cluster_name):
    mgr = manager(aws)
    mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=False)
    ids = live_ids(aws, cluster_name)
    assert Registry(aws).get_cluster(cluster_name)["master"] == ids[0]  # launch order, oldest first
    play_agents(aws, cluster_name, ids[:1])
    with pytest.raises(WaitTimeout) as err:
        mgr.wait_ready(cluster_name, ids, timeout=0.5)
    assert ids[1] in str(err.value) and ids[0] not in str(err.value).split(":", 1)[1]
    assert err.value.exit_status == 1
    # add-nodes waits the same way, naming only its own new nodes
    with pytest.raises(WaitTimeout) as err:
        mgr.add_nodes(cluster_name, 1, wait=True, timeout=0.3)
    new = [i for i in live_ids(aws, cluster_name) if i not in ids]
    assert len(new) == 1 and new[0] in str(err.value)
    # status joins the registry with EC2: unregistered -> pending, instance gone -> lost
    dead = Node("i-0000000000000dead", "worker", "172.31.9.9", "gone", 2)
    dead.key = node_pk(cluster_name, Registry(aws).get_cluster(cluster_name)["roles"]["worker"],
                       dead.instance_id)
    Registry(aws).put_node(cluster_name, dead)
    st = mgr.status(cluster_name)
    states = {n.instance_id: n.state for n in st.nodes}
    assert states == {
        ids[0]: "ready",
        ids[1]: "pending",
        new[0]: "pending",
        "i-0000000000000dead": "lost",
    }
    assert st.nodes[0].instance_id == ids[0] and st.nodes[0].heartbeat_age is not None
    assert isinstance(mgr.console_output(cluster_name, ids[0]), str)
    with pytest.raises(UserError, match="not a node"):
        mgr.console_output(cluster_name, "i-0000000000000dead")
    assert mgr.destroy(cluster_name).leftovers == []


class Crash(KeyboardInterrupt):
    """What a Ctrl-C or a killed laptop looks like to create: it stops between two steps."""


def test_a_node_whose_boot_gave_up_ends_the_wait_at_once_with_its_reason(aws, cluster_name):
    mgr = manager(aws)
    mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=False)
    ids = live_ids(aws, cluster_name)
    play_agents(aws, cluster_name, ids[:1])
    [worker] = play_agents(aws, cluster_name, ids[1:], ready=False)
    why = "boot failed: shared storage (s3fs) at /shared is not usable: Operation not permitted"
    Registry(aws).set_node_state(cluster_name, worker, "failed", why)   # what the agent writes
    started = time.monotonic()
    with pytest.raises(BootFailed) as err:
        mgr.wait_ready(cluster_name, ids, timeout=60)
    assert time.monotonic() - started < 30   # not the whole timeout: waiting cannot help
    assert ids[1] in err.value.message and why in err.value.message
    assert f"remove-nodes --node {ids[1]}" in err.value.hint
    st = mgr.status(cluster_name)
    assert [(n.state, n.reason) for n in st.nodes if n.instance_id == ids[1]] == [("failed", why)]
    assert list(mgr.plan_removal(cluster_name, 1).instance_ids) == [ids[1]]   # failed first
    mgr.destroy(cluster_name)


def test_a_node_that_gives_up_before_it_can_register_ends_the_wait_from_its_console(
        aws, cluster_name, consoles, monkeypatch):
    """A boot can fail before the node may write to the registry (no role credentials yet):
    its console is all that says so, and the wait reads it instead of running out."""
    monkeypatch.setenv("EC2MPI_CONSOLE_CHECK_AFTER", "0")
    mgr = manager(aws)
    mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=False)
    ids = live_ids(aws, cluster_name)
    play_agents(aws, cluster_name, ids[:1])
    console = consoles / ids[1] / "console.log"
    console.parent.mkdir()
    console.write_text("ec2mpi-bootstrap 2026-11-26T17:36:20Z: ec2mpi-agent boot\n")
    with pytest.raises(WaitTimeout):               # still booting: the wait goes on
        mgr.wait_ready(cluster_name, ids, timeout=1)
    why = "ec2mpi-agent: boot failed: Unable to locate credentials"
    with console.open("a") as f:                    # what user-data prints when it gives up
        f.write(f"{why}\nec2mpi-bootstrap: FAILED at step: ec2mpi-agent boot (exit 3); "
                "log: /var/log/ec2mpi/bootstrap.log\n")
    started = time.monotonic()
    with pytest.raises(BootFailed) as err:
        mgr.wait_ready(cluster_name, ids, timeout=60)
    assert time.monotonic() - started < 30
    assert ids[1] in err.value.message and why in err.value.message
    assert f"remove-nodes --node {ids[1]}" in err.value.hint
    assert why in mgr.console_output(cluster_name, ids[1])       # `logs --console` shows it
    assert mgr.console_output(cluster_name, ids[0]) == ""       # no console yet: no output
    mgr.destroy(cluster_name)


@pytest.mark.parametrize("crash_at", ["security group", "launch template", "launched"])
def test_create_resumes_after_crash_without_doubling(aws, cluster_name, crash_at):
    spec = ClusterSpec(cluster_name, nodes=3, ssh_cidr=CIDR, storage="s3fs")

    def crash(done, total, message):
        if message.startswith(crash_at):
            raise Crash(message)

    with pytest.raises(Crash):
        manager(aws, progress=crash).create(spec, wait=False)
    item = Registry(aws).get_cluster(cluster_name)
    assert item["status"] == "creating" and item["launch_token"]
    before = live_ids(aws, cluster_name)
    assert len(before) == (3 if crash_at == "launched" else 0)

    st = manager(aws).create(spec, wait=False)          # resume
    after = live_ids(aws, cluster_name)
    assert len(after) == 3 and set(before) <= set(after)
    token = item["launch_token"]
    assert {i.tags[TAG_LAUNCH] for i in Instances(aws, cluster_name).instances()} == {
        f"{token}-master", f"{token}-worker"}
    assert Registry(aws).get_cluster(cluster_name)["status"] == "ready" and len(st.nodes) == 3
    assert len(Network(aws, cluster_name).security_group_rules(st_sg(aws, cluster_name))) == 2
    again = manager(aws).create(spec, wait=False)          # re-run once more: nothing new
    assert "already existed" in again.notice and live_ids(aws, cluster_name) == after
    assert manager(aws).destroy(cluster_name).leftovers == []


def st_sg(aws, name):
    return Network(aws, name).find_security_group()


def test_resume_with_different_settings_is_refused(aws, cluster_name):
    spec = ClusterSpec(cluster_name, nodes=1, ssh_cidr=CIDR, storage="none")

    def crash(done, total, message):
        if message.startswith("security group"):
            raise Crash(message)

    with pytest.raises(Crash):
        manager(aws, progress=crash).create(spec, wait=False)
    with pytest.raises(UserError, match="different settings"):
        manager(aws).create(spec.replace(nodes=2), wait=False)
    assert manager(aws).destroy(cluster_name).leftovers == []


def test_destroy_sweeps_a_half_created_cluster_without_registry_item(aws, cluster_name):
    def crash(done, total, message):
        if message.startswith("launched"):
            raise Crash(message)

    with pytest.raises(Crash):
        manager(aws, progress=crash).create(
            ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR), wait=False
        )
    Registry(aws).delete_cluster(cluster_name)            # as if the registry write was lost
    assert len(live_ids(aws, cluster_name)) == 2
    report = manager(aws).destroy(cluster_name)
    assert report.leftovers == [] and len(report.removed["instances"]) == 2
    assert state(aws, cluster_name)["efs"] is None


@pytest.fixture(scope="module")
def built(aws):
    """One s3fs cluster to read its hardening back from (module-scoped: creation is the slow
    part)."""
    name = "hard" + str(int(time.time() * 1000))[-8:]
    manager(aws).create(ClusterSpec(name, nodes=2, ssh_cidr=CIDR, storage="s3fs"), wait=False)
    yield aws, name
    manager(aws).destroy(name)


def test_bucket_is_hardened(built, controlplane):
    aws, name = built
    ks = KeyStore(aws)
    h = ks.hardening()
    assert h["public_access_block"] == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                        "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    assert h["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] in (
        "AES256",
        "aws:kms",
    )
    (stmt,) = h["policy"]["Statement"]
    assert stmt["Effect"] == "Deny" and stmt["Action"] == "s3:*" and stmt["Principal"] == "*"
    assert stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert ks.get_keys(name).identity.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY")
    if controlplane.http_endpoint != controlplane.endpoint:     # the TLS-only policy really bites
        from ec2mpi.aws.session import AwsSession, ClientError
        plain = AwsSession(region="us-east-1", endpoint_url=controlplane.http_endpoint)
        with pytest.raises(ClientError) as err:
            plain.client("s3").get_object(Bucket=ks.bucket, Key=f"clusters/{name}/id_ed25519")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_security_group_rules(built):
    aws, name = built
    rules = Network(aws, name).security_group_rules(st_sg(aws, name))
    ssh = [r for r in rules if r.get("FromPort") == 22]
    assert len(ssh) == 1 and [x["CidrIp"] for x in ssh[0]["IpRanges"]] == [CIDR]
    everything = [r for r in rules if r["IpProtocol"] == "-1"]
    assert len(everything) == 1 and everything[0]["IpRanges"] == []
    assert [p["GroupId"] for p in everything[0]["UserIdGroupPairs"]] == [st_sg(aws, name)]
    assert not any(x.get("CidrIp") == "0.0.0.0/0" for r in rules for x in r.get("IpRanges", []))


def test_launch_template_and_user_data(built):
    aws, name = built
    data = Templates(aws, name).launch_template_data()
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpEndpoint"] == "enabled"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] in (1, 2)
    assert data["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert data["IamInstanceProfile"]["Arn"].endswith(
        f"instance-profile/ec2mpi-{name}-us-east-1-worker")
    master = Templates(aws, name).launch_template_data("master")
    assert master["IamInstanceProfile"]["Arn"].endswith(
        f"instance-profile/ec2mpi-{name}-us-east-1-master")
    kinds = {t["ResourceType"]: t["Tags"] for t in data["TagSpecifications"]}
    for kind in ("instance", "volume"):
        assert {"Key": TAG_CLUSTER, "Value": name} in kinds[kind]
    import base64
    raw = base64.b64decode(data["UserData"])
    assert len(raw) < 16 * 1024
    keys = KeyStore(aws).get_keys(name)
    text = raw.decode()
    for secret in (b"PRIVATE KEY", b"aws_secret", b"AWS_SECRET", b"testing"):
        assert secret.decode() not in text
    body = b"".join(keys.identity.private_openssh.splitlines()[1:-1]).decode()
    assert body[:40] not in text and f"clusters/{name}/ec2mpi-" in text or name in text


def test_node_roles_are_least_privilege(built):
    """The worker's role: its own cluster's objects and state, its own node item, the epoch;
    no EC2. The master's adds membership and healing, all scoped to this cluster."""
    aws, name = built
    bucket = KeyStore(aws).bucket
    iam = aws.client("iam")
    for kind in KINDS:
        role = NodeRole(aws, name, kind)
        trust = iam.get_role(RoleName=role.name)["Role"]["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role.name)["Tags"]}
        assert tags == {TAG_CLUSTER: name, "ec2mpi:region": "us-east-1"}
    worker = NodeRole(aws, name, "worker").policy()["Statement"]
    master = NodeRole(aws, name, "master").policy()["Statement"]
    for stmt in worker + master:
        actions = stmt["Action"]
        assert all("*" not in a for a in actions), stmt
        if stmt["Resource"] == ["*"]:
            assert all(a.startswith("ec2:Describe") for a in actions)
        for a in actions:
            if a.startswith("s3:") and a != "s3:ListBucket":
                assert all(r.startswith(f"arn:aws:s3:::{bucket}/clusters/{name}/")
                           for r in stmt["Resource"])
            if a in ("s3:PutObject", "s3:DeleteObject"):
                assert stmt["Resource"] == [f"arn:aws:s3:::{bucket}/clusters/{name}/shared/*"]
            if a.startswith("dynamodb:") and a != "dynamodb:DescribeTable":
                keys = [v for cond in stmt["Condition"].values()
                        for v in cond.get("dynamodb:LeadingKeys", [])]
                assert keys and all(k == name or k.startswith(f"{name}#") for k in keys), stmt
    assert not any(a.startswith("ec2:") for stmt in worker for a in stmt["Action"])
    own = next(s for s in worker if s["Sid"] == "OwnNodeItem")
    assert own["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] == [
        f"{name}#node#${{aws:userid}}"]
    terminate = next(s for s in master if "ec2:TerminateInstances" in s["Action"])
    assert terminate["Condition"] == {"StringEquals": {f"ec2:ResourceTag/{TAG_CLUSTER}": name}}
    tag = next(s for s in master if "ec2:CreateTags" in s["Action"])
    assert tag["Condition"]["StringEquals"]["ec2:CreateAction"] == ["RunInstances", "CreateFleet"]
    launch = next(s for s in master if s["Sid"] == "LaunchTaggedFromTheWorkerTemplate")
    lt = Templates(aws, name).find_launch_template("worker")
    assert launch["Condition"]["ArnLike"]["ec2:LaunchTemplate"].endswith(f"launch-template/{lt}")
    listing = [s for s in worker if "s3:ListBucket" in s["Action"]]
    assert listing[0]["Condition"]["StringLike"]["s3:prefix"][0] == f"clusters/{name}/shared/"


def test_placement_group_warns_and_on_demand_launches(aws, cluster_name, caplog):
    seen = []
    mgr = manager(aws, progress=lambda d, t, m: seen.append(m))
    spec = ClusterSpec(
        cluster_name, nodes=2, ssh_cidr=CIDR, storage="none", placement_group=True, spot=False
    )
    with caplog.at_level(logging.WARNING):
        st = mgr.create(spec, wait=False)
    assert PLACEMENT_UNSUPPORTED in caplog.text and PLACEMENT_UNSUPPORTED in seen
    assert len(st.nodes) == 2 and {n.lifecycle for n in st.nodes} == {"on-demand"}
    cost = mgr.cost(cluster_name)
    assert "static" in cost.source and cost.per_hour > 0
    assert mgr.destroy(cluster_name).leftovers == []


def test_a_bucket_left_unhardened_by_a_crash_is_hardened_on_next_use(aws, cluster_name):
    """CreateBucket succeeded, then the client died before hardening: the next use hardens it."""
    bucket = f"ec2mpi-crash-{cluster_name}"
    aws.client("s3").create_bucket(Bucket=bucket)
    store = KeyStore(aws, bucket=bucket)
    assert store.ensure_bucket() is False          # it existed ...
    got = store.hardening()                        # ... and is hardened now
    assert all(got["public_access_block"].values())
    assert got["policy"]["Statement"][0]["Effect"] == "Deny"
    assert got["policy"]["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    calls = []
    stop = aws.on_call(lambda service, op: calls.append(op))
    KeyStore(aws, bucket=bucket).ensure_bucket()   # already hardened: one read, no writes
    stop()
    assert [c for c in calls if c.startswith("Put")] == []


def test_a_removal_prices_exactly_the_nodes_it_removes_lost_ones_first(aws, cluster_name):
    mgr = manager(aws)
    mgr.create(ClusterSpec(cluster_name, nodes=4, ssh_cidr=CIDR, storage="none"), wait=False)
    ids = live_ids(aws, cluster_name)                  # launch order: master, w1, w2, w3
    mgr.ops.drain_wait = 0.5                             # no master watcher runs here
    play_agents(aws, cluster_name, ids)
    aws.client("ec2").terminate_instances(InstanceIds=[ids[1]])   # the oldest worker is lost
    plan = mgr.plan_removal(cluster_name, count=2)
    assert plan.instance_ids == (ids[1], ids[3])       # lost first, then the newest
    assert [n.state for n in plan.nodes] == ["lost", "ready"]
    lines = mgr.status(cluster_name).cost.lines        # an on-demand master, spot workers
    spot = next(line.unit for line in lines if line.lifecycle == "spot")
    assert spot > 0 and len(lines) == 2
    assert plan.per_hour == pytest.approx(spot)        # one spot worker; the lost one bills nothing
    assert mgr.remove(plan) == list(plan.instance_ids)
    assert sorted(n.instance_id for n in Registry(aws).nodes(cluster_name)) == sorted(
        [ids[0], ids[2]]
    )
    with pytest.raises(UserError, match="master cannot be removed"):
        mgr.plan_removal(cluster_name, instance_ids=[ids[0]])
    assert mgr.destroy(cluster_name).leftovers == []


def test_create_without_ssh_cidr_opens_ssh_to_the_callers_address_only(aws, cluster_name, checkip):
    before = checkip.requests
    st = manager(aws).create(ClusterSpec(cluster_name, nodes=1, storage="none"), wait=False)
    assert checkip.requests == before + 1 and st.spec.ssh_cidr == "198.51.100.23/32"
    rules = Network(aws, cluster_name).security_group_rules(st_sg(aws, cluster_name))
    ssh = [r for r in rules if r.get("FromPort") == 22]
    assert [ip["CidrIp"] for r in ssh for ip in r["IpRanges"]] == ["198.51.100.23/32"]
    assert manager(aws).destroy(cluster_name).leftovers == []


def test_resize_is_idempotent_and_never_launches_twice(aws, cluster_name):
    mgr = manager(aws)
    mgr.ops.drain_wait = 0.5                               # no master watcher runs here
    mgr.create(ClusterSpec(cluster_name, nodes=2, ssh_cidr=CIDR, storage="none"), wait=False)
    play_agents(aws, cluster_name, live_ids(aws, cluster_name))

    def crash(done, total, message):
        if message.startswith("launched"):
            raise Crash(message)
    with pytest.raises(Crash):                             # killed right after its launch call
        manager(aws, progress=crash).resize(cluster_name, 4, wait=False)
    assert len(live_ids(aws, cluster_name)) == 4
    again = mgr.resize(cluster_name, 4, wait=False)        # the re-run launches nothing
    assert len(live_ids(aws, cluster_name)) == 4 and again.added == [] and again.before == 4
    assert mgr.resize(cluster_name, 4, wait=False).added == []
    ids = live_ids(aws, cluster_name)
    play_agents(aws, cluster_name, ids[2:])
    asked = []
    kept = mgr.resize(cluster_name, 3, wait=False, confirm=lambda plan: asked.append(plan) or False)
    assert kept.cancelled and len(live_ids(aws, cluster_name)) == 4 and len(asked) == 1
    down = mgr.resize(cluster_name, 3, wait=False, confirm=lambda plan: True)
    assert down.removed == [ids[3]] and live_ids(aws, cluster_name) == ids[:3]
    up = mgr.resize(cluster_name, 5, wait=False)
    assert len(up.added) == 2 and len(live_ids(aws, cluster_name)) == 5
    assert mgr.destroy(cluster_name).leftovers == []
