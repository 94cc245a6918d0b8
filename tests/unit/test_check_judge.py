"""`ec2mpi check` without nodes: the pairs each node is measured with, the rounds, the rule
that names a slow node (never its healthy neighbours), and the report the client builds
from the program's result line."""
import json
import random

import pytest

from ec2mpi import cli
from ec2mpi.agent import check as prog
from ec2mpi.cluster import ClusterStatus, NodeStatus
from ec2mpi.commands import check as cmd
from ec2mpi.config import ClusterSpec


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EC2MPI_CONFIG_DIR", str(tmp_path / "config"))


def peers(n):
    out = {i: set() for i in range(n)}
    for a, b in prog.ring_pairs(n):
        out[a].add(b)
        out[b].add(a)
    return out


def test_every_node_has_more_than_one_peer_from_three_nodes_on():
    assert prog.ring_pairs(1) == []
    assert prog.ring_pairs(2) == [(0, 1)]
    assert all(len(p) == 2 for p in peers(3).values())
    assert all(len(p) == 3 for p in peers(4).values())          # everyone, with 4 nodes
    for n in (5, 6, 17, 64):
        pairs = prog.ring_pairs(n)
        assert len(pairs) == len(set(pairs)) == 2 * n
        assert all(p == {(i - 2) % n, (i - 1) % n, (i + 1) % n, (i + 2) % n}
                   for i, p in peers(n).items())


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16, 65])
@pytest.mark.parametrize("parallel", [0, 1, 3])
def test_rounds_cover_every_pair_once_and_no_rank_twice_in_a_round(n, parallel):
    pairs = prog.ring_pairs(n)
    plan = prog.rounds(pairs, parallel)
    assert sorted(p for r in plan for p in r) == sorted(pairs)
    for r in plan:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks))
        assert not parallel or len(r) <= parallel
    if parallel == 0 and n > 4:
        assert len(plan) <= 8        # a constant number of rounds, whatever the size


def measured(n, slow=(), noise=0.3, seed=1):
    """Pair figures as a ring of n nodes would give them: a pair with a slow node is slow."""
    rnd = random.Random(seed)
    out = []
    for a, b in prog.ring_pairs(n):
        lat = 40 * (1 + rnd.uniform(-noise, noise))
        bw = 1000 * (1 + rnd.uniform(-noise, noise))
        if a in slow or b in slow:
            lat, bw = lat * 10, bw / 20
        out.append({"a": a, "b": b, "latency_us": lat, "bandwidth_mib_s": bw})
    return out


def slow_nodes(n, pairs):
    verdict = prog.judge(prog.node_figures(n, pairs))
    return [i for i, v in enumerate(verdict["nodes"]) if v["slow"]]


@pytest.mark.parametrize("n", [3, 4, 5, 8, 32])
def test_the_rule_names_the_slow_node_and_not_its_neighbours(n):
    for victim in range(n):
        assert slow_nodes(n, measured(n, slow={victim}, seed=victim)) == [victim]
    assert slow_nodes(n, measured(n)) == []


def test_two_slow_neighbours_are_both_named_and_only_they():
    assert slow_nodes(8, measured(8, slow={3, 4})) == [3, 4]
    assert slow_nodes(8, measured(8, slow={2, 4})) == [2, 4]   # the node between them is fine


def test_a_node_slow_in_bandwidth_only_is_named_with_its_reason():
    pairs = measured(5, noise=0)
    for p in pairs:
        if 2 in (p["a"], p["b"]):
            p["bandwidth_mib_s"] = 300.0
    verdict = prog.judge(prog.node_figures(5, pairs))
    assert [v["slow"] for v in verdict["nodes"]] == [False, False, True, False, False]
    assert "bandwidth 300.0 MiB/s < 0.5x median 1000.0 MiB/s" in verdict["nodes"][2]["reasons"]


def test_with_two_nodes_nothing_can_be_pinned_on_either():
    pairs = [{"a": 0, "b": 1, "latency_us": 9000.0, "bandwidth_mib_s": 0.1}]
    assert slow_nodes(2, pairs) == []


# -- the client's report ---------------------------------------------------------------------
def status(states=("ready", "ready", "ready", "ready")):
    spec = ClusterSpec("demo", nodes=len(states), instance_types="c6i.large", storage="efs")
    nodes = [NodeStatus(instance_id=f"i-{i:017x}", role="master" if i == 0 else "worker",
                        instance_type="c6i.large", lifecycle="spot",
                        private_ip=f"172.31.0.{10 + i}", public_ip="", state=state, slots=2,
                        reason="spot interruption" if state == "lost" else "")
             for i, state in enumerate(states)]
    return ClusterStatus(name="demo", status="ready", spec=spec, epoch=3, nodes=nodes)


