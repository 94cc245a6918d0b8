"""Capacity failover without a server: the pools to avoid, what is said, the arguments."""
import time

import pytest

from ec2mpi import cli, commands, output
from ec2mpi.aws.instances import CAPACITY_ERRORS, describe_pools
from ec2mpi.aws.registry import avoided
from ec2mpi.aws.templates import cpu_architecture
from ec2mpi.cluster.capacity import needed_nodes
from ec2mpi.cluster.model import ClusterStatus, LaunchReport, NodeStatus
from ec2mpi.commands.local import parse_pool
from ec2mpi.config import ClusterSpec
from ec2mpi.errors import UserError


def test_the_capacity_errors_are_parallelclusters():
    assert CAPACITY_ERRORS == {"InsufficientInstanceCapacity", "InsufficientHostCapacity",
                               "MaxSpotInstanceCountExceeded", "SpotMaxPriceTooLow",
                               "Unsupported"}


def test_avoided_pools_are_unexpired_and_well_formed_only():
    now = time.time()
    state = {"avoid": {
        "c6i.large@us-east-1a@spot": now + 300,
        "c5.large@us-east-1b@on-demand": now + 10,
        "c6a.large@us-east-1c@spot": now - 1,            # over
        "c6a.large@us-east-1c@reserved": now + 300,      # not a lifecycle
        "../etc@us-east-1c@spot": now + 300,             # not a type
        "c6a.large@us-east-1c": now + 300,               # no lifecycle
        "c6a.large@x y@spot": now + 300,                 # not a zone
        "c6a.large@us-east-1d@spot": "later",            # not a time
    }}
    assert sorted(avoided(state, now)) == [("c5.large", "us-east-1b", "on-demand"),
                                           ("c6i.large", "us-east-1a", "spot")]
    assert avoided({}) == {} and avoided({"avoid": "junk"}) == {}


def test_pools_are_said_per_lifecycle():
    pools = [("c6i.large", "us-east-1a", "spot"), ("c5.large", "us-east-1a", "spot"),
             ("c6i.large", "us-east-1b", "spot"), ("c6i.large", "us-east-1a", "on-demand")]
    assert describe_pools(pools) == ("c6i.large, c5.large in us-east-1a, us-east-1b (spot); "
                                     "c6i.large in us-east-1a (on-demand)")
    assert describe_pools([]) == "no pool"


def test_the_launch_report_says_the_split_what_is_missing_and_the_cost():
    rep = LaunchReport(4, 3, spot=1, on_demand=2, keeps_trying=True, per_hour=0.25,
                       failed=[["c6i.large", "us-east-1a", "spot", "InsufficientInstanceCapacity"]])
    assert output.format_launch(rep) == (
        "no capacity in c6i.large in us-east-1a (spot); 2 node(s) launched on-demand instead "
        "of spot (--spot-fallback on-demand); launched 3 of 4 node(s), 1 missing: the master "
        "keeps trying for them (keep-size); the cluster now costs $0.250/h")
    assert output.format_launch(LaunchReport(2, 2)) == ""
    assert "add them later with add-nodes or resize" in output.format_launch(
        LaunchReport(3, 2))


def test_status_says_the_nodes_missing_and_the_pools_avoided():
    now = time.time()
    nodes = [NodeStatus("i-0000000000000000a", "master", "c6i.large", "on-demand", "172.31.0.5",
                        "", "ready", 2),
             NodeStatus("i-0000000000000000b", "worker", "c6i.large", "spot", "172.31.0.6",
                        "", "lost", 2)]
    st = ClusterStatus("demo", "ready", ClusterSpec("demo", nodes=3), 4, nodes, master_state={
        "target": 3, "keep_size": True, "avoid": {"c6i.large@us-east-1a@spot": now + 400}})
    lines = output.format_status(st).splitlines()
    assert lines[1] == "1 of 3 node(s) up; the master keeps launching the rest (keep-size)"
    assert lines[2] == ("capacity: avoiding c6i.large in us-east-1a (spot) for up to 7 more "
                        "minute(s) (no capacity there)")
    st.master_state = {"target": 2}
    assert output.capacity_text(st) == ("\n1 of 2 node(s) up; add the rest with: "
                                        "ec2mpi resize 2 -c demo")


def test_min_nodes_is_checked_against_the_count():
    assert needed_nodes(None, 4) == 4 and needed_nodes(2, 4) == 2
    for bad in (0, 5, "x"):
        with pytest.raises(UserError):
            needed_nodes(bad, 4)


def test_the_architecture_of_an_instance_type():
    assert cpu_architecture({"ProcessorInfo": {"SupportedArchitectures": ["i386", "x86_64"]}}) \
        == "x86_64"
    assert cpu_architecture({"ProcessorInfo": {"SupportedArchitectures": ["arm64"]}}) == "arm64"
    assert cpu_architecture({}) == "x86_64"


def test_local_capacity_pools_from_the_command_line():
    assert parse_pool("c6i.large@us-east-1a", "0", "spot") == {
        "type": "c6i.large", "az": "us-east-1a", "lifecycle": "spot", "count": 0}
    assert parse_pool("c5.large", "unlimited", None) == {
        "type": "c5.large", "az": None, "lifecycle": None, "count": None}
    for where, count in (("c6i.large", None), ("", "3"), ("c6i.large@x y", "1"),
                         ("c6i.large", "-2"), ("nope", "1")):
        with pytest.raises(UserError):
            parse_pool(where, count, None)


def test_capacity_options_parse(capsys):
    args, cmd = commands.parse(["local", "capacity", "c6i.large@us-east-1a", "2", "--on-demand"])
    assert (cmd.name, args.instance_id, args.count, args.lifecycle) == (
        "local", "c6i.large@us-east-1a", "2", "on-demand")
    args, _ = commands.parse(["create", "demo", "--spot-fallback", "on-demand", "--min-nodes", "3"])
    assert args.spot_fallback == "on-demand" and args.min_nodes == 3
    for name in ("add-nodes", "resize"):
        args, _ = commands.parse([name, "4", "--spot-fallback", "none", "--min-nodes", "1"])
        assert args.spot_fallback == "none" and args.min_nodes == 1
    assert cli.main(["create", "demo", "--spot-fallback", "maybe"]) == 2
    assert cli.main(["local", "capacity", "c6i.large", "many"]) == 2
    err = capsys.readouterr().err
    assert "capacity count 'many' is not a number" in err