def program_output(ids, slow=(), ok=True):
    nodes = [{"host": f"ip-{i}", "instance_id": iid, "ip": "", "mpirun": "mpirun (Open MPI) 5.0.11",
              "mpi4py": "4.1.2", "mpi_library": "Open MPI v5.0.11"} for i, iid in enumerate(ids)]
    result = {"allreduce": {"ranks": 2 * len(ids), "ok": ok, "us": 80.0}, "nodes": nodes,
              "pairs": measured(len(ids), slow=slow), "rule": prog.RULE, "parallel": 1,
              "seconds": 1.5}
    noise = "[ip-172-31-0-10:01234] plm:ssh: Warning: setpgid(5,6) failed in parent with " \
            "errno=Permission denied(13)"
    return f"RANK ...\n{noise}\n{prog.MARK}{json.dumps(result)}\n"


def test_the_report_names_exactly_the_slow_node_and_fails():
    st = status()
    ids = [n.instance_id for n in st.nodes]
    res = cmd.report("demo", st, "7", program_output(ids, slow={2}), None, {})
    assert res.status == 1
    nodes = res.data["nodes"]
    assert [n["instance_id"] for n in nodes if n["slow"]] == [ids[2]]
    for n in nodes:                                  # the documented --json shape
        assert {"instance_id", "latency_us", "bandwidth_mib_s", "slow"} <= set(n)
        assert isinstance(n["slow"], bool) and n["latency_us"] > 0 and n["bandwidth_mib_s"] > 0
    assert sorted(nodes[2]["peers"]) == sorted(ids[:2] + ids[3:])
    assert "SLOW: latency" in res.text and "node-2" in res.text and "1 slow, 0 unreachable" in \
        res.text
    assert {p["a"] for p in res.data["pairs"]} <= set(ids)   # pairs by instance id
    json.dumps(res.data)


def test_a_healthy_cluster_passes_and_shows_versions():
    st = status()
    res = cmd.report("demo", st, "7", program_output([n.instance_id for n in st.nodes]), None, {})
    assert res.status == 0 and res.data["ok"] and not any(n["slow"] for n in res.data["nodes"])
    assert "5.0.11" in res.text and "4.1.2" in res.text and "no slow or unreachable node" in \
        res.text
    assert "allreduce over 8 ranks: OK" in res.text


def test_a_ready_node_missing_from_the_result_is_unreachable_and_others_not_checked():
    st = status(("ready", "ready", "ready", "lost"))
    ids = [n.instance_id for n in st.nodes]
    res = cmd.report("demo", st, "7", program_output(ids[:2]), None, {})
    by_id = {n["instance_id"]: n for n in res.data["nodes"]}
    assert res.status == 1 and by_id[ids[2]]["unreachable"] and not by_id[ids[2]]["slow"]
    assert not by_id[ids[3]]["unreachable"] and "not checked: lost" in by_id[ids[3]]["reasons"][0]
    assert "UNREACHABLE" in res.text


def test_without_a_result_the_probe_names_the_unreachable_node():
    st = status()
    ips = [n.private_ip for n in st.nodes]
    out = "ERROR: prted on 172.31.0.12 failed to start\n"
    res = cmd.report("demo", st, "7", out, None, {ip: ip != ips[2] for ip in ips})
    assert res.status == 1 and res.data["error"].endswith("failed to start")
    assert [n["unreachable"] for n in res.data["nodes"]] == [True] * 4
    assert "cannot log in" in res.data["nodes"][2]["reasons"][0]
    assert "gave no result" in res.text and "prted on 172.31.0.12" in res.text
    res = cmd.report("demo", st, "7", "", 30.0, {ip: True for ip in ips})
    assert "did not finish within 30 s" in res.text


def test_a_wrong_allreduce_fails_the_check():
    st = status()
    res = cmd.report("demo", st, "7", program_output([n.instance_id for n in st.nodes], ok=False),
                     None, {})
    assert res.status == 1 and "WRONG" in res.text


def test_drain_slow_never_drains_the_master_and_keeps_the_status():
    class Ctx:
        def confirm(self, question):
            raise AssertionError("nothing to confirm")
    checked = cmd.report("demo", status(), "7",
                         program_output([n.instance_id for n in status().nodes], slow={0}),
                         None, {})
    assert [n["label"] for n in checked.data["nodes"] if n["slow"]] == ["master"]
    res = cmd.drain_slow(Ctx(), "demo", checked)
    assert res.status == 1 and res.data["drained"] == [] and "master is slow" in res.text


def test_cli_check_and_create_check(capsys):
    assert cli.main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--drain-slow" in out and "2x the median" in out
    assert cli.main(["--local", "create", "x", "--check", "--no-wait"]) == 2
    assert "--check needs the nodes ready" in capsys.readouterr().err
